//! Event sets: per-process queues of flow events, so one thread can wait on many flows (what
//! `fqueue`/`fevent` build on). Writers `notify` the reader's set; the reader `wait`s on one of
//! its queues.
//!
//! **Rings post by themselves.** A process makes its set for a pool with
//! [`EventSet::create_for`] and watches the rings it reads ([`Pool::ring_watch`]): from then on
//! every packet a writer publishes on such a ring is one [`Event::PACKET`] in the set, and a
//! flow going down, coming back up or losing its peer is an [`Event::DEALLOC`], [`Event::UP`] or
//! [`Event::PEER`]; a writer waiting for room arms a one-shot [`Event::WRITABLE`]
//! ([`Pool::ring_watch_space`]). The ring header holds the set's *token*, the set's name is
//! derived from the pool's, the reader's pid and the token ([`EventSet::name_for`]), and each
//! process opens another's set once and keeps it mapped (a small table, pruned of dead
//! processes), so posting allocates nothing after the first packet. Each pool handle remembers,
//! per ring, the set it last posted to, so a post consults that table only when a ring's
//! watcher changes. A set that cannot be opened (not there yet, gone) is tried again at most
//! every [`OPEN_RETRY`], never given up on; posts meanwhile are counted
//! ([`undelivered_posts`]). [`Pool::reclaim`] unlinks a dead process's sets.
//!
//! **A post never blocks for long on a set's lock**, which any process that can open the set
//! can hold: it tries for at most [`POST_LOCK_PATIENCE`] ([`UNTRUSTED_POST_PATIENCE`] for a set
//! that belongs to another user, e.g. a root IPCP posting into a per-user pool's set), then
//! flags the queue overflowed;
//! after that the set is *stuck* for this process and later posts only try the lock once
//! (flagging overflow when it is taken) until one gets it.
//!
//! A full queue never loses an event silently: the event is not stored, the queue is flagged
//! overflowed, the writer is told ([`Notified::Overflowed`]) and the reader's next wait reports
//! [`WaitOutcome::overflowed`], meaning "events were dropped: poll every flow in this queue".
//! All mutations happen under one robust mutex; if a process dies holding it, the next locker
//! clamps counts and the flow table back into range before going on.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::pool::Pool;
use crate::sys::{self, LockOutcome, Mapping};

const MAGIC: [u8; 8] = *b"O7SEVSET";
const VERSION: u32 = 2;
const READY: u32 = 0x5245_4459;
const HEADER_SIZE: usize = 128;
/// How long a post tries for a set's lock before flagging the queue overflowed instead.
pub const POST_LOCK_PATIENCE: Duration = Duration::from_millis(50);
/// How long a post tries for the lock of a set that belongs to another user.
pub const UNTRUSTED_POST_PATIENCE: Duration = Duration::from_micros(50);
/// How often a post retries opening a set it could not open.
pub const OPEN_RETRY: Duration = Duration::from_millis(100);
const QUEUE_HEADER_SIZE: usize = 64;

/// One event: something happened on `flow` (the key a reader gave its ring, or any number a
/// `notify` caller chose), of kind `kind` (the constants below, or the caller's own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Event {
    pub flow: u32,
    pub kind: u32,
}

impl Event {
    /// A packet was published on a watched ring (one event per packet). The values of the
    /// reference's event types (`enum fqtype`) are kept for the kinds it has.
    pub const PACKET: u32 = 0x01;
    /// The flow was marked down administratively (posted by whoever marks it; rings never do).
    pub const DOWN: u32 = 0x02;
    /// `FLOW_DOWN` was cleared on a watched ring.
    pub const UP: u32 = 0x04;
    /// A flow was allocated (defined for completeness; never posted by rings).
    pub const ALLOC: u32 = 0x08;
    /// `FLOW_DOWN` was raised on a watched ring: the flow was deallocated.
    pub const DEALLOC: u32 = 0x10;
    /// `PEER_GONE` was raised on a watched ring: the process at the other end is gone.
    pub const PEER: u32 = 0x20;
    /// A ring whose writer armed [`Pool::ring_watch_space`] has room again (or ended). o7s
    /// only: the reference has no such event.
    pub const WRITABLE: u32 = 0x100;
}

