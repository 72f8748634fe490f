//! Fuzz target: scripts of frames, management messages, upper-layer calls and time steps
//! against a set-up eth-dix layer, with the invariant checks of `o7s_xdp_ipcp::fuzzing::layer`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    o7s_xdp_ipcp::fuzzing::layer(data);
});
