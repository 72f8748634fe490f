//! The eth-dix IPC process over AF_XDP, with an AF_PACKET fallback.
//!
//! Not implemented yet: see the open issues.
