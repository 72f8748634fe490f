//! The o7s application library: flow allocation, read/write, fccntl and event queues.
//!
//! Not implemented yet: see the open issues.
