//! Flow rings: one per flow endpoint, single producer / single consumer of block indices, in the
//! pool's ring table. Lock-free on the fast path; waiting uses one futex word per ring, so a
//! blocked reader or writer sleeps in the kernel instead of polling.
//!
//! Crash safety comes from the order of steps. A writer moves the block's descriptor to
//! `Ring { ring }` *before* publishing the slot; a reader moves it to `Owned` *before* advancing
//! the tail. A process killed between the two steps therefore leaves a block whose descriptor
//! names it (owned by the dead process, or "in the ring" while outside `[tail, head)`), which
//! [`Pool::reclaim`] finds and frees.
//!
//! Positions are free-running `u32` counters; `head - tail` in wrapping arithmetic is the fill
//! level, correct across wrap-around for any capacity up to 2^31.
//!
//! A ring can also post to event sets (see `evset`): its reader may *watch* it
//! ([`Pool::ring_watch`]: every published packet and every end-of-flow flag becomes an event in
//! the reader's set), and its writer may arm a one-shot *space watch*
//! ([`Pool::ring_watch_space`]: the reader's next take posts [`Event::WRITABLE`] to the
//! writer's set). Each is a token word in the shared header, read with one load after the
//! publish that the futex wake-up already fences; the watching side stores its token, fences,
//! then re-checks the ring, so a packet (or room) is never missed in between.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::{Duration, Instant};

use crate::desc::Place;
use crate::error::{Error, Result};
use crate::evset::{self, Event, EventSet, Watcher};
use crate::layout::CACHE_LINE;
use crate::packet::Packet;
use crate::pool::Pool;
use crate::sys;

mod any;
pub use any::{Bell, RingArm, WAIT_ANY_MAX, WakeWord, wait_any};

/// Ring flags, shared by both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RingFlags(pub u32);

impl RingFlags {
    /// The flow is down: writes fail, reads fail once the ring is drained.
    pub const FLOW_DOWN: u32 = 1;
    /// The other end is gone (set by reclaim): writes fail, reads fail once drained.
    pub const PEER_GONE: u32 = 2;
    /// Writes are refused.
    pub const READ_ONLY: u32 = 4;
}

const STATE_FREE: u32 = 0;
const STATE_CLAIMED: u32 = 1;
const STATE_LIVE: u32 = 2;
/// Spins before sleeping in a blocking call: a peer on another core usually answers within a
/// microsecond, far cheaper than a futex sleep and wake.
const SPINS: u32 = 2000;

#[repr(C)]
struct RingHeader {
    // Producer's cache line.
    head: AtomicU32,
    producer: AtomicU32,
    _p: [u32; CACHE_LINE / 4 - 2],
    // Consumer's cache line.
    tail: AtomicU32,
    consumer: AtomicU32,
    _c: [u32; CACHE_LINE / 4 - 2],
    // Shared, rarely written.
    state: AtomicU32,
    flags: AtomicU32,
    seq: AtomicU32,
    waiters: AtomicU32,
    /// Token of the reader's event set watching the ring (0: none), and the key its events
    /// carry.
    watch: AtomicU32,
    watch_key: AtomicU32,
    /// Token of the writer's event set waiting for room once (0: none), and its key.
    space_watch: AtomicU32,
    space_key: AtomicU32,
    /// Moves at every `ring_create`: a sleeper that counted itself in `waiters` takes itself
    /// out only from the incarnation it counted itself in (the ring may be destroyed and made
    /// anew while it sleeps; `waiters` is reset then and belongs to the new flow's sleepers).
    incarnation: AtomicU32,
}
const _: () = assert!(std::mem::size_of::<RingHeader>() <= crate::layout::RING_HEADER_SIZE);

pub(crate) fn init_all(pool: &Pool) {
    for r in 0..pool.layout().config.rings {
        let h = header(pool, r);
        h.state.store(STATE_FREE, Ordering::Relaxed);
    }
}

fn header(pool: &Pool, ring: u32) -> &RingHeader {
    let off = pool
        .layout()
        .ring_offset(ring)
        .expect("ring id checked by caller");
    pool.at(off)
}

