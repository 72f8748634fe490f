//! The pool's errors: each names what failed and, for system calls, the call and the object.

use std::io;

use crate::desc::Place;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot be laid out.
    #[error("bad pool configuration: {0}")]
    BadConfig(String),
    /// A system call on a shared-memory object failed.
    #[error("{call} on shared-memory object {name:?} failed: {source}")]
    Sys {
        call: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
    /// The object exists but is not a pool of this version, or its size does not match its
    /// header.
    #[error("shared-memory object {name:?} is not a usable o7s pool: {reason}")]
    Corrupt { name: String, reason: String },
    /// The creator has not finished initialising the object (it may have died doing so).
    #[error("shared-memory object {name:?} was never fully initialised (did its creator die?)")]
    NotReady { name: String },
    /// No class holds that many bytes.
    #[error("a {len}-byte packet does not fit the largest class (at most {max} bytes)")]
    TooLarge { len: usize, max: usize },
    /// Nothing available right now (non-blocking call).
    #[error("no {what} available right now")]
    WouldBlock { what: &'static str },
    /// A blocking call reached its deadline.
    #[error("timed out waiting for {what}")]
    TimedOut { what: &'static str },
    /// A block index outside the pool.
    #[error("block index {0} is outside the pool")]
    BadIndex(u32),
    /// The calling process does not own the block in the way the call needs.
    #[error("block {index} is {place:?}, not owned by this process (pid {pid})")]
    NotOwner {
        index: u32,
        place: Option<Place>,
        pid: u32,
    },
    /// Push/pull past the block's edges.
    #[error("not enough {what}: need {need} bytes, have {have}")]
    NoRoom {
        what: &'static str,
        need: usize,
        have: usize,
    },
    /// A block already has the most extra references one descriptor can count, or another
    /// process holds them.
    #[error("block {index} cannot take another hold: {reason}")]
    Hold { index: u32, reason: &'static str },
    /// The ring does not exist, is not live, or the caller is not the end it asks to be.
    #[error("flow ring {ring}: {reason}")]
    Ring { ring: u32, reason: String },
    /// The flow is down (writes and, once drained, reads fail).
    #[error("flow is down")]
    FlowDown,
    /// The process at the other end of the ring is gone.
    #[error("the peer at the other end of the flow is gone")]
    PeerGone,
    /// The ring was made read-only for this end.
    #[error("flow is read-only")]
    ReadOnly,
    /// All ring or event-set slots are taken.
    #[error("no free {0}")]
    Full(&'static str),
}

impl Error {
    pub(crate) fn sys(call: &'static str, name: &str, source: io::Error) -> Self {
        Self::Sys {
            call,
            name: name.to_owned(),
            source,
        }
    }

    /// True for "try again later" errors ([`Error::WouldBlock`]).
    pub fn is_would_block(&self) -> bool {
        matches!(self, Self::WouldBlock { .. })
    }
}
