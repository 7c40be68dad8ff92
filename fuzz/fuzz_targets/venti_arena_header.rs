#![no_main]
// Decoder target `venti_arena_header`: the properties are in kith_tests::decoders.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kith_tests::decoders::run("venti_arena_header", data));
