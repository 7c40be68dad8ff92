#![no_main]
// Decoder target `net_key_rotation`: the properties are in kith_tests::decoders.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kith_tests::decoders::run("net_key_rotation", data));