fn slot(pool: &Pool, ring: u32, pos: u32) -> &AtomicU32 {
    let l = pool.layout();
    let off = l.ring_offset(ring).expect("ring id checked by caller");
    let mask = l.config.ring_capacity - 1;
    pool.at(off + crate::layout::RING_HEADER_SIZE + 4 * (pos & mask) as usize)
}

fn live_header(pool: &Pool, ring: u32) -> Result<&RingHeader> {
    if ring >= pool.layout().config.rings {
        return Err(Error::Ring {
            ring,
            reason: "no such ring".into(),
        });
    }
    let h = header(pool, ring);
    if h.state.load(Ordering::Acquire) != STATE_LIVE {
        return Err(Error::Ring {
            ring,
            reason: "not allocated".into(),
        });
    }
    Ok(h)
}

fn notify(h: &RingHeader) {
    fence(Ordering::SeqCst);
    if h.waiters.load(Ordering::SeqCst) != 0 {
        h.seq.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake_all(&h.seq);
    }
}

/// Room for a write, or a flag that makes writes fail at once.
fn writable(pool: &Pool, h: &RingHeader) -> bool {
    let used = h
        .head
        .load(Ordering::Acquire)
        .wrapping_sub(h.tail.load(Ordering::Acquire));
    used < pool.layout().config.ring_capacity || h.flags.load(Ordering::Acquire) != 0
}

/// Posts to the set watching the ring (its reader's), if any. Call after a SeqCst fence.
fn post_reader(pool: &Pool, ring: u32, h: &RingHeader, kind: u32, times: u32) {
    let token = h.watch.load(Ordering::SeqCst);
    if token != 0 {
        let key = h.watch_key.load(Ordering::SeqCst);
        let consumer = h.consumer.load(Ordering::Relaxed);
        let to = (consumer, token);
        evset::post(pool, ring, Watcher::Reader, to, key, kind, times);
    }
}

