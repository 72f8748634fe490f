//! The o7s shared-memory packet pool. No protocol knowledge lives here.
//!
//! * [`Pool`]: a POSIX shared-memory object, created by one process (the IRMd) and opened by
//!   others, holding power-of-two size classes of blocks. The 4096-byte **frame class** comes
//!   first in a page-aligned data area that is registered as the AF_XDP UMEM ([`Pool::umem`]).
//! * [`Packet`]: a lent block with a payload window that grows into head- and tailroom.
//! * Flow rings ([`RingWriter`], [`RingReader`]): single-producer single-consumer queues of
//!   block indices, one per flow endpoint, with futex wake-ups across processes.
//! * [`EventSet`]: per-process event queues so one thread can wait on many flows.
//!
//! Every block's place (free list, owner, ring, kernel, held) is one atomic word in a descriptor
//! array outside the data area. Free lists are sharded per class behind robust process-shared
//! mutexes: when a process dies inside one, the next locker rebuilds that shard from the
//! descriptors. [`Pool::reclaim`] returns a dead process's blocks; [`Pool::verify`] checks that
//! every block is in exactly one place.

mod desc;
mod error;
mod evset;
#[doc(hidden)]
pub mod fuzzing;
mod layout;
mod packet;
mod pool;
mod ring;
mod sys;
mod verify;

pub use desc::{DescWord, MAX_PID, Place};
pub use error::{Error, Result};
pub use evset::{
    Event, EventSet, EventSetConfig, Notified, OPEN_RETRY, POST_LOCK_PATIENCE,
    UNTRUSTED_POST_PATIENCE, WaitOutcome, undelivered_posts,
};
pub use layout::{
    ClassConfig, ClassLayout, FRAME_SIZE, Layout, MAX_CLASS_SIZE, MIN_CLASS_SIZE,
    MIN_RING_CAPACITY, PoolConfig,
};
pub use packet::Packet;
pub use pool::{Access, Pool, Report, SHARED_GROUP, UmemRegion, pool_name};
pub use ring::{
    Bell, RingArm, RingFlags, RingReader, RingWriter, WAIT_ANY_MAX, WakeWord, wait_any,
};

/// Whether the calling process may use the shared pool (root or group [`SHARED_GROUP`]); others
/// use their per-user pool.
pub fn privileged() -> bool {
    sys::in_group_or_root(SHARED_GROUP)
}

/// The gid of group [`SHARED_GROUP`], if this system has one (through NSS, so `/etc/group`,
/// LDAP…): the IRMd checks other processes' groups against it.
pub fn shared_group_gid() -> Option<u32> {
    sys::group_gid(SHARED_GROUP)
}
