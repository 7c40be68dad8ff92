#![no_main]
// Decoder target `venti_record_header`: the properties are in kith_tests::decoders.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kith_tests::decoders::run("venti_record_header", data));
