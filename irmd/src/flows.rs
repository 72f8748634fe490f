//! The flow table: allocated flows with their two ends and rings, and the accepts and
//! allocations waiting for each other.
//!
//! Pure state like the [`registry`](crate::registry): the server creates the rings in the pool
//! and wakes the waiting requests (it keeps their channels by token); this module decides who
//! meets whom and when a flow's rings can go.
//!
//! A *direct local flow* joins an allocating process A and an accepting process B on this
//! host: ring `a2b` (A writes, B reads) and ring `b2a`. Each end is [`EndState::Active`] until
//! its process deallocates (or says goodbye) or dies; the rings are destroyed once neither end
//! is active.
//!
//! A flow's rings live in one pool ([`Flow::pool`]): the shared pool, or the per-user pool of
//! its application ends (see [`crate::pools`]).

use std::collections::BTreeMap;

use o7s_proto::irm::{EndState, FlowInfo, FlowList, LbPolicy, QosSpec};

/// Largest flow id (ids are `1..=MAX_FLOW_ID`, as the reference's `SYS_MAX_FLOWS - 1`).
pub const MAX_FLOW_ID: u32 = 10_239;

/// Maximum packet lifetime of a direct local flow, as the reference gives its direct flows.
pub const DIRECT_MPL: u32 = 1;

/// One end of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    /// Its process.
    pub pid: u32,
    /// Where it is.
    pub state: EndState,
}

impl End {
    fn active(pid: u32) -> Self {
        Self {
            pid,
            state: EndState::Active,
        }
    }

    fn is_active(&self) -> bool {
        self.state == EndState::Active
    }
}

/// Which end of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The allocating process.
    Alloc,
    /// The accepting process.
    Accept,
}

/// An allocated flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Its id.
    pub id: u32,
    /// The name it was allocated to.
    pub name: String,
    /// The QoS the allocating process asked for.
    pub qos: QosSpec,
    /// The allocating end.
    pub alloc: End,
    /// The accepting end.
    pub accept: End,
    /// Ring written by the allocating end, read by the accepting end.
    pub a2b: u32,
    /// Ring written by the accepting end, read by the allocating end.
    pub b2a: u32,
    /// The largest SDU the flow carries, as the IPCP at one end reported it (`None`: no limit
    /// but the pool's).
    pub max_sdu: Option<u32>,
    /// The pool of its rings.
    pub pool: String,
    /// The pool's owner: [`crate::pools::SHARED`] or the uid of a per-user pool.
    pub uid: u32,
}

impl Flow {
    /// A new flow with both ends active.
    pub fn new(
        id: u32,
        name: &str,
        qos: QosSpec,
        (alloc, accept): (u32, u32),
        (a2b, b2a): (u32, u32),
    ) -> Self {
        Self {
            id,
            name: name.to_owned(),
            qos,
            alloc: End::active(alloc),
            accept: End::active(accept),
            a2b,
            b2a,
            max_sdu: None,
            pool: String::new(),
            uid: crate::pools::SHARED,
        }
    }

    /// The flow with its rings in pool `name` of owner `uid`.
    #[must_use]
    pub fn in_pool(mut self, name: &str, uid: u32) -> Self {
        name.clone_into(&mut self.pool);
        self.uid = uid;
        self
    }

    /// The end on `side`.
    pub fn end(&self, side: Side) -> &End {
        match side {
            Side::Alloc => &self.alloc,
            Side::Accept => &self.accept,
        }
    }

    /// The ends other than process `pid`'s that are still active (both ends, if `pid` is at
    /// neither; none, if it is at both).
    pub fn active_peers_of(&self, pid: u32) -> impl Iterator<Item = (Side, &End)> {
        [Side::Alloc, Side::Accept]
            .into_iter()
            .map(|side| (side, self.end(side)))
            .filter(move |(_, end)| end.pid != pid && end.is_active())
    }

