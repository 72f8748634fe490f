//! The IPCP runtime and the local, unicast, broadcast and udp IPC processes.
//!
//! Not implemented yet: see the open issues.