/// Fires (and disarms) the writer's one-shot space watch, if armed. Call after a SeqCst fence.
fn fire_space_watch(pool: &Pool, ring: u32, h: &RingHeader) {
    let token = h.space_watch.load(Ordering::SeqCst);
    if token != 0
        && h.space_watch
            .compare_exchange(token, 0, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    {
        let key = h.space_key.load(Ordering::SeqCst);
        let producer = h.producer.load(Ordering::Relaxed);
        let to = (producer, token);
        evset::post(pool, ring, Watcher::Writer, to, key, Event::WRITABLE, 1);
    }
}

/// Sleeps until the ring changes (or flags change), the deadline passes, or `ready` holds.
fn wait(h: &RingHeader, deadline: Option<Instant>, ready: impl Fn() -> bool) -> Result<()> {
    for _ in 0..SPINS {
        if ready() {
            return Ok(());
        }
        std::hint::spin_loop();
    }
    let counted = count_sleeper(h);
    let seq = h.seq.load(Ordering::SeqCst);
    let result = if ready() {
        Ok(())
    } else {
        match deadline.map(|d| d.checked_duration_since(Instant::now())) {
            Some(None) => Err(Error::TimedOut {
                what: "the flow ring",
            }),
            Some(Some(left)) => {
                sys::futex_wait(&h.seq, seq, Some(left));
                Ok(())
            }
            None => {
                sys::futex_wait(&h.seq, seq, None);
                Ok(())
            }
        }
    };
    uncount_sleeper(h, counted);
    result
}

/// Counts the caller in the ring's sleepers; returns the incarnation it counted itself in.
fn count_sleeper(h: &RingHeader) -> u32 {
    let incarnation = h.incarnation.load(Ordering::SeqCst);
    h.waiters.fetch_add(1, Ordering::SeqCst);
    incarnation
}

/// Takes the caller out of the sleepers it counted itself in ([`count_sleeper`]), unless the
/// ring was made anew since (then the count is the new flow's). Should the ring be remade
/// between the two steps of `count_sleeper`, one sleeper too many stays counted: writers make
/// a wake-up call they need not, never one too few.
fn uncount_sleeper(h: &RingHeader, incarnation: u32) {
    if h.incarnation.load(Ordering::SeqCst) == incarnation {
        let _ = h
            .waiters
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

impl Pool {
    /// Allocates a ring written by `producer` and read by `consumer` (both pids). The IRMd does
    /// this when it sets a flow up.
    pub fn ring_create(&self, producer: u32, consumer: u32) -> Result<u32> {
        for r in 0..self.layout().config.rings {
            let h = header(self, r);
            if h.state
                .compare_exchange(
                    STATE_FREE,
                    STATE_CLAIMED,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                let start = h.head.load(Ordering::Relaxed);
                h.tail.store(start, Ordering::Relaxed);
                h.producer.store(producer, Ordering::Relaxed);
                h.consumer.store(consumer, Ordering::Relaxed);
                h.flags.store(0, Ordering::Relaxed);
                h.waiters.store(0, Ordering::Relaxed);
                h.watch.store(0, Ordering::Relaxed);
                h.watch_key.store(0, Ordering::Relaxed);
                h.space_watch.store(0, Ordering::Relaxed);
                h.space_key.store(0, Ordering::Relaxed);
                h.incarnation.fetch_add(1, Ordering::Relaxed);
                h.state.store(STATE_LIVE, Ordering::Release);
                return Ok(r);
            }
        }
        Err(Error::Full("flow rings"))
    }

    /// Frees a ring, returning every block still queued on it to the pool. The producer must
    /// have stopped writing (detached or dead); a reader still blocked gets [`Error::FlowDown`].
    pub fn ring_destroy(&self, ring: u32) -> Result<usize> {
        let h = live_header(self, ring)?;
        self.ring_set_flags(ring, RingFlags::FLOW_DOWN)?;
        let freed = drain(self, ring, h);
        h.state.store(STATE_FREE, Ordering::Release);
        Ok(freed)
    }

    /// Sets flags on a ring and wakes both ends. A watching reader's set is told once per
    /// flag newly raised: [`Event::DEALLOC`] for `FLOW_DOWN`, [`Event::PEER`] for `PEER_GONE`;
    /// a writer's armed space watch fires, so a writer waiting for room sees the flow end.
    pub fn ring_set_flags(&self, ring: u32, flags: u32) -> Result<()> {
        let h = live_header(self, ring)?;
        let before = h.flags.fetch_or(flags, Ordering::SeqCst);
        h.seq.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake_all(&h.seq);
        let raised = flags & !before;
        if raised & RingFlags::FLOW_DOWN != 0 {
            post_reader(self, ring, h, Event::DEALLOC, 1);
        }
        if raised & RingFlags::PEER_GONE != 0 {
            post_reader(self, ring, h, Event::PEER, 1);
        }
        if raised != 0 {
            fire_space_watch(self, ring, h);
        }
        Ok(())
    }

    /// Clears flags on a ring and wakes both ends; clearing `FLOW_DOWN` tells a watching
    /// reader's set [`Event::UP`].
    pub fn ring_clear_flags(&self, ring: u32, flags: u32) -> Result<()> {
        let h = live_header(self, ring)?;
        let before = h.flags.fetch_and(!flags, Ordering::SeqCst);
        h.seq.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake_all(&h.seq);
        if before & flags & RingFlags::FLOW_DOWN != 0 {
            post_reader(self, ring, h, Event::UP, 1);
        }
        if before & flags != 0 {
            fire_space_watch(self, ring, h);
        }
        Ok(())
    }

    /// Watches a ring this process reads with its own event set `set` (made by
    /// [`EventSet::create_for`] on this pool): from now on each packet published on it is one
    /// [`Event::PACKET`] with `key` in the queue of `set` that watches `key` (add `key` to a
    /// queue first), and end-of-flow flags are events too (see [`Pool::ring_set_flags`]).
    /// Packets already queued post nothing: look at [`Pool::ring_len`] after this call. A ring
    /// has at most one watcher; watching again replaces it.
    pub fn ring_watch(&self, ring: u32, set: &EventSet, key: u32) -> Result<()> {
        let h = live_header(self, ring)?;
        self.check_own_set(ring, set)?;
        if h.consumer.load(Ordering::Relaxed) != self.pid() {
            return Err(Error::Ring {
                ring,
                reason: format!("pid {} is not its consumer", self.pid()),
            });
        }
        h.watch.store(0, Ordering::SeqCst);
        h.watch_key.store(key, Ordering::SeqCst);
        h.watch.store(set.token(), Ordering::SeqCst);
        // Pairs with the writer's fence between publishing and loading `watch`: a packet
        // published before this is seen by the caller's look at the ring.
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Stops `set` watching a ring for `key` (nothing if another set, another key, or none
    /// watches it: the ring may have been reused for another flow since).
    pub fn ring_unwatch(&self, ring: u32, set: &EventSet, key: u32) -> Result<()> {
        let h = live_header(self, ring)?;
        // Only the reader (this process) changes the watch, so key and token agree here.
        if h.watch_key.load(Ordering::SeqCst) == key {
            let _ = h
                .watch
                .compare_exchange(set.token(), 0, Ordering::SeqCst, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The token of the set watching a ring (0: none).
    pub fn ring_watcher(&self, ring: u32) -> Result<u32> {
        Ok(live_header(self, ring)?.watch.load(Ordering::Acquire))
    }

    /// Whether a write to the ring would not wait: it has room, or a flag makes writes fail.
    pub fn ring_writable(&self, ring: u32) -> Result<bool> {
        let h = live_header(self, ring)?;
        Ok(writable(self, h))
    }

    /// For a ring this process writes: asks, once, for an [`Event::WRITABLE`] with `key` in
    /// its own `set` when the reader next takes packets (or a flag is raised or cleared).
    /// Returns `true`, and arms nothing, if the ring is writable already (see
    /// [`Pool::ring_writable`]); then do not wait for the event. Arming again replaces the
    /// previous request.
    pub fn ring_watch_space(&self, ring: u32, set: &EventSet, key: u32) -> Result<bool> {
        let h = live_header(self, ring)?;
        self.check_own_set(ring, set)?;
        if h.producer.load(Ordering::Relaxed) != self.pid() {
            return Err(Error::Ring {
                ring,
                reason: format!("pid {} is not its producer", self.pid()),
            });
        }
        if writable(self, h) {
            return Ok(true);
        }
        h.space_watch.store(0, Ordering::SeqCst);
        h.space_key.store(key, Ordering::SeqCst);
        h.space_watch.store(set.token(), Ordering::SeqCst);
        // Pairs with the reader's fence between moving the tail and loading `space_watch`.
        fence(Ordering::SeqCst);
        if writable(self, h) {
            // Room came meanwhile; disarm unless the reader already fired it (then one
            // spurious event arrives, which is harmless).
            let _ =
                h.space_watch
                    .compare_exchange(set.token(), 0, Ordering::SeqCst, Ordering::Relaxed);
            return Ok(true);
        }
        Ok(false)
    }

    fn check_own_set(&self, ring: u32, set: &EventSet) -> Result<()> {
        // The name must be `EventSet::name_for(pool, our pid, its token)` (checked in place:
        // a space watch is armed on the write path).
        let named_ours = set
            .name()
            .strip_prefix(self.name())
            .and_then(|rest| rest.strip_prefix(".ev."))
            .and_then(|rest| rest.split_once('.'))
            .is_some_and(|(pid, token)| {
                pid.parse() == Ok(self.pid()) && u32::from_str_radix(token, 16) == Ok(set.token())
            });
        if set.owner_pid() != self.pid() || !named_ours {
            return Err(Error::Ring {
                ring,
                reason: format!(
                    "event set {:?} is not this process's set for pool {:?}",
                    set.name(),
                    self.name()
                ),
            });
        }
        Ok(())
    }

    pub fn ring_flags(&self, ring: u32) -> Result<RingFlags> {
        Ok(RingFlags(
            live_header(self, ring)?.flags.load(Ordering::Acquire),
        ))
    }

    /// The producer and consumer pids of a live ring.
    pub fn ring_ends(&self, ring: u32) -> Result<(u32, u32)> {
        let h = live_header(self, ring)?;
        Ok((
            h.producer.load(Ordering::Relaxed),
            h.consumer.load(Ordering::Relaxed),
        ))
    }

    /// Number of queued blocks.
    pub fn ring_len(&self, ring: u32) -> Result<u32> {
        let h = live_header(self, ring)?;
        Ok(h.head
            .load(Ordering::Acquire)
            .wrapping_sub(h.tail.load(Ordering::Acquire)))
    }

    /// The writing end; only the ring's producer process may take it.
    pub fn ring_writer(&self, ring: u32) -> Result<RingWriter<'_>> {
        let h = live_header(self, ring)?;
        if h.producer.load(Ordering::Relaxed) != self.pid() {
            return Err(Error::Ring {
                ring,
                reason: format!("pid {} is not its producer", self.pid()),
            });
        }
        Ok(RingWriter {
            pool: self,
            ring,
            h,
        })
    }

    /// The reading end; only the ring's consumer process may take it.
    pub fn ring_reader(&self, ring: u32) -> Result<RingReader<'_>> {
        let h = live_header(self, ring)?;
        if h.consumer.load(Ordering::Relaxed) != self.pid() {
            return Err(Error::Ring {
                ring,
                reason: format!("pid {} is not its consumer", self.pid()),
            });
        }
        Ok(RingReader {
            pool: self,
            ring,
            h,
        })
    }

    /// Test hook: moves an empty ring's positions (to exercise counter wrap-around).
    #[doc(hidden)]
    pub fn ring_set_position(&self, ring: u32, pos: u32) -> Result<()> {
        let h = live_header(self, ring)?;
        if h.head.load(Ordering::Acquire) != h.tail.load(Ordering::Acquire) {
            return Err(Error::Ring {
                ring,
                reason: "not empty".into(),
            });
        }
        h.head.store(pos, Ordering::Release);
        h.tail.store(pos, Ordering::Release);
        Ok(())
    }
}

/// Returns every block in `[tail, head)` still marked as queued on `ring`.
fn drain(pool: &Pool, ring: u32, h: &RingHeader) -> usize {
    let head = h.head.load(Ordering::Acquire);
    let mut tail = h.tail.load(Ordering::Acquire);
    let mut freed = 0;
    while tail != head {
        freed += pool.free_from_ring(slot(pool, ring, tail).load(Ordering::Relaxed), ring);
        tail = tail.wrapping_add(1);
        h.tail.store(tail, Ordering::Release);
    }
    freed
}

/// Part of [`Pool::reclaim`]: the dead process's ring ends, and its event sets (it no longer
/// watches anything; their names are unlinked).
pub(crate) fn reclaim_ends(pool: &Pool, pid: u32) -> usize {
    let mut freed = 0;
    for r in 0..pool.layout().config.rings {
        let h = header(pool, r);
        if h.state.load(Ordering::Acquire) != STATE_LIVE {
            continue;
        }
        let consumer_dead = h.consumer.load(Ordering::Relaxed) == pid;
        let producer_dead = h.producer.load(Ordering::Relaxed) == pid;
        if !consumer_dead && !producer_dead {
            continue;
        }
        // Nobody to tell on the dead side; the live side hears PEER_GONE below.
        if consumer_dead {
            h.watch.store(0, Ordering::SeqCst);
        }
        if producer_dead {
            h.space_watch.store(0, Ordering::SeqCst);
        }
        let _ = pool.ring_set_flags(r, RingFlags::PEER_GONE);
        if consumer_dead {
            freed += drain(pool, r, h);
        }
        if producer_dead {
            // Blocks the dead producer marked as queued but never published.
            let head = h.head.load(Ordering::Acquire);
            let tail = h.tail.load(Ordering::Acquire);
            let queued: HashSet<u32> = (0..head.wrapping_sub(tail))
                .map(|k| slot(pool, r, tail.wrapping_add(k)).load(Ordering::Relaxed))
                .collect();
            for index in 0..pool.layout().total_blocks {
                if !queued.contains(&index) {
                    freed += pool.free_from_ring(index, r);
                }
            }
        }
    }
    evset::reclaim_sets(pool, pid);
    freed
}

/// The writing end of a flow ring.
#[derive(Debug)]
pub struct RingWriter<'p> {
    pool: &'p Pool,
    ring: u32,
    h: &'p RingHeader,
}

impl std::fmt::Debug for RingHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingHeader")
            .field("head", &self.head)
            .field("tail", &self.tail)
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

impl<'p> RingWriter<'p> {
    pub fn ring(&self) -> u32 {
        self.ring
    }

    fn check_flags(&self) -> Result<()> {
        let f = self.h.flags.load(Ordering::Acquire);
        if f & RingFlags::FLOW_DOWN != 0 {
            Err(Error::FlowDown)
        } else if f & RingFlags::PEER_GONE != 0 {
            Err(Error::PeerGone)
        } else if f & RingFlags::READ_ONLY != 0 {
            Err(Error::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn space(&self) -> u32 {
        let cap = self.pool.layout().config.ring_capacity;
        let used = self
            .h
            .head
            .load(Ordering::Relaxed)
            .wrapping_sub(self.h.tail.load(Ordering::Acquire));
        cap.saturating_sub(used)
    }

    /// Queues a packet without waiting. On failure the packet comes back with the reason, so
    /// nothing is lost.
    pub fn try_write(&self, packet: Packet<'p>) -> std::result::Result<(), (Packet<'p>, Error)> {
        if let Err(e) = self.check_flags() {
            return Err((packet, e));
        }
        if self.space() == 0 {
            return Err((packet, Error::WouldBlock { what: "ring space" }));
        }
        packet.publish_bounds();
        let index = packet.index();
        if let Err(e) = self.enqueue(index) {
            return Err((packet, e));
        }
        std::mem::forget(packet);
        self.publish(1);
        Ok(())
    }

    /// Queues a packet, waiting for room until `timeout` (None: forever).
    pub fn write(
        &self,
        mut packet: Packet<'p>,
        timeout: Option<Duration>,
    ) -> std::result::Result<(), (Packet<'p>, Error)> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.try_write(packet) {
                Err((p, Error::WouldBlock { .. })) => packet = p,
                other => return other,
            }
            if let Err(e) = wait(self.h, deadline, || {
                self.space() > 0 || self.h.flags.load(Ordering::Acquire) != 0
            }) {
                return Err((packet, e));
            }
        }
    }

    /// Queues owned blocks by index (bounds already in their descriptors), as many as fit;
    /// returns how many were queued from the front of `indices`. One publish for the batch.
    pub fn try_write_batch(&self, indices: &[u32]) -> Result<usize> {
        self.check_flags()?;
        let n = indices.len().min(self.space() as usize);
        let mut done = 0;
        for &index in &indices[..n] {
            if let Err(e) = self.enqueue_at(index, done as u32) {
                self.publish(done as u32);
                return if done > 0 { Ok(done) } else { Err(e) };
            }
            done += 1;
        }
        self.publish(done as u32);
        if done == 0 && !indices.is_empty() {
            return Err(Error::WouldBlock { what: "ring space" });
        }
        Ok(done)
    }

    fn enqueue(&self, index: u32) -> Result<()> {
        self.enqueue_at(index, 0)
    }

    /// Marks the block queued and stores it `offset` slots past the current head.
    fn enqueue_at(&self, index: u32, offset: u32) -> Result<()> {
        self.pool.move_place(
            index,
            Place::Owned {
                pid: self.pool.pid(),
            },
            Place::Ring { ring: self.ring },
        )?;
        let pos = self.h.head.load(Ordering::Relaxed).wrapping_add(offset);
        slot(self.pool, self.ring, pos).store(index, Ordering::Relaxed);
        Ok(())
    }

    fn publish(&self, n: u32) {
        if n == 0 {
            return;
        }
        let head = self.h.head.load(Ordering::Relaxed);
        self.h.head.store(head.wrapping_add(n), Ordering::Release);
        notify(self.h);
        // One event per packet, as in the reference (a reader counts on it).
        post_reader(self.pool, self.ring, self.h, Event::PACKET, n);
    }

    pub fn len(&self) -> u32 {
        self.pool.layout().config.ring_capacity - self.space()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The reading end of a flow ring.
#[derive(Debug)]
pub struct RingReader<'p> {
    pool: &'p Pool,
    ring: u32,
    h: &'p RingHeader,
}

impl<'p> RingReader<'p> {
    pub fn ring(&self) -> u32 {
        self.ring
    }

    fn available(&self) -> u32 {
        self.h
            .head
            .load(Ordering::Acquire)
            .wrapping_sub(self.h.tail.load(Ordering::Relaxed))
    }

    fn empty_error(&self) -> Error {
        let f = self.h.flags.load(Ordering::Acquire);
        if f & RingFlags::PEER_GONE != 0 {
            Error::PeerGone
        } else if f & RingFlags::FLOW_DOWN != 0 {
            Error::FlowDown
        } else {
            Error::WouldBlock { what: "packets" }
        }
    }

    /// Takes the next packet without waiting.
    pub fn try_read(&self) -> Result<Packet<'p>> {
        let mut index = [0u32];
        match self.try_read_batch(&mut index)? {
            0 => Err(self.empty_error()),
            _ => self.pool.packet(index[0]),
        }
    }

    /// Takes the next packet, waiting until `timeout` (None: forever).
    pub fn read(&self, timeout: Option<Duration>) -> Result<Packet<'p>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.try_read() {
                Err(Error::WouldBlock { .. }) => {}
                other => return other,
            }
            // Only flags that end a read count: READ_ONLY concerns the writer, and treating it
            // as "ready" would spin past the deadline.
            let ending = RingFlags::PEER_GONE | RingFlags::FLOW_DOWN;
            wait(self.h, deadline, || {
                self.available() > 0 || self.h.flags.load(Ordering::Acquire) & ending != 0
            })?;
        }
    }

    /// Takes up to `out.len()` block indices, now owned by this process (wrap each with
    /// [`Pool::packet`] or release it). Returns how many; 0 with an error only when the ring is
    /// empty and the flow is down or the peer gone.
    pub fn try_read_batch(&self, out: &mut [u32]) -> Result<usize> {
        let avail = self
            .available()
            .min(self.pool.layout().config.ring_capacity);
        if avail == 0 {
            return match self.empty_error() {
                Error::WouldBlock { .. } => Ok(0),
                e => Err(e),
            };
        }
        let me = Place::Owned {
            pid: self.pool.pid(),
        };
        let tail = self.h.tail.load(Ordering::Relaxed);
        let mut got = 0;
        let mut consumed = 0;
        while consumed < avail && got < out.len() {
            let index =
                slot(self.pool, self.ring, tail.wrapping_add(consumed)).load(Ordering::Relaxed);
            consumed += 1;
            // A slot whose block is not marked as queued here was scribbled on or reclaimed:
            // skip it rather than take a block someone else owns.
            if self
                .pool
                .move_place(index, Place::Ring { ring: self.ring }, me)
                .is_ok()
            {
                out[got] = index;
                got += 1;
            }
        }
        self.h
            .tail
            .store(tail.wrapping_add(consumed), Ordering::Release);
        notify(self.h);
        fire_space_watch(self.pool, self.ring, self.h);
        Ok(got)
    }

    pub fn len(&self) -> u32 {
        self.available()
    }

    pub fn is_empty(&self) -> bool {
        self.available() == 0
    }
}

/// Part of [`Pool::verify`]: ring contents against descriptors.
pub(crate) fn verify_rings(pool: &Pool, problems: &mut Vec<String>) -> HashSet<u32> {
    let mut seen = HashSet::new();
    let cap = pool.layout().config.ring_capacity;
    for r in 0..pool.layout().config.rings {
        let h = header(pool, r);
        if h.state.load(Ordering::Acquire) != STATE_LIVE {
            continue;
        }
        let head = h.head.load(Ordering::Acquire);
        let tail = h.tail.load(Ordering::Acquire);
        let len = head.wrapping_sub(tail);
        if len > cap {
            problems.push(format!("ring {r}: {len} queued, capacity {cap}"));
            continue;
        }
        for k in 0..len {
            let index = slot(pool, r, tail.wrapping_add(k)).load(Ordering::Relaxed);
            match pool.place(index) {
                Ok(w) if w.place == (Place::Ring { ring: r }) => {}
                // A reader killed between taking a block and advancing the tail leaves it
                // owned by the dead reader and still in its slot; `reclaim` settles it.
                Ok(w) => match w.place {
                    Place::Owned { pid } if !crate::sys::process_alive(pid) => problems.push(
                        format!("ring {r} slot {k}: block {index} taken by dead process {pid}"),
                    ),
                    place => {
                        problems.push(format!("ring {r} slot {k}: block {index} is {place:?}"))
                    }
                },
                Err(e) => problems.push(format!("ring {r} slot {k}: {e}")),
            }
            if !seen.insert(index) {
                problems.push(format!("block {index} queued twice"));
            }
        }
    }
    seen
}
