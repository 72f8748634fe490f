//! Fuzz target: `/proc/<pid>/status` credentials parsing oracle
//! (`o7s_irmd::pools::fuzz_oracle`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| o7s_irmd::pools::fuzz_oracle(data));
