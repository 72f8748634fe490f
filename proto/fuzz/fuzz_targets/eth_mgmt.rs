//! Fuzz target: eth-dix management message parse/re-emit oracle (`o7s_proto::fuzzing::eth_mgmt`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| o7s_proto::fuzzing::eth_mgmt(data));
