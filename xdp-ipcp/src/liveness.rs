//! Flow liveness: keepalives and the peer timeout, as the reference's application library does
//! them, done here for every flow of the layer. Sans-IO: the caller passes `now` in and acts.
//!
//! A flow whose QoS `timeout` (ms) is not 0 must not stay silent: when nothing was sent on it
//! for more than `timeout / 4`, an empty SDU (a keepalive) goes out; when nothing was received
//! on it for more than `timeout`, the peer is gone (the application's receive ring gets
//! PEER_GONE). Both comparisons are strict, as the reference's. Receiving anything, a
//! keepalive included, counts as a sign of life; sending anything counts as activity. A flow
//! whose peer is gone stays so (no more keepalives, no second report). `timeout` 0: never
//! any action.
//!
//! [`Liveness`] is one flow's state; [`LivenessTable`] holds the flows of a layer by eid,
//! finds the due ones ([`LivenessTable::next_due`]) and says when to look next
//! ([`LivenessTable::next_deadline`]). Neither allocates.

use core::time::Duration;

use crate::flows::EID_END;
use crate::time::Instant;

/// How long after a keepalive that could not be sent (no pool block, backend full) the next
/// attempt is due: the reference's library retries on its next 5 ms tick.
pub const KEEPALIVE_RETRY: Duration = Duration::from_millis(5);

const ONE_MS: Duration = Duration::from_millis(1);

/// What a flow needs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing was sent for more than `timeout / 4`: send an empty SDU, then report it with
    /// [`Liveness::on_tx`] (or [`Liveness::keepalive_blocked`] if it could not go out).
    Keepalive,
    /// Nothing was received for more than `timeout`: the peer is gone. Reported once.
    PeerGone,
}

/// The liveness of one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    timeout_ms: u32,
    last_rx: Instant,
    last_tx: Instant,
    /// A keepalive could not be sent: the next attempt is due then, not a quarter later.
    retry_at: Option<Instant>,
    gone: bool,
}

impl Liveness {
    /// A flow allocated at `now` with QoS timeout `timeout_ms` (0: never checked).
    #[must_use]
    pub const fn new(timeout_ms: u32, now: Instant) -> Liveness {
        Liveness {
            timeout_ms,
            last_rx: now,
            last_tx: now,
            retry_at: None,
            gone: false,
        }
    }

    /// The flow's QoS timeout, ms (0: disabled).
    #[must_use]
    pub const fn timeout_ms(&self) -> u32 {
        self.timeout_ms
    }

    /// Whether the peer was declared gone ([`Action::PeerGone`] was returned).
    #[must_use]
    pub const fn is_gone(&self) -> bool {
        self.gone
    }

    /// When something was last received.
    #[must_use]
    pub const fn last_rx(&self) -> Instant {
        self.last_rx
    }

    /// When something was last sent.
    #[must_use]
    pub const fn last_tx(&self) -> Instant {
        self.last_tx
    }

    /// Something (data or a keepalive) arrived at `now`. An earlier `now` than one already
    /// seen changes nothing.
    pub fn on_rx(&mut self, now: Instant) {
        self.last_rx = self.last_rx.max(now);
    }

    /// Something (data or a keepalive) was sent at `now`.
    pub fn on_tx(&mut self, now: Instant) {
        self.last_tx = self.last_tx.max(now);
        self.retry_at = None;
    }

    /// The keepalive asked for could not be sent at `now`: try again [`KEEPALIVE_RETRY`] later.
    pub fn keepalive_blocked(&mut self, now: Instant) {
        self.retry_at = Some(now + KEEPALIVE_RETRY);
    }

    /// The first instant at which nothing was received for more than the timeout.
    fn gone_at(&self) -> Instant {
        self.last_rx + Duration::from_millis(self.timeout_ms.into()) + ONE_MS
    }

    /// The first instant at which nothing was sent for more than a quarter of the timeout
    /// (`4 * elapsed > timeout`), or the retry of a blocked keepalive.
    fn keepalive_at(&self) -> Instant {
        let due = self.last_tx + Duration::from_millis((self.timeout_ms / 4).into()) + ONE_MS;
        self.retry_at.map_or(due, |retry| due.max(retry))
    }

