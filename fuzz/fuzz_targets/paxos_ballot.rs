#![no_main]
// Decoder target `paxos_ballot`: the properties are in kith_tests::decoders.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kith_tests::decoders::run("paxos_ballot", data));
