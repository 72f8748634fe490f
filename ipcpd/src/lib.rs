//! The IPCP runtime and the IPC processes built on it.
//!
//! * [`runtime`]: what every IPCP daemon shares — the control connection to the IRMd (connect,
//!   [`IpcpHello`](o7s_proto::irm::IpcpHello), the dispatch of the IRMd's requests to a
//!   [`runtime::Handler`], requests of its own such as `FlowReqArrived`), and the N+1 flow
//!   plumbing: relaying SDUs between pool rings by block index, without a copy
//!   ([`runtime::relay`]), or with one copy between two pools (an unprivileged application's
//!   per-user pool and another, [`runtime::relay_copy`]).
//! * [`local`]: the local IPCP (`ipcpd-local`): a layer confined to this host, joining an
//!   allocating application's flow to the accepting application's flow inside the IPCP.
//!
//! * [`pools`]: the pools an IPCP maps for its flows, opened once and counted per use.
//!
//! Not yet: the unicast, broadcast and UDP IPCPs.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod local;
pub mod pools;
pub mod runtime;