    /// When [`poll`](Self::poll) next has something to say; `None` for timeout 0 or a peer
    /// already gone. Exact: `poll` at an earlier instant returns `None`, at this one `Some`.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.timeout_ms == 0 || self.gone {
            return None;
        }
        Some(self.gone_at().min(self.keepalive_at()))
    }

    /// What the flow needs at `now`. [`Action::PeerGone`] wins over a keepalive and is
    /// returned once (the flow is then gone for good). [`Action::Keepalive`] is returned until
    /// the caller reports the send ([`on_tx`](Self::on_tx)) or its failure
    /// ([`keepalive_blocked`](Self::keepalive_blocked)).
    pub fn poll(&mut self, now: Instant) -> Option<Action> {
        if self.timeout_ms == 0 || self.gone {
            return None;
        }
        if now >= self.gone_at() {
            self.gone = true;
            return Some(Action::PeerGone);
        }
        (now >= self.keepalive_at()).then_some(Action::Keepalive)
    }
}

const WORDS: usize = EID_END as usize / 64;

/// The liveness of every flow of a layer, by eid (64..4095), with the earliest deadline kept
/// so that nothing is scanned until something may be due. Does not allocate after
/// [`LivenessTable::default`].
#[derive(Debug, Clone)]
pub struct LivenessTable {
    flows: Box<[Option<Liveness>]>,
    /// Which eids have an entry.
    active: [u64; WORDS],
    /// Never later than the next deadline of any entry (deadlines only move later, except
    /// by [`insert`](Self::insert) and [`keepalive_blocked`](Self::keepalive_blocked), which
    /// lower it); `None`: no entry has one.
    earliest: Option<Instant>,
    /// The next eid to look at while a scan is under way.
    scan: Option<usize>,
}

impl Default for LivenessTable {
    fn default() -> Self {
        LivenessTable {
            flows: vec![None; usize::from(EID_END)].into_boxed_slice(),
            active: [0; WORDS],
            earliest: None,
            scan: None,
        }
    }
}

impl LivenessTable {
    /// Starts watching flow `eid` (allocated at `now`, QoS timeout `timeout_ms`), replacing
    /// any entry it had. An eid of 4096 or more is ignored.
    pub fn insert(&mut self, eid: u16, timeout_ms: u32, now: Instant) {
        let Some(slot) = self.flows.get_mut(usize::from(eid)) else {
            return;
        };
        let live = Liveness::new(timeout_ms, now);
        *slot = Some(live);
        self.active[usize::from(eid / 64)] |= 1 << (eid % 64);
        self.lower_earliest(live.next_deadline());
    }

    /// Stops watching flow `eid`; returns its last state.
    pub fn remove(&mut self, eid: u16) -> Option<Liveness> {
        let live = self.flows.get_mut(usize::from(eid))?.take()?;
        self.active[usize::from(eid / 64)] &= !(1 << (eid % 64));
        Some(live)
    }

    /// The state of flow `eid`.
    #[must_use]
    pub fn get(&self, eid: u16) -> Option<&Liveness> {
        self.flows.get(usize::from(eid))?.as_ref()
    }

    /// Number of flows watched.
    #[must_use]
    pub fn len(&self) -> usize {
        self.active.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether no flow is watched.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.active.iter().all(|&w| w == 0)
    }

    /// Something arrived on flow `eid` at `now` (unknown eids are ignored).
    pub fn on_rx(&mut self, eid: u16, now: Instant) {
        if let Some(Some(live)) = self.flows.get_mut(usize::from(eid)) {
            live.on_rx(now);
        }
    }

    /// Something was sent on flow `eid` at `now` (unknown eids are ignored).
    pub fn on_tx(&mut self, eid: u16, now: Instant) {
        if let Some(Some(live)) = self.flows.get_mut(usize::from(eid)) {
            live.on_tx(now);
        }
    }

    /// The keepalive of flow `eid` could not be sent at `now`; see
    /// [`Liveness::keepalive_blocked`].
    pub fn keepalive_blocked(&mut self, eid: u16, now: Instant) {
        if let Some(Some(live)) = self.flows.get_mut(usize::from(eid)) {
            live.keepalive_blocked(now);
            let next = live.next_deadline();
            self.lower_earliest(next);
        }
    }

