//! The o7s tools: the `irm` operator CLI (see [`irm`]), `oping` (see [`oping`]) and `operf`
//! (see [`operf`]).
#![forbid(unsafe_code)]

pub mod irm;
pub mod operf;
pub mod oping;
