//! The IPC resource manager daemon (IRMd): one per host (per run directory), the registry of
//! names, programs, processes and IPCPs, owner of the shared packet pool, and the server of the
//! IRM control protocol ([`o7s_proto::irm`]) on `<rundir>/irmd.sock`.
//!
//! * [`server`]: start-up ([`server::Irmd::start`]: lockfile, a dead predecessor's leftovers,
//!   shared pool, configuration, socket), connections with many requests in flight, the
//!   dispatcher, pidfd process watching, shutdown.
//! * [`registry`]: the registry itself, pure state.
//! * [`lock`]: the `flock`ed lockfile that makes one IRMd per run directory.
//! * [`config`]: reads `irmd.conf`.
//! * [`flows`]: the flow table and the accepts and allocations waiting for each other.
//!
//! Clients talk to it with `o7s::irm::Client` (the application library's blocking client).
//!
//! Flows today are *direct local flows*: both ends on this host, two rings in the shared pool,
//! no IPCP. Not implemented yet (issue 4): IPCP spawning and bootstrap, name registration in
//! IPCPs, flows through IPCPs, auto-started programs, per-user pools, OAP.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod flows;
pub mod lock;
pub mod registry;
pub mod server;

/// Run directory conventions, shared with the clients (the application library owns them, so
/// the daemon and its clients cannot disagree on where to meet).
pub use o7s::rundir::{
    DEFAULT_RUNDIR, DEFAULT_SHM_PREFIX, RUNDIR_ENV, default_rundir, lock_path, shm_prefix_for,
    socket_path,
};
