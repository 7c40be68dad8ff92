#![no_main]
// Decoder target `venti_sealed_block`: the properties are in kith_tests::decoders.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kith_tests::decoders::run("venti_sealed_block", data));
