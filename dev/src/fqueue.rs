//! Flow sets and event queues: one thread waits on many flows (the reference's
//! `fset`/`fqueue`/`fevent`).
//!
//! ```no_run
//! use std::time::Duration;
//! use o7s::{FlowEvent, FlowQueue, FlowSet};
//!
//! let client = o7s::Client::connect()?;
//! client.bind("echo")?;
//! let flow = client.flow_accept(None)?;
//! let set = FlowSet::new(&client)?;
//! set.add(&flow)?;
//! let mut queue = FlowQueue::new();
//! loop {
//!     if set.wait(&mut queue, Some(Duration::from_secs(1)))? == 0 {
//!         continue; // timed out
//!     }
//!     for (id, event) in &mut queue {
//!         match event {
//!             FlowEvent::Packet if id == flow.id() => {
//!                 let mut buf = [0u8; 2048];
//!                 let n = flow.read(&mut buf)?;
//!                 flow.write(&buf[..n])?;
//!             }
//!             e if e.is_flow_end() => return Ok(()),
//!             _ => {}
//!         }
//!     }
//! }
//! # Ok::<(), o7s::Error>(())
//! ```
//!
//! **How events get there.** Each process has one event set per pool (a shared-memory object,
//! [`o7s_pool::EventSet`]) with [`MAX_SETS`] queues; each [`FlowSet`] owns one queue. Adding a
//! flow makes the pool ring the flow reads from *post* to that queue: every packet any writer
//! (another application, an IPCP's relay, the Ethernet IPCP's receive path) publishes on the
//! ring is one [`FlowEvent::Packet`], and the flow's end shows as [`FlowEvent::Dealloc`] (the
//! other end, or the IRMd, deallocated it) or [`FlowEvent::Peer`] (the process at the other end
//! died; what it sent can still be read). A wait sleeps on a futex in the set: no polling, and
//! no allocation per event ([`FlowQueue`] is allocated once).
//!
//! **Nothing is lost silently.** A queue holds [`QUEUE_CAPACITY`] events between waits (the
//! reference's fqueue size); past that the queue is flagged and the next wait reports
//! [`FlowQueue::overflowed`]: read every flow of the set until it would block.
//!
//! Differences from the reference: the set is tied to the pool of the [`Client`] it was made
//! with ([`Client::pool`]: the shared pool, or the process's per-user pool, created there with
//! that pool's owner and mode); a flow that is down (or whose peer is gone) when added gets its end event at once; and
//! [`FlowSet::watch_writable`] (an o7s extension) asks for one [`FlowEvent::Writable`] when a
//! full transmit ring gets room, which the async API builds on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use o7s_pool::{Event, EventSet, EventSetConfig, Pool, RingFlags};

use crate::{Client, Flow, Result, lock};

/// Flow sets one process may have at a time (per pool), as in the reference.
pub const MAX_SETS: u32 = 32;
/// Events a set's queue holds between two waits (the reference's fqueue size).
pub const QUEUE_CAPACITY: u32 = 1024;
/// The kind of a wake-up (never shown to callers).
const WAKE: u32 = 0x200;

/// What happened on a flow. The values of the reference's event types are kept ([`bits`]).
///
/// [`bits`]: FlowEvent::bits
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FlowEvent {
    /// A packet arrived (one event per packet): a read will not wait.
    Packet,
    /// The flow was marked down administratively (reference `FLOW_DOWN`).
    Down,
    /// The flow is up again (reference `FLOW_UP`).
    Up,
    /// A flow was allocated (reference `FLOW_ALLOC`; never generated, as there).
    Alloc,
    /// The flow was deallocated by the other end or the IRMd (reference `FLOW_DEALLOC`):
    /// reads drain what was queued, then fail with [`crate::Error::FlowDown`].
    Dealloc,
    /// The process at the other end is gone (reference `FLOW_PEER`): reads drain what was
    /// queued, then fail with [`crate::Error::PeerGone`].
    Peer,
    /// A full transmit ring has room again (or the flow ended), after
    /// [`FlowSet::watch_writable`]. o7s only.
    Writable,
    /// A value this library does not know (kept, not dropped).
    Unknown(u32),
}