/// Shape of an event set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventSetConfig {
    /// Queues (fqueues) in the set.
    pub queues: u32,
    /// Pending events one queue holds before it overflows.
    pub capacity: u32,
    /// Flow ids `0..max_flows` can be watched.
    pub max_flows: u32,
}

impl Default for EventSetConfig {
    fn default() -> Self {
        Self {
            queues: 32,
            capacity: 1024,
            max_flows: 4096,
        }
    }
}

/// What `notify` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notified {
    /// No queue watches that flow.
    NotWatched,
    Queued,
    /// The queue was full: the event was not stored and the queue is flagged overflowed.
    Overflowed,
}

/// What `wait` returned besides the events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitOutcome {
    /// Events were dropped since the last wait: poll every flow in this queue.
    pub overflowed: bool,
}

#[repr(C)]
struct Header {
    magic: [u8; 8],
    version: u32,
    ready: AtomicU32,
    queues: u32,
    capacity: u32,
    max_flows: u32,
    /// The process that made the set (whose rings post to it).
    owner_pid: u32,
    /// Random, non-zero: tells this set from an earlier one of a process with the same pid.
    token: u32,
    mutex: libc::pthread_mutex_t,
}
const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_SIZE);

#[repr(C)]
struct QueueHeader {
    count: AtomicU32,
    overflowed: AtomicU32,
    seq: AtomicU32,
    waiters: AtomicU32,
}

/// A mapped event set.
#[derive(Debug)]
pub struct EventSet {
    map: Mapping,
    cfg: EventSetConfig,
    name: String,
    owner_pid: u32,
    token: u32,
    /// Made by [`EventSet::create_for`]: the name goes when this handle does.
    unlink_on_drop: bool,
    /// Made by this process's uid (its object belongs to our effective uid). Posts to a set of
    /// another user's wait for its lock only [`UNTRUSTED_POST_PATIENCE`]: that user could hold
    /// the lock on purpose to stall a root daemon posting to it.
    own_uid: bool,
}

fn total_len(cfg: &EventSetConfig) -> Option<usize> {
    let queue = QUEUE_HEADER_SIZE.checked_add((cfg.capacity as usize).checked_mul(8)?)?;
    HEADER_SIZE
        .checked_add(queue.checked_mul(cfg.queues as usize)?)?
        .checked_add((cfg.max_flows as usize).checked_mul(4)?)
}

fn check_config(cfg: &EventSetConfig) -> Result<usize> {
    if cfg.queues == 0
        || cfg.queues > 1024
        || cfg.capacity == 0
        || cfg.capacity > 1 << 20
        || cfg.max_flows > 1 << 22
    {
        return Err(Error::BadConfig(format!(
            "event set: queues 1..=1024, capacity 1..=2^20, max_flows ..=2^22 (got {cfg:?})"
        )));
    }
    total_len(cfg).ok_or_else(|| Error::BadConfig("event set too large".into()))
}

impl EventSet {
    /// Creates a set, readable and writable by `owner_uid`'s processes and the creator (0600
    /// with that owner, or 0660 when the creator keeps it).
    pub fn create(name: &str, cfg: EventSetConfig, owner_uid: Option<u32>) -> Result<Self> {
        Self::create_object(name, cfg, 0o660, owner_uid, None, random_token())
    }

    /// The name of the set that process `pid` made with token `token` for the pool named
    /// `pool`: `<pool>.ev.<pid>.<token in hex>`.
    pub fn name_for(pool: &str, pid: u32, token: u32) -> String {
        format!("{pool}.ev.{pid}.{token:08x}")
    }

