//! The IPC resource manager daemon.
//!
//! Not implemented yet: see the open issues.