impl FlowEvent {
    /// The event for a value found in a queue.
    pub fn from_bits(bits: u32) -> Self {
        match bits {
            Event::PACKET => Self::Packet,
            Event::DOWN => Self::Down,
            Event::UP => Self::Up,
            Event::ALLOC => Self::Alloc,
            Event::DEALLOC => Self::Dealloc,
            Event::PEER => Self::Peer,
            Event::WRITABLE => Self::Writable,
            other => Self::Unknown(other),
        }
    }

    /// The event's value (the reference's `enum fqtype` bit for the kinds it has).
    pub fn bits(self) -> u32 {
        match self {
            Self::Packet => Event::PACKET,
            Self::Down => Event::DOWN,
            Self::Up => Event::UP,
            Self::Alloc => Event::ALLOC,
            Self::Dealloc => Event::DEALLOC,
            Self::Peer => Event::PEER,
            Self::Writable => Event::WRITABLE,
            Self::Unknown(bits) => bits,
        }
    }

    /// Whether the flow has ended ([`FlowEvent::Dealloc`] or [`FlowEvent::Peer`]).
    pub fn is_flow_end(self) -> bool {
        matches!(self, Self::Dealloc | Self::Peer)
    }
}

/// Why a flow-set call failed (inside [`crate::Error::FlowSet`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowSetError {
    /// This process already has [`MAX_SETS`] flow sets for the pool.
    #[error("this process already has {MAX_SETS} flow sets")]
    TooManySets,
    /// A flow is in at most one set at a time.
    #[error("flow {flow} is already in another flow set")]
    InAnotherSet {
        /// The flow's id.
        flow: u32,
    },
    /// The flow's packets live in another pool than the set's client's.
    #[error("flow {flow} lives in pool {flow_pool:?}, the flow set serves {set_pool:?}")]
    OtherPool {
        /// The flow's id.
        flow: u32,
        /// The flow's pool.
        flow_pool: String,
        /// The set's pool.
        set_pool: String,
    },
}

/// This process's event set for one pool, shared by its flow sets.
///
/// Events are keyed by the ring a flow end *reads* (unique per end, where a flow id is not: a
/// process may hold both ends of a flow); keys from the pool's ring count on, one per queue,
/// wake a waiter.
#[derive(Debug)]
struct ProcessSet {
    pool: Arc<Pool>,
    set: EventSet,
    /// The first wake key (the pool's ring count).
    wake_base: u32,
    /// Bit `q` set: queue `q` belongs to a live [`FlowSet`].
    used: Mutex<u32>,
    /// Receive ring → flow id, for every flow end in one of the sets.
    ends: Mutex<HashMap<u32, u32>>,
}

/// The process's sets, one per pool, alive while a flow set uses them.
static PROCESS_SETS: Mutex<Vec<Weak<ProcessSet>>> = Mutex::new(Vec::new());

fn process_set(pool: Arc<Pool>) -> Result<Arc<ProcessSet>> {
    let mut sets = lock(&PROCESS_SETS);
    sets.retain(|w| w.strong_count() > 0);
    let pid = std::process::id();
    if let Some(found) = sets
        .iter()
        .filter_map(Weak::upgrade)
        .find(|s| s.pool.name() == pool.name() && s.set.owner_pid() == pid)
    {
        return Ok(found);
    }
    let wake_base = pool.layout().config.rings;
    let set = EventSet::create_for(
        &pool,
        EventSetConfig {
            queues: MAX_SETS,
            capacity: QUEUE_CAPACITY,
            max_flows: wake_base + MAX_SETS,
        },
    )?;
    for q in 0..MAX_SETS {
        set.add(q, wake_base + q)?;
    }
    let shared = Arc::new(ProcessSet {
        pool,
        set,
        wake_base,
        used: Mutex::new(0),
        ends: Mutex::new(HashMap::new()),
    });
    sets.push(Arc::downgrade(&shared));
    Ok(shared)
}

