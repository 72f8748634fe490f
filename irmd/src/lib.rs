//! The IPC resource manager daemon (IRMd): one per host (per run directory), the registry of
//! names, programs, processes and IPCPs, owner of the shared packet pool, and the server of the
//! IRM control protocol ([`o7s_proto::irm`]) on `<rundir>/irmd.sock`.
//!
//! * [`server`]: start-up ([`server::Irmd::start`]: lockfile, a dead predecessor's leftovers,
//!   shared pool, configuration, socket), connections with many requests in flight, the
//!   dispatcher, pidfd process watching, shutdown.
//! * [`registry`]: the registry itself, pure state.
//! * [`lock`]: the `flock`ed lockfile that makes one IRMd per run directory.
//! * [`config`]: reads and checks `irmd.conf` (`irmd --config`); `server`'s `boot` module
//!   applies its IPCP tables, `autostart` starts the programs bound with arguments.
//! * [`flows`]: the flow table and the accepts and allocations waiting for each other.
//! * [`oap`]: the OAP flow allocation handshake (request, freshness and replay checks,
//!   response), without cryptography yet.
//! * [`pools`]: the shared pool and the per-user pools of unprivileged uids, and which pool a
//!   flow's rings go in.
//!
//! Clients talk to it with `o7s::irm::Client` (the application library's blocking client).
//!
//! IPCPs are processes the IRMd spawns (`ipcpd-local` today) and supervises (pidfd); names
//! registered in them are hashed (SHA3) and forwarded. A flow to a name registered in an
//! operational IPCP goes through that IPCP; any other name gets a *direct local flow* (both ends
//! on this host, two rings in their common pool, no IPCP). See `server`'s `ipcps` module. Not
//! implemented yet: other IPCP types, enrollment, OAP's cryptography (authentication, key
//! exchange, encryption).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod flows;
pub mod lock;
pub mod oap;
pub mod pools;
pub mod registry;
pub mod server;

/// Run directory conventions, shared with the clients (the application library owns them, so
/// the daemon and its clients cannot disagree on where to meet).
pub use o7s::rundir::{
    DEFAULT_RUNDIR, DEFAULT_SHM_PREFIX, RUNDIR_ENV, default_rundir, lock_path, shm_prefix_for,
    socket_path,
};
