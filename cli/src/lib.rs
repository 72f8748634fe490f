//! The o7s tools: `oping` today (see [`oping`]); the `irm` operator CLI and `operf` are not
//! implemented yet.
#![forbid(unsafe_code)]

pub mod oping;