/// A set of flows one thread can wait on (the reference's `fset_t`). Methods take `&self`:
/// flows may be added and removed while another thread waits. Dropping it removes its flows.
///
/// Flows are told apart by their ids, as in the reference; the one case where two members
/// share an id is a process holding both ends of a flow (both report under that id).
///
/// Remove a flow before dropping (deallocating) it: a flow dropped while in a set shows once
/// as [`FlowEvent::Dealloc`] and stays a member until removed ([`FlowSet::remove_id`]).
#[derive(Debug)]
pub struct FlowSet {
    shared: Arc<ProcessSet>,
    queue: u32,
    /// The ring each member reads → its flow id.
    flows: Mutex<HashMap<u32, u32>>,
}

impl FlowSet {
    /// A new, empty set for flows of `client`'s IRMd (`fset_create`). Fails with
    /// [`FlowSetError::TooManySets`] past [`MAX_SETS`] live sets in this process.
    pub fn new(client: &Client) -> Result<Self> {
        // In the process's own pool (a per-user pool for an unprivileged process): the pool
        // its flows' rings are in, and the one its peers can open.
        let shared = process_set(client.inner.pool(client.pool())?)?;
        let queue = {
            let mut used = lock(&shared.used);
            let free = (!*used).trailing_zeros();
            if free >= MAX_SETS {
                return Err(FlowSetError::TooManySets.into());
            }
            *used |= 1 << free;
            free
        };
        // A previous set on this queue may have left events behind.
        let mut stale = Vec::new();
        shared.set.try_take(queue, &mut stale)?;
        Ok(Self {
            shared,
            queue,
            flows: Mutex::new(HashMap::new()),
        })
    }

    /// Adds a flow (`fset_add`): from now on its packets and its end are events of this set.
    /// If packets are already waiting, one [`FlowEvent::Packet`] is queued at once (as in the
    /// reference); if the flow already ended, its end event is. A flow is in one set at a time
    /// ([`FlowSetError::InAnotherSet`]).
    pub fn add(&self, flow: &Flow) -> Result<()> {
        let pool = &self.shared.pool;
        let set = &self.shared.set;
        let id = flow.id();
        if flow.pool().name() != pool.name() {
            return Err(FlowSetError::OtherPool {
                flow: id,
                flow_pool: flow.pool().name().to_owned(),
                set_pool: pool.name().to_owned(),
            }
            .into());
        }
        let rx = flow.info().rx_ring;
        let mut flows = lock(&self.flows);
        if set.queue_of(rx).is_some_and(|q| q != self.queue) {
            return Err(FlowSetError::InAnotherSet { flow: id }.into());
        }
        set.add(self.queue, rx)?;
        lock(&self.shared.ends).insert(rx, id);
        if let Err(e) = pool.ring_watch(rx, set, rx) {
            lock(&self.shared.ends).remove(&rx);
            let _ = set.remove(rx);
            return Err(e.into());
        }
        flows.insert(rx, id);
        let flags = pool.ring_flags(rx)?;
        if pool.ring_len(rx)? > 0 {
            set.notify(rx, Event::PACKET)?;
        }
        if flags.0 & RingFlags::PEER_GONE != 0 {
            set.notify(rx, Event::PEER)?;
        } else if flags.0 & RingFlags::FLOW_DOWN != 0 {
            set.notify(rx, Event::DEALLOC)?;
        }
        Ok(())
    }