    fn end_mut(&mut self, side: Side) -> &mut End {
        match side {
            Side::Alloc => &mut self.alloc,
            Side::Accept => &mut self.accept,
        }
    }

    /// Whether neither end uses the flow any more.
    pub fn is_finished(&self) -> bool {
        !self.alloc.is_active() && !self.accept.is_active()
    }

    /// What one end is told: its rings (in [`Flow::pool`]) the right way round and its peer.
    pub fn info_for(&self, side: Side) -> FlowInfo {
        let (me, peer, tx_ring, rx_ring) = match side {
            Side::Alloc => (&self.alloc, &self.accept, self.a2b, self.b2a),
            Side::Accept => (&self.accept, &self.alloc, self.b2a, self.a2b),
        };
        FlowInfo {
            flow_id: self.id,
            n_pid: me.pid,
            n_1_pid: peer.pid,
            mpl: DIRECT_MPL,
            qos: Some(self.qos.clone()),
            pool: self.pool.clone(),
            tx_ring,
            rx_ring,
            name: self.name.clone(),
            n_state: me.state.into(),
            n_1_state: peer.state.into(),
            max_sdu: self.max_sdu,
            piggyback: Vec::new(),
            uid: self.uid,
        }
    }
}

/// A `FlowAccept` waiting for an allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptWait {
    /// Its token (the server's handle on the waiting request).
    pub token: u64,
    /// The accepting process.
    pub pid: u32,
    /// Only flows to this name (`None`: any name the process is bound to).
    pub name: Option<String>,
    /// The connection it came on.
    pub conn: u64,
}

/// A `FlowAlloc` waiting for an accepting process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocWait {
    /// Its token.
    pub token: u64,
    /// The allocating process.
    pub pid: u32,
    /// The destination name.
    pub dst: String,
    /// The QoS asked for.
    pub qos: QosSpec,
    /// The largest SDU the allocating side carries (an IPCP relaying a flow request).
    pub max_sdu: Option<u32>,
    /// The connection it came on.
    pub conn: u64,
}

/// The flow table and the waiting requests.
#[derive(Debug, Default)]
pub struct FlowTable {
    flows: BTreeMap<u32, Flow>,
    /// In arrival order.
    accepts: Vec<AcceptWait>,
    /// In arrival order.
    allocs: Vec<AllocWait>,
    last_id: u32,
    last_token: u64,
}

