//! Fuzz target: `irmd.conf` parsing and checking oracle (`o7s_irmd::config::fuzz_oracle`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| o7s_irmd::config::fuzz_oracle(data));