    /// Removes a flow (`fset_del`); nothing if it is not in the set.
    pub fn remove(&self, flow: &Flow) {
        let rx = flow.info().rx_ring;
        let mut flows = lock(&self.flows);
        if flows.remove(&rx).is_some() {
            self.forget(rx);
        }
    }

    /// Removes every member with flow id `id` (say, a flow already dropped); nothing if there
    /// is none.
    pub fn remove_id(&self, id: u32) {
        let mut flows = lock(&self.flows);
        flows.retain(|&rx, &mut member| {
            if member == id {
                self.forget(rx);
            }
            member != id
        });
    }

    fn forget(&self, rx: u32) {
        // The ring may be gone already (flow deallocated, ring destroyed, maybe reused for
        // another flow): unwatch only if it still posts this key to this set.
        let _ = self.shared.pool.ring_unwatch(rx, &self.shared.set, rx);
        if self.shared.set.queue_of(rx) == Some(self.queue) {
            let _ = self.shared.set.remove(rx);
        }
        lock(&self.shared.ends).remove(&rx);
    }

    /// Whether the flow is in the set (`fset_has`).
    pub fn has(&self, flow: &Flow) -> bool {
        lock(&self.flows).contains_key(&flow.info().rx_ring)
    }

    /// How many flows the set holds.
    pub fn len(&self) -> usize {
        lock(&self.flows).len()
    }

    /// Whether the set holds no flow.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every flow and drops pending events (`fset_zero`).
    pub fn clear(&self) {
        let mut flows = lock(&self.flows);
        for (rx, _) in flows.drain() {
            self.forget(rx);
        }
        let mut stale = Vec::new();
        let _ = self.shared.set.try_take(self.queue, &mut stale);
    }

    /// Waits until a flow of the set has events, at most `timeout` (`None`: until one does, or
    /// [`FlowSet::wake`]), and fills `queue` with them (`fevent`). Returns how many events
    /// `queue` now holds; 0 when the wait timed out or was woken without events (then
    /// [`FlowQueue::overflowed`] says whether events were lost). If `queue` still holds
    /// events not yet taken, returns at once without waiting, as the reference does.
    pub fn wait(&self, queue: &mut FlowQueue, timeout: Option<Duration>) -> Result<usize> {
        if queue.remaining() > 0 {
            return Ok(queue.remaining());
        }
        queue.reset();
        match self.shared.set.wait(self.queue, &mut queue.events, timeout) {
            Ok(outcome) => queue.overflowed = outcome.overflowed,
            Err(o7s_pool::Error::TimedOut { .. }) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
        // Keys back to flow ids; wake-ups, and ends removed since the event, drop out.
        let ends = lock(&self.shared.ends);
        queue
            .events
            .retain(|e| e.kind != WAKE && ends.contains_key(&e.flow));
        queue.ids.extend(
            queue
                .events
                .iter()
                .map(|e| ends.get(&e.flow).copied().unwrap_or(0)),
        );
        Ok(queue.events.len())
    }

    /// Makes a wait on this set (in progress, or the next one) return, possibly with no
    /// events. Safe from any thread.
    pub fn wake(&self) -> Result<()> {
        self.shared
            .set
            .notify(self.shared.wake_base + self.queue, WAKE)?;
        Ok(())
    }

    /// For a flow of this set whose transmit ring is full: asks for one
    /// [`FlowEvent::Writable`] when the other end next reads (or the flow ends). Returns
    /// `true`, and asks for nothing, if a write would not wait now. An o7s extension.
    pub fn watch_writable(&self, flow: &Flow) -> Result<bool> {
        Ok(self.shared.pool.ring_watch_space(
            flow.info().tx_ring,
            &self.shared.set,
            flow.info().rx_ring,
        )?)
    }

    /// The pool the set serves (another handle on the flows' pool).
    #[cfg(feature = "tokio")]
    pub(crate) fn pool(&self) -> &Arc<Pool> {
        &self.shared.pool
    }
}

impl Drop for FlowSet {
    fn drop(&mut self) {
        self.clear();
        *lock(&self.shared.used) &= !(1 << self.queue);
    }
}

/// Events taken by one [`FlowSet::wait`] (the reference's `fqueue_t`), handed out in order by
/// iterating: `(flow id, event)`. Allocated once, for [`QUEUE_CAPACITY`] events; waits reuse
/// it.
#[derive(Debug)]
pub struct FlowQueue {
    /// As taken from the set: keyed by receive ring.
    events: Vec<Event>,
    /// The flow id of each event.
    ids: Vec<u32>,
    next: usize,
    overflowed: bool,
}

impl Default for FlowQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl FlowQueue {
    /// An empty queue (`fqueue_create`).
    pub fn new() -> Self {
        Self {
            events: Vec::with_capacity(QUEUE_CAPACITY as usize),
            ids: Vec::with_capacity(QUEUE_CAPACITY as usize),
            next: 0,
            overflowed: false,
        }
    }