impl FlowTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn token(&mut self) -> u64 {
        self.last_token += 1;
        self.last_token
    }

    /// Queues an accept; returns its token.
    pub fn wait_accept(&mut self, pid: u32, name: Option<&str>, conn: u64) -> u64 {
        let token = self.token();
        self.accepts.push(AcceptWait {
            token,
            pid,
            name: name.map(str::to_owned),
            conn,
        });
        token
    }

    /// Queues an allocation (`max_sdu`: the allocating side's limit); returns its token.
    pub fn wait_alloc(
        &mut self,
        pid: u32,
        dst: &str,
        qos: QosSpec,
        max_sdu: Option<u32>,
        conn: u64,
    ) -> u64 {
        let token = self.token();
        self.allocs.push(AllocWait {
            token,
            pid,
            dst: dst.to_owned(),
            qos,
            max_sdu,
            conn,
        });
        token
    }

    /// Withdraws a waiting request; false if it is no longer waiting (it was matched).
    pub fn cancel(&mut self, token: u64) -> bool {
        let before = self.accepts.len() + self.allocs.len();
        self.accepts.retain(|a| a.token != token);
        self.allocs.retain(|a| a.token != token);
        before != self.accepts.len() + self.allocs.len()
    }

    /// Withdraws every request matching `gone`; returns their tokens.
    fn cancel_where(&mut self, gone: impl Fn(u32, u64) -> bool) -> Vec<u64> {
        let mut tokens = Vec::new();
        self.accepts.retain(|a| {
            let keep = !gone(a.pid, a.conn);
            if !keep {
                tokens.push(a.token);
            }
            keep
        });
        self.allocs.retain(|a| {
            let keep = !gone(a.pid, a.conn);
            if !keep {
                tokens.push(a.token);
            }
            keep
        });
        tokens
    }

    /// Withdraws the requests that came on a connection (it closed).
    pub fn cancel_conn(&mut self, conn: u64) -> Vec<u64> {
        self.cancel_where(|_, c| c == conn)
    }

    /// Withdraws the requests of a process (it exited).
    pub fn cancel_pid(&mut self, pid: u32) -> Vec<u64> {
        self.cancel_where(|p, _| p == pid)
    }

    /// Takes the waiting accept that gets a flow to `dst`: one whose process is bound to `dst`
    /// (`bound`) and that accepts for `dst`. Round-robin takes the one that waited longest,
    /// spillover the one that became ready last.
    pub fn take_acceptor(
        &mut self,
        dst: &str,
        bound: impl Fn(u32) -> bool,
        lb: LbPolicy,
    ) -> Option<AcceptWait> {
        let fits = |a: &AcceptWait| bound(a.pid) && a.name.as_deref().is_none_or(|n| n == dst);
        let i = match lb {
            LbPolicy::RoundRobin => self.accepts.iter().position(fits)?,
            LbPolicy::Spillover => self.accepts.iter().rposition(fits)?,
        };
        Some(self.accepts.remove(i))
    }

    /// Puts back an accept taken with [`FlowTable::take_acceptor`] whose flow could not be
    /// set up: it waits on with its token.
    pub fn restore_accept(&mut self, accept: AcceptWait) {
        self.accepts.push(accept);
    }

    /// The pid of a waiting accept [`FlowTable::take_acceptor`] would consider for `dst` if
    /// `bound` were its only condition (to tell "nobody accepts" from "nobody fits").
    pub fn acceptor_for(&self, dst: &str, bound: impl Fn(u32) -> bool) -> Option<u32> {
        self.accepts
            .iter()
            .find(|a| bound(a.pid) && a.name.as_deref().is_none_or(|n| n == dst))
            .map(|a| a.pid)
    }

    /// Takes the oldest waiting allocation an accept can serve: to `name` if given, else to
    /// any name the accepting process is bound to (`bound`).
    pub fn take_alloc(
        &mut self,
        name: Option<&str>,
        fits: impl Fn(&str, u32) -> bool,
    ) -> Option<AllocWait> {
        let i = self
            .allocs
            .iter()
            .position(|a| name.is_none_or(|n| n == a.dst) && fits(&a.dst, a.pid))?;
        Some(self.allocs.remove(i))
    }

    /// How many requests wait.
    pub fn waiting(&self) -> (usize, usize) {
        (self.accepts.len(), self.allocs.len())
    }

    /// A free flow id (the next after the last one given, so ids are not reused at once).
    pub fn free_id(&mut self) -> Option<u32> {
        for _ in 0..MAX_FLOW_ID {
            self.last_id = self.last_id % MAX_FLOW_ID + 1;
            if !self.flows.contains_key(&self.last_id) {
                return Some(self.last_id);
            }
        }
        None
    }

    /// Records a flow.
    pub fn insert(&mut self, flow: Flow) {
        self.flows.insert(flow.id, flow);
    }

    /// The flow of that id.
    pub fn get(&self, id: u32) -> Option<&Flow> {
        self.flows.get(&id)
    }

    /// Records the largest SDU of flow `id` (its IPCP said so once the allocation succeeded).
    /// Returns the flow as it is now.
    pub fn set_max_sdu(&mut self, id: u32, max_sdu: Option<u32>) -> Option<&Flow> {
        let f = self.flows.get_mut(&id)?;
        f.max_sdu = max_sdu;
        Some(f)
    }

    /// Forgets a flow (its rings are the caller's to destroy).
    pub fn remove(&mut self, id: u32) -> Option<Flow> {
        self.flows.remove(&id)
    }

    /// The active end of flow `id` that process `pid` is (the allocating end first, for a
    /// process at both ends).
    pub fn active_side(&self, id: u32, pid: u32) -> Option<Side> {
        let f = self.flows.get(&id)?;
        if f.alloc.pid == pid && f.alloc.is_active() {
            Some(Side::Alloc)
        } else if f.accept.pid == pid && f.accept.is_active() {
            Some(Side::Accept)
        } else {
            None
        }
    }

    /// Marks one end of a flow as no longer active. Returns the flow if neither end is active
    /// any more: it is removed from the table and its rings are the caller's to destroy.
    pub fn end(&mut self, id: u32, side: Side, state: EndState) -> Option<Flow> {
        let f = self.flows.get_mut(&id)?;
        f.end_mut(side).state = state;
        if f.is_finished() {
            self.flows.remove(&id)
        } else {
            None
        }
    }

    /// Ends every active end of process `pid`. Returns the flows it touched, and among them
    /// those now finished (removed from the table).
    pub fn end_process(&mut self, pid: u32, state: EndState) -> (Vec<Flow>, Vec<Flow>) {
        let ids: Vec<u32> = self
            .flows
            .values()
            .filter(|f| {
                (f.alloc.pid == pid && f.alloc.is_active())
                    || (f.accept.pid == pid && f.accept.is_active())
            })
            .map(|f| f.id)
            .collect();
        let mut touched = Vec::new();
        let mut finished = Vec::new();
        for id in ids {
            let Some(f) = self.flows.get_mut(&id) else {
                continue;
            };
            for side in [Side::Alloc, Side::Accept] {
                let end = f.end_mut(side);
                if end.pid == pid && end.is_active() {
                    end.state = state;
                }
            }
            touched.push(f.clone());
            if f.is_finished()
                && let Some(f) = self.flows.remove(&id)
            {
                finished.push(f);
            }
        }
        (touched, finished)
    }

    /// Every flow, by id, as seen from its allocating end.
    pub fn list(&self) -> FlowList {
        FlowList {
            flows: self
                .flows
                .values()
                .map(|f| f.info_for(Side::Alloc))
                .collect(),
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn flow(t: &mut FlowTable, a: u32, b: u32) -> u32 {
        let id = t.free_id().unwrap();
        t.insert(
            Flow::new(id, "n", QosSpec::default(), (a, b), (id * 2, id * 2 + 1))
                .in_pool("p.pup.7", 7),
        );
        id
    }

    #[test]
    fn lb_policies_pick_the_oldest_or_the_newest() {
        let mut t = FlowTable::new();
        let first = t.wait_accept(10, None, 1);
        let other_name = t.wait_accept(11, Some("other"), 1);
        let last = t.wait_accept(12, None, 1);
        let all = |_| true;
        let rr = t.take_acceptor("n", all, LbPolicy::RoundRobin).unwrap();
        assert_eq!(rr.token, first);
        t.wait_accept(10, None, 1);
        let spill = t.take_acceptor("n", all, LbPolicy::Spillover).unwrap();
        assert_eq!(spill.pid, 10, "the most recently ready");
        // Only processes bound to the name, and accepts for that name.
        assert!(
            t.take_acceptor("n", |p| p == 11, LbPolicy::RoundRobin)
                .is_none()
        );
        assert_eq!(
            t.take_acceptor("other", |p| p == 11, LbPolicy::RoundRobin)
                .unwrap()
                .token,
            other_name
        );
        assert_eq!(
            t.take_acceptor("n", all, LbPolicy::RoundRobin)
                .unwrap()
                .token,
            last
        );
        assert_eq!(t.waiting(), (0, 0));
    }

    #[test]
    fn an_acceptor_that_does_not_fit_is_seen_but_not_taken() {
        let mut t = FlowTable::new();
        t.wait_accept(10, Some("other"), 1);
        t.wait_accept(11, None, 1);
        assert_eq!(t.acceptor_for("n", |_| true), Some(11));
        assert_eq!(t.acceptor_for("other", |_| true), Some(10));
        assert!(
            t.take_acceptor("n", |p| p != 11, LbPolicy::RoundRobin)
                .is_none()
        );
        assert_eq!(t.acceptor_for("n", |p| p == 11), Some(11));
        assert_eq!(t.waiting(), (2, 0), "nothing was taken");
    }

    #[test]
    fn allocations_wait_in_order_and_are_cancelled_by_pid_or_connection() {
        let mut t = FlowTable::new();
        let a = t.wait_alloc(1, "x", QosSpec::default(), None, 7);
        let b = t.wait_alloc(2, "y", QosSpec::default(), Some(1496), 8);
        let c = t.wait_alloc(3, "y", QosSpec::default(), None, 9);
        assert!(t.take_alloc(Some("z"), |_, _| true).is_none());
        let taken = t.take_alloc(None, |n, _| n == "y").unwrap();
        assert_eq!((taken.token, taken.max_sdu), (b, Some(1496)));
        assert_eq!(t.cancel_conn(9), [c]);
        assert_eq!(t.cancel_pid(1), [a]);
        assert!(!t.cancel(a), "already gone");
        assert_eq!(t.waiting(), (0, 0));
    }

    #[test]
    fn rings_go_when_both_ends_are_done() {
        let mut t = FlowTable::new();
        let f1 = flow(&mut t, 1, 2);
        let f2 = flow(&mut t, 1, 1);
        assert_ne!(f1, f2);
        assert_eq!(t.active_side(f1, 2), Some(Side::Accept));
        assert_eq!(t.active_side(f1, 3), None);
        assert!(t.end(f1, Side::Accept, EndState::Deallocated).is_none());
        assert_eq!(t.active_side(f1, 2), None);
        let (touched, finished) = t.end_process(1, EndState::Dead);
        assert_eq!(touched.len(), 2);
        assert_eq!(
            finished.iter().map(|f| f.id).collect::<Vec<_>>(),
            [f1, f2],
            "a process at both ends finishes the flow alone"
        );
        assert!(t.list().flows.is_empty());
    }

    #[test]
    fn ids_rotate_and_skip_used_ones() {
        let mut t = FlowTable::new();
        t.last_id = MAX_FLOW_ID - 1;
        let a = flow(&mut t, 1, 2);
        assert_eq!(a, MAX_FLOW_ID);
        assert_eq!(t.free_id(), Some(1));
        let info = t.get(a).unwrap().info_for(Side::Accept);
        assert_eq!((info.n_pid, info.n_1_pid), (2, 1));
        assert_eq!((info.pool.as_str(), info.uid), ("p.pup.7", 7));
        assert_eq!((info.tx_ring, info.rx_ring), (a * 2 + 1, a * 2));
        assert_eq!(info.max_sdu, None);
        t.set_max_sdu(a, Some(1496));
        let f = t.get(a).unwrap();
        for side in [Side::Alloc, Side::Accept] {
            assert_eq!(f.info_for(side).max_sdu, Some(1496));
        }
    }

    #[test]
    fn active_peers_are_the_other_active_ends() {
        let mut t = FlowTable::new();
        let f = flow(&mut t, 1, 2);
        let peers = |t: &FlowTable, pid| -> Vec<(Side, u32)> {
            t.get(f)
                .unwrap()
                .active_peers_of(pid)
                .map(|(s, e)| (s, e.pid))
                .collect()
        };
        assert_eq!(peers(&t, 1), [(Side::Accept, 2)]);
        assert_eq!(peers(&t, 2), [(Side::Alloc, 1)]);
        assert!(t.end(f, Side::Accept, EndState::Deallocated).is_none());
        assert!(peers(&t, 1).is_empty(), "the other end is done");
        assert_eq!(peers(&t, 2), [(Side::Alloc, 1)]);
    }
}
