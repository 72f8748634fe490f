//! Fuzz target: `vagrant ssh-config` parse/render oracle (`o7s_vm_tests::vagrant::fuzzing::ssh_config`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| o7s_vm_tests::vagrant::fuzzing::ssh_config(data));