    /// Events not yet taken.
    pub fn remaining(&self) -> usize {
        self.events.len() - self.next
    }

    /// Whether the last wait found the set's queue overflowed: events were lost, so read every
    /// flow of the set until it would block.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    fn reset(&mut self) {
        self.events.clear();
        self.ids.clear();
        self.next = 0;
        self.overflowed = false;
    }

    /// The next event by flow end: `(receive ring, event)` (what the async API dispatches on).
    #[cfg(feature = "tokio")]
    pub(crate) fn next_by_end(&mut self) -> Option<(u32, FlowEvent)> {
        let e = self.events.get(self.next)?;
        self.next += 1;
        Some((e.flow, FlowEvent::from_bits(e.kind)))
    }
}

impl Iterator for FlowQueue {
    type Item = (u32, FlowEvent);

    /// The next event (`fqueue_next` and `fqueue_type`).
    fn next(&mut self) -> Option<(u32, FlowEvent)> {
        let e = self.events.get(self.next)?;
        let id = self.ids.get(self.next).copied().unwrap_or(0);
        self.next += 1;
        Some((id, FlowEvent::from_bits(e.kind)))
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn event_values_are_the_references() {
        let known = [
            (FlowEvent::Packet, 0x01),
            (FlowEvent::Down, 0x02),
            (FlowEvent::Up, 0x04),
            (FlowEvent::Alloc, 0x08),
            (FlowEvent::Dealloc, 0x10),
            (FlowEvent::Peer, 0x20),
            (FlowEvent::Writable, 0x100),
        ];
        for (event, bits) in known {
            assert_eq!(event.bits(), bits);
            assert_eq!(FlowEvent::from_bits(bits), event);
        }
        assert!(FlowEvent::Dealloc.is_flow_end() && FlowEvent::Peer.is_flow_end());
        assert!(!FlowEvent::Packet.is_flow_end() && !FlowEvent::Down.is_flow_end());
    }

    proptest! {
        /// Any value read from a queue maps to an event and back to the same value.
        #[test]
        fn any_value_round_trips(bits in any::<u32>()) {
            prop_assert_eq!(FlowEvent::from_bits(bits).bits(), bits);
        }
    }

    #[test]
    fn a_queue_hands_out_events_in_order_and_reuses_its_buffer() {
        let mut q = FlowQueue::new();
        let cap = q.events.capacity();
        q.events.extend([
            Event {
                flow: 30,
                kind: Event::PACKET,
            },
            Event {
                flow: 40,
                kind: 0x4000,
            },
        ]);
        q.ids.extend([3, 4]);
        assert_eq!(q.remaining(), 2);
        assert_eq!(q.next(), Some((3, FlowEvent::Packet)));
        assert_eq!(q.next(), Some((4, FlowEvent::Unknown(0x4000))));
        assert_eq!(q.next(), None);
        q.reset();
        assert_eq!((q.remaining(), q.events.capacity()), (0, cap));
    }
}
