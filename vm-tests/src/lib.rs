//! Multi-host scenarios over network namespaces, QEMU guests and Vagrant VMs.
//!
//! Not implemented yet: see the open issues.
