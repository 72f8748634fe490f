//! Fuzz target: IRM framing and envelope oracle (`o7s_proto::fuzzing::irm`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| o7s_proto::fuzzing::irm(data));