    fn lower_earliest(&mut self, deadline: Option<Instant>) {
        self.earliest = match (self.earliest, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// When [`next_due`](Self::next_due) may next return something: never later than the
    /// earliest deadline of any flow (it may be earlier after flows were removed or made
    /// progress; a call then finds nothing and moves it on). `None`: no flow has a deadline.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        self.earliest
    }

    /// The next flow that needs something at `now`, with what. Call until `None`; after each
    /// [`Action::Keepalive`], report the send ([`on_tx`](Self::on_tx)) or its failure
    /// ([`keepalive_blocked`](Self::keepalive_blocked)) before calling again. Looks at no flow
    /// while [`next_deadline`](Self::next_deadline) is later than `now`.
    pub fn next_due(&mut self, now: Instant) -> Option<(u16, Action)> {
        let mut eid = match self.scan {
            Some(eid) => eid,
            None if self.earliest.is_some_and(|t| t <= now) => 0,
            None => return None,
        };
        while eid < usize::from(EID_END) {
            let word = self.active[eid / 64] >> (eid % 64);
            if word == 0 {
                eid = (eid / 64 + 1) * 64;
                continue;
            }
            eid += word.trailing_zeros() as usize;
            let found = self.flows[eid].as_mut().and_then(|live| live.poll(now));
            eid += 1;
            if let Some(action) = found {
                self.scan = Some(eid);
                // eid - 1 < EID_END = 4096.
                return u16::try_from(eid - 1).ok().map(|e| (e, action));
            }
        }
        self.scan = None;
        self.earliest = self
            .flows
            .iter()
            .flatten()
            .filter_map(Liveness::next_deadline)
            .min();
        None
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn idle_flow_sends_keepalives_every_quarter_then_peer_gone() {
        let mut l = Liveness::new(400, at(1000));
        assert_eq!(l.next_deadline(), Some(at(1101)));
        assert_eq!(
            l.poll(at(1100)),
            None,
            "exactly timeout/4 is not more than it"
        );
        assert_eq!(l.poll(at(1101)), Some(Action::Keepalive));
        // Until reported, it stays due.
        assert_eq!(l.poll(at(1102)), Some(Action::Keepalive));
        l.on_tx(at(1102));
        assert_eq!(l.next_deadline(), Some(at(1203)));
        for t in [1203, 1304] {
            assert_eq!(l.poll(at(t - 1)), None);
            assert_eq!(l.poll(at(t)), Some(Action::Keepalive));
            l.on_tx(at(t));
        }
        // Nothing received since 1000: gone after 1400.
        assert_eq!(l.next_deadline(), Some(at(1401)));
        assert_eq!(l.poll(at(1400)), None);
        assert_eq!(l.poll(at(1401)), Some(Action::PeerGone));
        assert!(l.is_gone());
        assert_eq!(l.poll(at(5000)), None);
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    fn reception_keeps_the_peer_alive() {
        let mut l = Liveness::new(400, at(0));
        for t in (100..3000).step_by(100) {
            l.on_rx(at(t));
            l.on_tx(at(t));
            assert_eq!(l.poll(at(t + 50)), None);
        }
        assert!(!l.is_gone());
        // An old timestamp does not move it back.
        l.on_rx(at(10));
        assert_eq!(l.last_rx(), at(2900));
    }

    #[test]
    fn gone_wins_over_keepalive() {
        let mut l = Liveness::new(400, at(0));
        assert_eq!(l.poll(at(10_000)), Some(Action::PeerGone));
        assert_eq!(l.poll(at(10_000)), None);
    }

    #[test]
    fn timeout_zero_never_acts() {
        let mut l = Liveness::new(0, at(0));
        assert_eq!(l.next_deadline(), None);
        assert_eq!(l.poll(at(u64::MAX)), None);
        let mut t = LivenessTable::default();
        t.insert(64, 0, at(0));
        assert_eq!(t.next_deadline(), None);
        assert_eq!(t.next_due(at(u64::MAX)), None);
    }

    #[test]
    fn blocked_keepalive_is_retried_after_5_ms() {
        let mut l = Liveness::new(400, at(0));
        assert_eq!(l.poll(at(101)), Some(Action::Keepalive));
        l.keepalive_blocked(at(101));
        assert_eq!(l.next_deadline(), Some(at(106)));
        assert_eq!(l.poll(at(105)), None);
        assert_eq!(l.poll(at(106)), Some(Action::Keepalive));
        l.on_tx(at(106));
        assert_eq!(l.next_deadline(), Some(at(207)));
    }

    #[test]
    fn tiny_timeouts() {
        // timeout/4 rounds down to 0: a keepalive whenever a whole ms passed.
        let mut l = Liveness::new(3, at(0));
        assert_eq!(l.poll(at(0)), None);
        assert_eq!(l.poll(at(1)), Some(Action::Keepalive));
        l.on_tx(at(1));
        l.on_rx(at(1));
        assert_eq!(l.poll(at(4)), Some(Action::Keepalive));
        assert_eq!(l.poll(at(5)), Some(Action::PeerGone));
        // The largest timeout does not overflow.
        let l = Liveness::new(u32::MAX, at(u64::MAX - 10));
        assert_eq!(l.next_deadline(), Some(at(u64::MAX)));
    }

    #[test]
    fn table_finds_due_flows_and_keeps_the_earliest_deadline() {
        let mut t = LivenessTable::default();
        assert!(t.is_empty());
        t.insert(64, 400, at(0));
        t.insert(130, 800, at(0));
        t.insert(4095, 0, at(0));
        t.insert(4096, 400, at(0)); // ignored
        assert_eq!(t.len(), 3);
        assert_eq!(t.next_deadline(), Some(at(101)));
        assert_eq!(t.next_due(at(100)), None);
        assert_eq!(t.next_due(at(101)), Some((64, Action::Keepalive)));
        t.on_tx(64, at(101));
        assert_eq!(t.next_due(at(101)), None);
        assert_eq!(t.next_deadline(), Some(at(201)), "130's keepalive");
        assert_eq!(t.next_due(at(201)), Some((130, Action::Keepalive)));
        t.keepalive_blocked(130, at(201));
        assert_eq!(t.next_due(at(201)), None);
        assert_eq!(
            t.next_deadline(),
            Some(at(202)),
            "64 at 202, 130's retry at 206"
        );
        assert_eq!(t.next_due(at(206)), Some((64, Action::Keepalive)));
        t.on_tx(64, at(206));
        assert_eq!(t.next_due(at(206)), Some((130, Action::Keepalive)));
        t.on_tx(130, at(206));
        assert_eq!(t.next_due(at(206)), None);
        // 64 hears nothing: gone after 400 ms; 130 hears its peer.
        t.on_rx(130, at(300));
        let mut seen = Vec::new();
        let mut now = 206;
        while now < 1000 {
            now += 1;
            while let Some((eid, action)) = t.next_due(at(now)) {
                if action == Action::Keepalive {
                    t.on_tx(eid, at(now));
                }
                seen.push((now, eid, action));
            }
        }
        assert_eq!(
            seen,
            [
                (307, 64, Action::Keepalive),
                (401, 64, Action::PeerGone),
                (407, 130, Action::Keepalive),
                (608, 130, Action::Keepalive),
                (809, 130, Action::Keepalive),
            ]
        );
        assert!(t.get(64).is_some_and(Liveness::is_gone));
        assert!(!t.get(130).is_some_and(Liveness::is_gone));
        assert_eq!(t.remove(64).map(|l| l.is_gone()), Some(true));
        assert_eq!(t.remove(64), None);
        assert_eq!(t.len(), 2);
    }

    /// One step of a random run.
    #[derive(Debug, Clone)]
    enum Step {
        /// Time passes, ms.
        Wait(u16),
        /// A frame arrives.
        Rx,
        /// The application sends an SDU.
        Tx,
        /// The next keepalive cannot be sent.
        Block,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u16..300).prop_map(Step::Wait),
            2 => Just(Step::Rx),
            2 => Just(Step::Tx),
            1 => Just(Step::Block),
        ]
    }

    proptest! {
        /// Against a model: a keepalive only after more than timeout/4 without a send (and at
        /// least that far apart), the peer gone only after more than timeout without a
        /// reception, reported once, and then nothing more: never both alive and gone;
        /// `next_deadline` is exact; timeout 0 never acts.
        #[test]
        fn liveness_model(
            timeout in prop_oneof![Just(0u32), 1u32..2000],
            steps in proptest::collection::vec(step(), 1..200),
        ) {
            let mut l = Liveness::new(timeout, at(0));
            let (mut now, mut last_rx, mut last_tx) = (0u64, 0u64, 0u64);
            let mut last_keepalive: Option<u64> = None;
            let mut gone_at: Option<u64> = None;
            let mut block_next = false;
            for s in steps {
                match s {
                    Step::Wait(ms) => {
                        // Every ms, acting on what is due as the IPCP would.
                        for _ in 0..ms {
                            now += 1;
                            let deadline = l.next_deadline();
                            let action = l.poll(at(now));
                            prop_assert_eq!(
                                action.is_some(),
                                deadline.is_some_and(|d| d <= at(now))
                            );
                            match action {
                                None => {}
                                Some(Action::PeerGone) => {
                                    prop_assert!(timeout > 0);
                                    prop_assert!(gone_at.is_none());
                                    prop_assert!(now - last_rx > u64::from(timeout));
                                    gone_at = Some(now);
                                }
                                Some(Action::Keepalive) => {
                                    prop_assert!(timeout > 0);
                                    prop_assert!(gone_at.is_none(), "a keepalive for a gone peer");
                                    prop_assert!(now - last_rx <= u64::from(timeout));
                                    prop_assert!(4 * (now - last_tx) > u64::from(timeout));
                                    if let Some(k) = last_keepalive {
                                        prop_assert!(4 * (now - k) > u64::from(timeout));
                                    }
                                    if block_next {
                                        block_next = false;
                                        l.keepalive_blocked(at(now));
                                    } else {
                                        l.on_tx(at(now));
                                        last_tx = now;
                                        last_keepalive = Some(now);
                                    }
                                }
                            }
                            prop_assert_eq!(l.is_gone(), gone_at.is_some());
                            if timeout > 0 && gone_at.is_none() {
                                // Alive: the peer spoke within the timeout.
                                prop_assert!(now - last_rx <= u64::from(timeout));
                            }
                        }
                    }
                    Step::Rx => {
                        l.on_rx(at(now));
                        last_rx = now;
                    }
                    Step::Tx => {
                        l.on_tx(at(now));
                        last_tx = now;
                    }
                    Step::Block => block_next = true,
                }
            }
            if timeout == 0 {
                prop_assert!(last_keepalive.is_none() && gone_at.is_none());
                prop_assert_eq!(l.next_deadline(), None);
            }
        }

        /// The table reports exactly what each flow's own state would, however the flows'
        /// deadlines interleave, and looks at nothing before its deadline.
        #[test]
        fn table_matches_flows(
            flows in proptest::collection::vec(
                (64u16..300, prop_oneof![Just(0u32), 1u32..1000]),
                1..12,
            ),
            steps in proptest::collection::vec((0usize..12, step()), 1..150),
        ) {
            let mut table = LivenessTable::default();
            let mut model = std::collections::BTreeMap::new();
            for &(eid, timeout) in &flows {
                table.insert(eid, timeout, at(0));
                model.insert(eid, Liveness::new(timeout, at(0)));
            }
            let eids: Vec<u16> = model.keys().copied().collect();
            let mut now = 0u64;
            for (i, s) in steps {
                let eid = eids[i % eids.len()];
                match s {
                    Step::Wait(ms) => {
                        for _ in 0..ms {
                            now += 1;
                            let expected: Vec<(u16, Action)> = model
                                .iter_mut()
                                .filter_map(|(&e, l)| l.poll(at(now)).map(|a| (e, a)))
                                .collect();
                            if table.next_deadline().is_none_or(|d| d > at(now)) {
                                prop_assert!(expected.is_empty());
                            }
                            let mut got = Vec::new();
                            while let Some((e, a)) = table.next_due(at(now)) {
                                if a == Action::Keepalive {
                                    table.on_tx(e, at(now));
                                }
                                got.push((e, a));
                            }
                            for (e, _) in expected.iter().filter(|(_, a)| *a == Action::Keepalive) {
                                model.entry(*e).and_modify(|l| l.on_tx(at(now)));
                            }
                            // The model is ordered by eid, as the table's scan.
                            prop_assert_eq!(got, expected);
                        }
                    }
                    Step::Rx => {
                        table.on_rx(eid, at(now));
                        model.entry(eid).and_modify(|l| l.on_rx(at(now)));
                    }
                    Step::Tx => {
                        table.on_tx(eid, at(now));
                        model.entry(eid).and_modify(|l| l.on_tx(at(now)));
                    }
                    Step::Block => {
                        table.keepalive_blocked(eid, at(now));
                        model.entry(eid).and_modify(|l| l.keepalive_blocked(at(now)));
                    }
                }
                for (&e, l) in &model {
                    prop_assert_eq!(table.get(e), Some(l));
                }
            }
        }
    }
}
