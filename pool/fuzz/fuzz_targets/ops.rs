#![no_main]
//! Random pool call sequences with arbitrary indices and lengths; see `o7s_pool::fuzzing`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let name = format!("o7s-fuzz-pool-{}", std::process::id());
    o7s_pool::fuzzing::run_ops(&name, data);
});
