//! Fuzz target: OAP header parse/re-emit oracle (`o7s_proto::fuzzing::oap`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| o7s_proto::fuzzing::oap(data));
