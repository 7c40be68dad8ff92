#![no_main]
// Decoder target `fossil_volume_key`: the properties are in kith_tests::decoders.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kith_tests::decoders::run("fossil_volume_key", data));
