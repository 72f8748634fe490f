//! The XDP program that steers Ouroboros frames into AF_XDP sockets, compiled from C by build.rs.
//!
//! Not implemented yet: see the open issues.