    /// Creates this process's set for the rings of `pool` (see the module doc), under
    /// [`EventSet::name_for`] with a fresh token. Every process that can open the pool can
    /// open it (the pool object's permission bits and group); the name is unlinked when this
    /// handle is dropped, or by [`Pool::reclaim`] if the process dies first.
    pub fn create_for(pool: &Pool, cfg: EventSetConfig) -> Result<Self> {
        let pool_fd =
            sys::shm_open(pool.name()).map_err(|e| Error::sys("shm_open", pool.name(), e))?;
        let (_, _, pool_gid, pool_mode) =
            sys::fstat(&pool_fd).map_err(|e| Error::sys("fstat", pool.name(), e))?;
        drop(pool_fd);
        let mode = pool_mode & 0o660;
        let gid = (mode & 0o060 != 0).then_some(pool_gid);
        // A token already in use by a live set of ours is astronomically unlikely; a stale one
        // (our pid reused) is what EEXIST would mean: pick another.
        for _ in 0..8 {
            let token = random_token();
            let name = Self::name_for(pool.name(), pool.pid(), token);
            match Self::create_object(&name, cfg, mode, None, gid, token) {
                Ok(mut set) => {
                    set.unlink_on_drop = true;
                    return Ok(set);
                }
                Err(Error::Sys { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        Err(Error::Full("event set names"))
    }

    fn create_object(
        name: &str,
        cfg: EventSetConfig,
        mode: u32,
        uid: Option<u32>,
        gid: Option<u32>,
        token: u32,
    ) -> Result<Self> {
        let len = check_config(&cfg)?;
        let fd =
            sys::shm_create(name, mode).map_err(|e| Error::sys("shm_open(O_CREAT)", name, e))?;
        let setup = || -> Result<Self> {
            let uid = uid.filter(|&u| u != sys::geteuid());
            if uid.is_some() || gid.is_some() {
                sys::fchown(&fd, uid, gid).map_err(|e| Error::sys("fchown", name, e))?;
            }
            sys::ftruncate(&fd, len as u64).map_err(|e| Error::sys("ftruncate", name, e))?;
            let map = Mapping::map(&fd, len).map_err(|e| Error::sys("mmap", name, e))?;
            let owner_pid = sys::getpid();
            let set = Self {
                map,
                cfg,
                name: name.to_owned(),
                owner_pid,
                token,
                unlink_on_drop: false,
                own_uid: uid.is_none(),
            };
            let h = set.header_ptr();
            // SAFETY: freshly created (O_EXCL) object, nobody else uses it before `ready`.
            unsafe {
                (*h).magic = MAGIC;
                (*h).version = VERSION;
                (*h).queues = cfg.queues;
                (*h).capacity = cfg.capacity;
                (*h).max_flows = cfg.max_flows;
                (*h).owner_pid = owner_pid;
                (*h).token = token;
                sys::robust_mutex_init(std::ptr::addr_of_mut!((*h).mutex))
                    .map_err(|e| Error::sys("pthread_mutex_init", name, e))?;
            }
            set.header().ready.store(READY, Ordering::Release);
            Ok(set)
        };
        let result = setup();
        if result.is_err() {
            let _ = sys::shm_unlink(name);
        }
        result
    }

    /// Maps an existing set.
    pub fn open(name: &str) -> Result<Self> {
        let fd = sys::shm_open(name).map_err(|e| Error::sys("shm_open", name, e))?;
        let corrupt = |reason: String| Error::Corrupt {
            name: name.to_owned(),
            reason,
        };
        let (size, owner_uid, ..) = sys::fstat(&fd).map_err(|e| Error::sys("fstat", name, e))?;
        if (size as usize) < HEADER_SIZE {
            return Err(Error::NotReady {
                name: name.to_owned(),
            });
        }
        let map = Mapping::map(&fd, size as usize).map_err(|e| Error::sys("mmap", name, e))?;
        // SAFETY: at least HEADER_SIZE bytes are mapped.
        let h = unsafe { &*(map.base() as *const Header) };
        if h.ready.load(Ordering::Acquire) != READY {
            return Err(Error::NotReady {
                name: name.to_owned(),
            });
        }
        if h.magic != MAGIC || h.version != VERSION {
            return Err(corrupt("not an o7s event set of this version".into()));
        }
        let cfg = EventSetConfig {
            queues: h.queues,
            capacity: h.capacity,
            max_flows: h.max_flows,
        };
        let len = check_config(&cfg).map_err(|e| corrupt(e.to_string()))?;
        if len != size as usize {
            return Err(corrupt(format!(
                "object is {size} bytes, header describes {len}"
            )));
        }
        let (owner_pid, token) = (h.owner_pid, h.token);
        Ok(Self {
            map,
            cfg,
            name: name.to_owned(),
            owner_pid,
            token,
            unlink_on_drop: false,
            own_uid: owner_uid == sys::geteuid(),
        })
    }

    pub fn config(&self) -> EventSetConfig {
        self.cfg
    }

    /// The set's shared-memory name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid of the process that made the set.
    pub fn owner_pid(&self) -> u32 {
        self.owner_pid
    }

    /// The set's token (non-zero; what a watched ring's header holds).
    pub fn token(&self) -> u32 {
        self.token
    }

    /// Watches `flow` on `queue`. A flow is in at most one queue.
    pub fn add(&self, queue: u32, flow: u32) -> Result<()> {
        self.check_queue(queue)?;
        let slot = self.flow_slot(flow)?;
        let _g = self.lock();
        let cur = slot.load(Ordering::Relaxed);
        if cur != 0 && cur != queue + 1 {
            return Err(Error::BadConfig(format!(
                "flow {flow} is already in queue {}",
                cur - 1
            )));
        }
        slot.store(queue + 1, Ordering::Relaxed);
        Ok(())
    }

    /// Stops watching `flow`.
    pub fn remove(&self, flow: u32) -> Result<()> {
        let slot = self.flow_slot(flow)?;
        let _g = self.lock();
        slot.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// The queue watching `flow`, if any.
    pub fn queue_of(&self, flow: u32) -> Option<u32> {
        let v = self.flow_slot(flow).ok()?.load(Ordering::Relaxed);
        (v != 0 && v <= self.cfg.queues).then(|| v - 1)
    }

    /// Reports an event on `flow` to the queue watching it.
    pub fn notify(&self, flow: u32, kind: u32) -> Result<Notified> {
        self.notify_n(flow, kind, 1)
    }

    /// Reports `times` identical events on `flow` (say, a batch of packets) under one lock and
    /// one wake-up. If not all fit, those that do are stored and the queue is flagged
    /// overflowed ([`Notified::Overflowed`]).
    pub fn notify_n(&self, flow: u32, kind: u32, times: u32) -> Result<Notified> {
        self.notify_within(flow, kind, times, POST_LOCK_PATIENCE)
            .map(|(notified, _)| notified)
    }

    /// As [`EventSet::notify_n`], trying for the lock for at most `patience` (zero: once);
    /// also says whether the lock was had (false: the queue was flagged overflowed instead;
    /// None: not tried, nothing to post).
    fn notify_within(
        &self,
        flow: u32,
        kind: u32,
        times: u32,
        patience: Duration,
    ) -> Result<(Notified, Option<bool>)> {
        let Some(queue) = self.queue_of(flow) else {
            return Ok((Notified::NotWatched, None));
        };
        if times == 0 {
            return Ok((Notified::Queued, None));
        }
        let q = self.queue(queue);
        let mut locked = true;
        let outcome = 'locked: {
            let Some(_g) = self.lock_for_post(patience) else {
                // The lock stayed taken (its holder stopped or stuck): say so rather than wait.
                q.overflowed.store(1, Ordering::SeqCst);
                locked = false;
                break 'locked Notified::Overflowed;
            };
            let n = q.count.load(Ordering::Relaxed).min(self.cfg.capacity);
            let fit = times.min(self.cfg.capacity - n);
            // Entries first, count second: a crash in between loses nothing already queued.
            for k in n..n + fit {
                let e = self.entry(queue, k);
                e[0].store(flow, Ordering::Relaxed);
                e[1].store(kind, Ordering::Relaxed);
            }
            q.count.store(n + fit, Ordering::Release);
            if fit < times {
                q.overflowed.store(1, Ordering::Relaxed);
                Notified::Overflowed
            } else {
                Notified::Queued
            }
        };
        q.seq.fetch_add(1, Ordering::SeqCst);
        if q.waiters.load(Ordering::SeqCst) != 0 {
            sys::futex_wake_all(&q.seq);
        }
        Ok((outcome, Some(locked)))
    }

    /// Flags the queue watching `flow` overflowed (events for it were lost) and wakes its
    /// waiters. Takes no lock.
    pub fn flag_overflow(&self, flow: u32) {
        if let Some(queue) = self.queue_of(flow) {
            let q = self.queue(queue);
            q.overflowed.store(1, Ordering::SeqCst);
            q.seq.fetch_add(1, Ordering::SeqCst);
            if q.waiters.load(Ordering::SeqCst) != 0 {
                sys::futex_wake_all(&q.seq);
            }
        }
    }

    /// Moves every pending event of `queue` into `out` without waiting.
    pub fn try_take(&self, queue: u32, out: &mut Vec<Event>) -> Result<WaitOutcome> {
        self.check_queue(queue)?;
        let q = self.queue(queue);
        let _g = self.lock();
        let n = q.count.load(Ordering::Acquire).min(self.cfg.capacity);
        out.extend((0..n).map(|k| {
            let e = self.entry(queue, k);
            Event {
                flow: e[0].load(Ordering::Relaxed),
                kind: e[1].load(Ordering::Relaxed),
            }
        }));
        q.count.store(0, Ordering::Relaxed);
        let overflowed = q.overflowed.swap(0, Ordering::Relaxed) != 0;
        Ok(WaitOutcome { overflowed })
    }

    /// Waits until `queue` has events (or an overflow to report), then takes them all.
    pub fn wait(
        &self,
        queue: u32,
        out: &mut Vec<Event>,
        timeout: Option<Duration>,
    ) -> Result<WaitOutcome> {
        self.check_queue(queue)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let q = self.queue(queue);
        loop {
            let seq = q.seq.load(Ordering::SeqCst);
            q.waiters.fetch_add(1, Ordering::SeqCst);
            let pending =
                q.count.load(Ordering::SeqCst) != 0 || q.overflowed.load(Ordering::SeqCst) != 0;
            if !pending {
                let left = match deadline.map(|d| d.checked_duration_since(Instant::now())) {
                    Some(None) => {
                        q.waiters.fetch_sub(1, Ordering::SeqCst);
                        return Err(Error::TimedOut {
                            what: "flow events",
                        });
                    }
                    Some(Some(left)) => Some(left),
                    None => None,
                };
                sys::futex_wait(&q.seq, seq, left);
            }
            q.waiters.fetch_sub(1, Ordering::SeqCst);
            let before = out.len();
            let outcome = self.try_take(queue, out)?;
            if out.len() > before || outcome.overflowed {
                return Ok(outcome);
            }
        }
    }

    fn check_queue(&self, queue: u32) -> Result<()> {
        if queue < self.cfg.queues {
            Ok(())
        } else {
            Err(Error::BadConfig(format!(
                "no event queue {queue} (the set has {})",
                self.cfg.queues
            )))
        }
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with the header.
        unsafe { &*(self.map.base() as *const Header) }
    }

    fn header_ptr(&self) -> *mut Header {
        self.map.base().cast()
    }

    fn queue_offset(&self, queue: u32) -> usize {
        HEADER_SIZE + queue as usize * (QUEUE_HEADER_SIZE + 8 * self.cfg.capacity as usize)
    }

    fn queue(&self, queue: u32) -> &QueueHeader {
        // SAFETY: queue < queues, so the offset is inside the mapping (checked size), aligned.
        unsafe { &*(self.map.base().add(self.queue_offset(queue)) as *const QueueHeader) }
    }

    fn entry(&self, queue: u32, k: u32) -> &[AtomicU32; 2] {
        let off = self.queue_offset(queue) + QUEUE_HEADER_SIZE + 8 * k as usize;
        // SAFETY: k < capacity, so the entry is inside the queue's area.
        unsafe { &*(self.map.base().add(off) as *const [AtomicU32; 2]) }
    }

    fn flow_slot(&self, flow: u32) -> Result<&AtomicU32> {
        if flow >= self.cfg.max_flows {
            return Err(Error::BadConfig(format!(
                "flow {flow} beyond the set's {} flows",
                self.cfg.max_flows
            )));
        }
        let off = self.queue_offset(self.cfg.queues) + 4 * flow as usize;
        // SAFETY: flow < max_flows, inside the mapping.
        Ok(unsafe { &*(self.map.base().add(off) as *const AtomicU32) })
    }

    fn lock(&self) -> Guard {
        // SAFETY: the mutex lives in the header of a live mapping and was initialised.
        let m = unsafe { std::ptr::addr_of_mut!((*self.header_ptr()).mutex) };
        // SAFETY: as above.
        match unsafe { sys::robust_mutex_lock(m) } {
            Ok(LockOutcome::Locked) => Guard(Some(m)),
            Ok(LockOutcome::OwnerDied) => {
                self.repair();
                // SAFETY: locked after EOWNERDEAD, data repaired.
                unsafe { sys::robust_mutex_consistent(m) };
                Guard(Some(m))
            }
            Err(_) => Guard(None),
        }
    }

    /// The lock for a post, if it can be had within `patience` (zero: one try): a post must
    /// not hang on a process that holds the lock and stopped (the IRMd posts too, when it
    /// takes a flow down). Holders keep it for a few stores, so this nearly always succeeds
    /// at once.
    fn lock_for_post(&self, patience: Duration) -> Option<Guard> {
        // SAFETY: the mutex lives in the header of a live mapping and was initialised.
        let m = unsafe { std::ptr::addr_of_mut!((*self.header_ptr()).mutex) };
        let start = Instant::now();
        for attempt in 0u32.. {
            // SAFETY: as above.
            match unsafe { sys::robust_mutex_trylock(m) } {
                Ok(Some(LockOutcome::Locked)) => return Some(Guard(Some(m))),
                Ok(Some(LockOutcome::OwnerDied)) => {
                    self.repair();
                    // SAFETY: locked after EOWNERDEAD, data repaired.
                    unsafe { sys::robust_mutex_consistent(m) };
                    return Some(Guard(Some(m)));
                }
                Ok(None) if !patience.is_zero() && start.elapsed() < patience => {}
                Ok(None) | Err(_) => return None,
            }
            match attempt {
                0..100 => std::hint::spin_loop(),
                100..1000 => std::thread::yield_now(),
                _ => std::thread::sleep(Duration::from_micros(200)),
            }
        }
        None
    }

    fn repair(&self) {
        for queue in 0..self.cfg.queues {
            let q = self.queue(queue);
            if q.count.load(Ordering::Relaxed) > self.cfg.capacity {
                q.count.store(self.cfg.capacity, Ordering::Relaxed);
                q.overflowed.store(1, Ordering::Relaxed);
            }
        }
        for flow in 0..self.cfg.max_flows {
            if let Ok(slot) = self.flow_slot(flow)
                && slot.load(Ordering::Relaxed) > self.cfg.queues
            {
                slot.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Test hook: runs `f` holding the set's lock (as a stopped process inside a post would).
    #[doc(hidden)]
    pub fn debug_with_lock_held<R>(&self, f: impl FnOnce() -> R) -> R {
        let _g = self.lock();
        f()
    }

    /// Removes a set's name.
    pub fn unlink(name: &str) -> Result<()> {
        sys::shm_unlink(name).map_err(|e| Error::sys("shm_unlink", name, e))
    }
}

impl Drop for EventSet {
    fn drop(&mut self) {
        if self.unlink_on_drop {
            let _ = sys::shm_unlink(&self.name);
        }
    }
}

/// A random non-zero token (std's per-process random hash keys, mixed with the clock).
fn random_token() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let h = RandomState::new().hash_one((now, sys::getpid()));
    match (h ^ (h >> 32)) as u32 {
        0 => 1,
        t => t,
    }
}

/// Another process's set as a process that posts to it knows it: mapped once opened; until
/// then, when to try again. Shared by the global table and the pools' per-ring caches.
pub(crate) struct Opened {
    pool: String,
    pid: u32,
    token: u32,
    set: OnceLock<EventSet>,
    /// While the set is not open: [`now_ms`] before which no post tries again.
    retry_at: AtomicU64,
    /// A post gave up on the set's lock: later posts try it once, until one gets it.
    stuck: AtomicBool,
    /// Posts were lost while the set could not be opened: the next delivered post's queue is
    /// flagged overflowed too.
    lost: AtomicBool,
}

impl Opened {
    /// The set, opening it if it is time to try (at most once per [`OPEN_RETRY`]).
    fn get(&self) -> Option<&EventSet> {
        if let Some(set) = self.set.get() {
            return Some(set);
        }
        let now = now_ms();
        let at = self.retry_at.load(Ordering::Relaxed);
        let next = now + OPEN_RETRY.as_millis() as u64;
        if now < at
            || self
                .retry_at
                .compare_exchange(at, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return None; // not yet, or another thread is trying right now
        }
        let opened = EventSet::open(&EventSet::name_for(&self.pool, self.pid, self.token))
            .ok()
            .filter(|s| s.owner_pid == self.pid && s.token == self.token)?;
        // A racing opener may have won: either mapping is the same set.
        let _ = self.set.set(opened);
        self.set.get()
    }

    fn post(&self, key: u32, kind: u32, times: u32) {
        let Some(set) = self.get() else {
            UNDELIVERED.fetch_add(u64::from(times), Ordering::Relaxed);
            self.lost.store(true, Ordering::Relaxed);
            return;
        };
        if self.lost.load(Ordering::Relaxed) && self.lost.swap(false, Ordering::Relaxed) {
            set.flag_overflow(key);
        }
        let stuck = self.stuck.load(Ordering::Relaxed);
        let patience = if stuck {
            Duration::ZERO
        } else if set.own_uid {
            POST_LOCK_PATIENCE
        } else {
            UNTRUSTED_POST_PATIENCE
        };
        // Errors only for keys beyond the set's table: nothing watches them.
        if let Ok((_, Some(locked))) = set.notify_within(key, kind, times, patience)
            && locked == stuck
        {
            self.stuck.store(!locked, Ordering::Relaxed);
        }
    }

    fn is(&self, pool: &Pool, pid: u32, token: u32) -> bool {
        self.pid == pid && self.token == token && self.pool == pool.name()
    }
}

/// Milliseconds since this process first asked.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Events posted to sets that could not be opened (see [`undelivered_posts`]).
static UNDELIVERED: AtomicU64 = AtomicU64::new(0);

/// How many events this process could not post because the set a ring named could not be
/// opened (not created yet, or gone). Such a set is tried again at most every [`OPEN_RETRY`].
pub fn undelivered_posts() -> u64 {
    UNDELIVERED.load(Ordering::Relaxed)
}

/// Sets this process posts to. Small: one entry per reader process this one writes to.
static OPENED: Mutex<Vec<Arc<Opened>>> = Mutex::new(Vec::new());
/// Past this many entries, those of dead processes are dropped, then the oldest.
const OPENED_MAX: usize = 64;

fn opened() -> std::sync::MutexGuard<'static, Vec<Arc<Opened>>> {
    // Nothing done under this lock can leave the table inconsistent.
    OPENED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The process-wide entry for set `token` of process `pid`, made on first use.
fn lookup(pool: &Pool, pid: u32, token: u32) -> Arc<Opened> {
    let mut table = opened();
    if let Some(o) = table.iter().find(|o| o.is(pool, pid, token)) {
        return o.clone();
    }
    if table.len() >= OPENED_MAX {
        table.retain(|o| sys::process_alive(o.pid));
        if table.len() >= OPENED_MAX {
            table.remove(0);
        }
    }
    let o = Arc::new(Opened {
        pool: pool.name().to_owned(),
        pid,
        token,
        set: OnceLock::new(),
        retry_at: AtomicU64::new(0),
        stuck: AtomicBool::new(false),
        lost: AtomicBool::new(false),
    });
    table.push(o.clone());
    o
}

/// Which of a ring's two watchers a post is for.
#[derive(Clone, Copy)]
pub(crate) enum Watcher {
    /// The reader's set (packets, flags).
    Reader,
    /// The writer's one-shot space watch.
    Writer,
}

/// Per pool handle and ring, the set last posted to for each watcher, so that a post on a
/// ring takes one uncontended lock and compares two numbers.
pub(crate) struct PostCache(Box<[Mutex<Option<Arc<Opened>>>]>);

impl std::fmt::Debug for PostCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostCache")
            .field("slots", &self.0.len())
            .finish_non_exhaustive()
    }
}

impl PostCache {
    pub(crate) fn new(rings: u32) -> Self {
        Self((0..rings as usize * 2).map(|_| Mutex::new(None)).collect())
    }
}

/// Posts `times` events of `kind` for `key` to the set `token` of process `pid` (ring
/// `ring`'s `watcher`). Finds the set through the pool's per-ring cache, else the process's
/// table (first use, or the ring's watcher changed); after that, allocates nothing.
pub(crate) fn post(
    pool: &Pool,
    ring: u32,
    watcher: Watcher,
    (pid, token): (u32, u32),
    key: u32,
    kind: u32,
    times: u32,
) {
    if token == 0 || times == 0 {
        return;
    }
    let slot = ring as usize * 2 + watcher as usize;
    let Some(cached) = pool.post_cache().0.get(slot) else {
        return lookup(pool, pid, token).post(key, kind, times);
    };
    let mut cached = cached.lock().unwrap_or_else(PoisonError::into_inner);
    let o = match cached.as_ref() {
        Some(o) if o.pid == pid && o.token == token => o,
        _ => cached.insert(lookup(pool, pid, token)),
    };
    o.post(key, kind, times);
}

/// Part of [`Pool::reclaim`]: forgets the dead process's sets and unlinks their names.
pub(crate) fn reclaim_sets(pool: &Pool, pid: u32) {
    opened().retain(|o| !(o.pid == pid && o.pool == pool.name()));
    for slot in pool.post_cache().0.iter() {
        let mut cached = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if cached.as_ref().is_some_and(|o| o.pid == pid) {
            *cached = None;
        }
    }
    let prefix = format!("{}.ev.{pid}.", pool.name());
    let Ok(dir) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    for entry in dir.flatten() {
        if let Some(name) = entry.file_name().to_str()
            && name.starts_with(&prefix)
        {
            let _ = sys::shm_unlink(name);
        }
    }
}

struct Guard(Option<*mut libc::pthread_mutex_t>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(m) = self.0 {
            // SAFETY: locked by this thread in `lock`.
            unsafe { sys::robust_mutex_unlock(m) };
        }
    }
}
