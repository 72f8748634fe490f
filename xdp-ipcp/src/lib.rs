//! The eth-dix IPC process over AF_XDP, with an AF_PACKET fallback.
//!
//! * [`Layer`]: the I/O-free core of the layer: registry, directory cache and name queries,
//!   endpoint ids and the flow table, flow allocation (requester and responder side), data-frame
//!   classification and header writing, and counters.
//! * [`backend`]: the I/O backends behind one trait, [`Backend`]: AF_XDP (XDP program native or
//!   generic, the pool as UMEM, no copy in user space) and AF_PACKET (`recvmmsg`/`sendmmsg`
//!   straight into and out of pool blocks). Mode `auto` tries native, generic, then packet.
//! * [`EthIpcp`]: the data path tying layer, backend and pool together: received SDUs go onto
//!   the pool's flow rings by block index, SDUs to send get their header in their headroom.
//! * [`liveness`]: keepalives and peer timeouts of the flows (sans-IO), which
//!   [`EthIpcp::poll`] acts on.
//! * `sys`: every system call, and the only `unsafe` code of the crate.
//!
//! ```
//! use o7s_proto::MacAddr;
//! use o7s_xdp_ipcp::{Config, Instant, Layer, QueryStart};
//!
//! let mut a = Layer::new(Config::new(MacAddr([2, 0, 0, 0, 0, 0x0a])))?;
//! let mut b = Layer::new(Config::new(MacAddr([2, 0, 0, 0, 0, 0x0b])))?;
//! let hash = [0x25u8; 32];
//! b.register(&hash)?;
//! let now = Instant::ZERO;
//! assert!(matches!(a.query(&hash, now)?, QueryStart::Pending(_)));
//! // The backend would send these; here B receives them directly.
//! let req = a.poll_transmit().unwrap();
//! b.handle_rx(&req.frame, now);
//! a.handle_rx(&b.poll_transmit().unwrap().frame, now);
//! assert!(a.poll_event().is_some()); // QueryResolved
//! assert_eq!(a.query(&hash, now)?, QueryStart::Resolved(b.config().mac));
//! # Ok::<(), o7s_xdp_ipcp::Error>(())
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod directory;
pub mod flows;
#[doc(hidden)]
pub mod fuzzing;
pub mod ipcp;
pub mod layer;
pub mod liveness;
pub mod sys;
pub mod time;

pub use backend::{
    AnyBackend, Backend, BackendConfig, BackendInfo, BackendKind, BackendStats, ModeChoice,
    RingSizes, XskStats, ZeroCopy,
};
pub use ipcp::{Activity, EthIpcp, FlowSnapshot, IpcpConfig, IpcpStats, SendError, Snapshot};

pub use directory::{QUERY_TIMEOUT, QueryId};
pub use flows::{EID_END, EID_MIN, Flow, FlowState, FlowStats};
pub use layer::{
    Config, DropReason, Error, Event, Layer, MAX_MTU, QueryStart, RxAction, Stats, Transmit,
};
pub use time::Instant;
