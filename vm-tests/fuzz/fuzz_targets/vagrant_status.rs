//! Fuzz target: `vagrant status --machine-readable` parse oracle
//! (`o7s_vm_tests::vagrant::fuzzing::status`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| o7s_vm_tests::vagrant::fuzzing::status(data));
