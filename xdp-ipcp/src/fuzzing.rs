//! Fuzz oracle for [`Layer`], shared by the cargo-fuzz target `xdp-ipcp/fuzz` (`layer`) and the
//! property tests of `tests/fuzz.rs`. Not part of the API.
//!
//! [`layer`] sets up two layers, A and B, by a scripted exchange (names registered on both
//! sides, a resolved query, flows of B in every state: allocated, arrived, requested; or, in
//! the crowded variant, B's eids nearly all taken), then
//! reads the input as a script of operations on B: raw frames, frames with a well-formed DIX
//! header and arbitrary payload, management messages built from the input, data frames from A's
//! allocated flow, upper-layer calls (accept, refuse, dealloc, alloc, query, register) and the
//! passage of time. After every step it checks:
//!
//! * the call returned (no panic), and the frame's classification is consistent: a drop moves
//!   exactly its reason's counter by one and nothing else; data moves the data counter and
//!   the flow's packets and bytes and points inside the frame, after the header, on an
//!   allocated flow; a handled management frame moves no drop counter;
//! * the totals add up: frames fed = data delivered + management handled + drops;
//! * every frame B queues is a management frame from B's MAC to the destination it names, whose
//!   message parses; every event names a flow in the state it announces;
//! * the flow table stays in range (eids 64..4095, count = what iteration finds).

use std::sync::OnceLock;

use o7s_proto::MacAddr;
use o7s_proto::dix::{self, Frame, HEADER_LEN, MGMT_EID};
use o7s_proto::eth_mgmt::{MgmtMsg, QosSpec};

use crate::flows::{EID_END, EID_MIN, FlowState};
use crate::layer::{Config, DropReason, Event, Layer, QueryStart, RxAction, Stats};
use crate::time::Instant;

/// A's MAC.
pub const A: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
/// B's MAC (the layer under test).
pub const B: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);
/// Names registered at B.
pub const B_NAMES: [[u8; 32]; 2] = [[0x11; 32], [0x22; 32]];
/// The name registered at A (B resolves it during set-up).
pub const A_NAME: [u8; 32] = [0x33; 32];
/// Operations read from one input at most.
const MAX_OPS: usize = 512;

/// Reads the input front to back; past the end everything reads as zero.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn i32(&mut self) -> i32 {
        i32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    fn mac(&mut self) -> MacAddr {
        match self.u8() % 5 {
            0 => A,
            1 => B,
            2 => MacAddr::BROADCAST,
            3 => MacAddr([0x02, 0, 0, 0, 0, 0x0c]),
            _ => {
                let mut m = [0u8; 6];
                for byte in &mut m {
                    *byte = self.u8();
                }
                MacAddr(m)
            }
        }
    }

    /// An eid: 0, one of the set-up flows (and neighbours), or any value.
    fn eid(&mut self) -> u16 {
        match self.u8() % 4 {
            0 => MGMT_EID,
            1 | 2 => EID_MIN + u16::from(self.u8() % 8),
            _ => self.u16(),
        }
    }

    fn hash(&mut self) -> [u8; 32] {
        match self.u8() % 4 {
            0 => B_NAMES[0],
            1 => B_NAMES[1],
            2 => A_NAME,
            _ => [self.u8(); 32],
        }
    }
}

/// A frame with a well-formed header (length field `len`, true or not) and `payload`.
fn frame(
    dst: MacAddr,
    src: MacAddr,
    ethertype: u16,
    eid: u16,
    len: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = vec![0u8; HEADER_LEN + payload.len()];
    let mut header = [0u8; HEADER_LEN];
    dix::Repr {
        dst_addr: dst,
        src_addr: src,
        ethertype,
        eid,
        payload_len: len,
    }
    .emit_header(&mut header);
    f[..HEADER_LEN].copy_from_slice(&header);
    f[HEADER_LEN..].copy_from_slice(payload);
    f
}

/// The management message `msg` as a payload (empty if it cannot be emitted, which the
/// layer then sees as a runt management frame).
fn mgmt_payload(msg: &MgmtMsg<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; msg.buffer_len()];
    match msg.emit(&mut buf) {
        Ok(n) => {
            buf.truncate(n);
            buf
        }
        Err(_) => Vec::new(),
    }
}

/// Moves every queued frame of `from` into `to` (the set-up's wire).
fn pump(a: &mut Layer, b: &mut Layer, now: Instant) {
    loop {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            b.handle_rx(&t.frame, now);
            moved = true;
        }
        while let Some(t) = b.poll_transmit() {
            a.handle_rx(&t.frame, now);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

/// The scripted exchange. Afterwards B has flow 64 allocated (to A's 64), 65 arrived (from
/// A's 65) and 66 requested (to A, the FLOW_REQ never delivered); A has 64 allocated.
fn set_up() -> (Layer, Layer) {
    let (Ok(mut a), Ok(mut b)) = (Layer::new(Config::new(A)), Layer::new(Config::new(B))) else {
        unreachable!("the fixed configurations are valid");
    };
    let now = Instant::ZERO;
    let ok = b.register(&B_NAMES[0]).is_ok()
        && b.register(&B_NAMES[1]).is_ok()
        && a.register(&A_NAME).is_ok()
        && matches!(a.query(&B_NAMES[0], now), Ok(QueryStart::Pending(_)))
        && matches!(b.query(&A_NAME, now), Ok(QueryStart::Pending(_)));
    assert!(ok, "set-up: registration and queries");
    pump(&mut a, &mut b, now);
    assert_eq!(
        a.flow_alloc(&B_NAMES[0], QosSpec::default(), b"req"),
        Ok(64)
    );
    pump(&mut a, &mut b, now);
    assert_eq!(b.flow_accept(64, b"resp"), Ok(()));
    pump(&mut a, &mut b, now);
    assert_eq!(a.flow_alloc(&B_NAMES[0], QosSpec::default(), b""), Ok(65));
    pump(&mut a, &mut b, now);
    assert_eq!(b.flow_alloc(&A_NAME, QosSpec::default(), b""), Ok(66));
    // The FLOW_REQ is lost: 66 stays requested.
    while b.poll_transmit().is_some() {}
    while a.poll_event().is_some() {}
    while b.poll_event().is_some() {}
    let states = [64, 65, 66].map(|eid| b.flow(eid).map(|f| f.state));
    assert_eq!(
        states,
        [
            Some(FlowState::Allocated),
            Some(FlowState::Arrived),
            Some(FlowState::Requested)
        ],
        "set-up: B's flows"
    );
    (a, b)
}

/// A FLOW_REQ from A for B's second name (seid 100).
fn flow_req_frame() -> Vec<u8> {
    let msg = MgmtMsg::FlowReq {
        seid: 100,
        qos: QosSpec::default(),
        hash: &B_NAMES[1],
        oap: &[],
    };
    let payload = mgmt_payload(&msg);
    let field = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    frame(B, A, dix::DEFAULT_ETHERTYPE, MGMT_EID, field, &payload)
}

/// [`set_up`], then B accepts FLOW_REQs until only [`CROWDED_FREE`] eids are left (the arrived
/// flows stay arrived).
fn set_up_crowded() -> (Layer, Layer) {
    let (a, mut b) = set_up();
    let f = flow_req_frame();
    while usize::from(EID_END - EID_MIN) - b.flow_count() > CROWDED_FREE {
        let action = b.handle_rx(&f, Instant::ZERO);
        assert!(
            matches!(action, RxAction::Mgmt { .. }),
            "set-up: {action:?}"
        );
    }
    while b.poll_event().is_some() {}
    (a, b)
}

/// Eids left free by the crowded set-up.
pub const CROWDED_FREE: usize = 2;

/// Running totals of what B was fed and what it did with it.
#[derive(Debug, Default)]
struct Totals {
    fed: u64,
    data: u64,
    mgmt: u64,
    /// B's drops before the script (none so far, but the sum must not depend on it).
    base_drops: u64,
}

/// Feeds `frame` to `b` and checks the classification against the counters.
fn feed(b: &mut Layer, frame: &[u8], now: Instant, totals: &mut Totals) {
    let before = *b.stats();
    // The flow this frame names, if any, and its counters before.
    let named = Frame::new_checked(frame).ok().map(|v| v.eid());
    let flow_before = named.and_then(|eid| b.flow(eid).map(|f| f.stats));
    let action = b.handle_rx(frame, now);
    let after = *b.stats();
    totals.fed += 1;
    match &action {
        RxAction::Drop(reason) => {
            let r = *reason as usize;
            for (i, (x, y)) in before.drops.iter().zip(&after.drops).enumerate() {
                let want = if i == r { x + 1 } else { *x };
                assert_eq!(*y, want, "drop {reason:?}: counter {i} moved wrongly");
            }
            assert_eq!(after.data_rx, before.data_rx, "a drop counted as data");
            if matches!(reason, DropReason::NotAllocated | DropReason::WrongSource) {
                let eid = named.unwrap_or(MGMT_EID);
                let (Some(was), Some(now)) = (flow_before, b.flow(eid).map(|f| f.stats)) else {
                    panic!("{reason:?} for eid {eid}, which has no flow");
                };
                assert_eq!(now.rx_dropped, was.rx_dropped + 1, "per-flow drop");
            }
        }
        RxAction::Data { eid, payload } => {
            assert_eq!(after.drops, before.drops, "data moved a drop counter");
            assert_eq!(after.data_rx, before.data_rx + 1);
            assert!(payload.start == HEADER_LEN && payload.end <= frame.len());
            let Some(flow) = b.flow(*eid) else {
                panic!("data for eid {eid}, which has no flow");
            };
            assert_eq!(flow.state, FlowState::Allocated);
            let was = flow_before.unwrap_or_default();
            assert_eq!(flow.stats.rx_packets, was.rx_packets + 1);
            assert_eq!(flow.stats.rx_bytes, was.rx_bytes + payload.len() as u64);
            totals.data += 1;
        }
        RxAction::Mgmt { payload } => {
            assert_eq!(
                after.drops, before.drops,
                "handled management moved a drop counter"
            );
            assert!(payload.start == HEADER_LEN && payload.end <= frame.len());
            let handled: u64 =
                after.mgmt_rx.iter().sum::<u64>() - before.mgmt_rx.iter().sum::<u64>();
            assert_eq!(handled, 1, "one management message handled");
            totals.mgmt += 1;
        }
    }
    check(b, totals, false);
}

/// Invariants that hold between any two steps; drains B's output. The flow table scan
/// (4096 slots) is left to the upper-layer steps and the end of the script.
fn check(b: &mut Layer, totals: &Totals, scan_flows: bool) {
    let s = b.stats();
    assert_eq!(
        totals.fed,
        totals.data + totals.mgmt + s.dropped_total() - totals.base_drops,
        "frames fed = data + management + drops ({totals:?}, {s:?})"
    );
    while let Some(t) = b.poll_transmit() {
        let view = match Frame::new_checked(&t.frame[..]) {
            Ok(v) => v,
            Err(e) => panic!("B queued a malformed frame: {e}"),
        };
        assert_eq!(
            view.frame_len(),
            t.frame.len(),
            "no padding, no trailing bytes"
        );
        assert_eq!(view.eid(), MGMT_EID);
        assert_eq!(view.src_addr(), B);
        assert_eq!(view.dst_addr(), t.dst);
        assert_eq!(view.ethertype(), b.config().ethertype);
        if let Err(e) = MgmtMsg::parse_bytes(view.payload_ref(), b.config().hash_len) {
            panic!("B queued a management message that does not parse: {e}");
        }
    }
    while let Some(event) = b.poll_event() {
        let (eid, want) = match event {
            Event::FlowReqArrived { eid, .. } => (eid, Some(FlowState::Arrived)),
            Event::FlowAllocated { eid, .. } => (eid, Some(FlowState::Allocated)),
            Event::FlowAllocFailed { eid, .. } => (eid, None),
            Event::QueryResolved { .. } | Event::QueryTimedOut { .. } => continue,
        };
        assert_eq!(b.flow(eid).map(|f| f.state), want, "event for eid {eid}");
    }
    if !scan_flows {
        return;
    }
    let mut n = 0;
    for (eid, _) in b.flows() {
        assert!((EID_MIN..EID_END).contains(&eid), "eid {eid}");
        n += 1;
    }
    assert_eq!(n, b.flow_count());
}

/// The oracle: runs the script `data` against a set-up layer and panics if an invariant
/// breaks. Returns B's counters at the end (set-up included).
///
/// The first byte picks the set-up: odd, the crowded one (all but [`CROWDED_FREE`] eids of B
/// taken by arrived flows), else the plain one. The rest is the script.
pub fn layer(data: &[u8]) -> Stats {
    static PLAIN: OnceLock<(Layer, Layer)> = OnceLock::new();
    static CROWDED: OnceLock<(Layer, Layer)> = OnceLock::new();
    let mut input = Input { data };
    let (mut a, mut b) = if input.u8() % 2 == 1 {
        CROWDED.get_or_init(set_up_crowded).clone()
    } else {
        PLAIN.get_or_init(set_up).clone()
    };
    let mut now = Instant::from_millis(1);
    let mut totals = Totals {
        base_drops: b.stats().dropped_total(),
        ..Totals::default()
    };
    let ethertype = b.config().ethertype;
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 10 {
            // Raw bytes.
            0 => {
                let len = usize::from(input.u16() % 1600);
                let f = input.bytes(len).to_vec();
                feed(&mut b, &f, now, &mut totals);
            }
            // A well-formed header, arbitrary payload, a length field near the truth.
            1 | 2 => {
                let (dst, src) = (input.mac(), input.mac());
                let ethertype = if input.u8().is_multiple_of(8) {
                    input.u16()
                } else {
                    ethertype
                };
                let eid = input.eid();
                let len = usize::from(input.u8()) * 4;
                let payload = input.bytes(len).to_vec();
                let delta = i32::from(input.u8() % 7) - 3;
                let field = i32::try_from(payload.len()).unwrap_or(0) + delta;
                let field = u16::try_from(field.max(0)).unwrap_or(0);
                let f = frame(dst, src, ethertype, eid, field, &payload);
                feed(&mut b, &f, now, &mut totals);
            }
            // A management message built from the input, possibly cut or mutated.
            3 | 4 => {
                let src = if input.u8().is_multiple_of(4) {
                    input.mac()
                } else {
                    A
                };
                let dst = if input.u8().is_multiple_of(2) {
                    B
                } else {
                    MacAddr::BROADCAST
                };
                let hash = input.hash();
                let oap_len = usize::from(input.u8() % 64);
                let oap = input.bytes(oap_len).to_vec();
                let msg = match input.u8() % 4 {
                    0 => MgmtMsg::NameQueryReq { hash: &hash },
                    1 => MgmtMsg::NameQueryReply { hash: &hash },
                    2 => MgmtMsg::FlowReq {
                        seid: input.eid(),
                        qos: QosSpec::default(),
                        hash: &hash,
                        oap: &oap,
                    },
                    _ => MgmtMsg::FlowReply {
                        seid: input.eid(),
                        deid: input.eid(),
                        response: if input.u8().is_multiple_of(2) {
                            0
                        } else {
                            input.i32()
                        },
                        oap: &oap,
                    },
                };
                let mut payload = mgmt_payload(&msg);
                match input.u8() % 4 {
                    0 => {
                        let cut = usize::from(input.u8());
                        payload.truncate(payload.len().saturating_sub(cut));
                    }
                    1 => {
                        let at = usize::from(input.u16());
                        let x = input.u8();
                        let at = at % payload.len().max(1);
                        if let Some(byte) = payload.get_mut(at) {
                            *byte ^= x;
                        }
                    }
                    _ => {}
                }
                let field = u16::try_from(payload.len()).unwrap_or(u16::MAX);
                let f = frame(dst, src, ethertype, MGMT_EID, field, &payload);
                feed(&mut b, &f, now, &mut totals);
            }
            // Data from A's allocated flow, as A writes it.
            5 => {
                let len = usize::from(input.u16() % 1600);
                let sdu = input.bytes(len).to_vec();
                let mut header = [0u8; HEADER_LEN];
                if a.write_header(64, sdu.len(), &mut header).is_ok() {
                    let mut f = header.to_vec();
                    f.extend_from_slice(&sdu);
                    feed(&mut b, &f, now, &mut totals);
                }
            }
            // A few FLOW_REQs in a row: on the crowded set-up, the last free eids go and then
            // the NoEid path refuses.
            6 => {
                let f = flow_req_frame();
                for _ in 0..input.u8() % 16 {
                    feed(&mut b, &f, now, &mut totals);
                }
            }
            // Upper-layer calls on B; their errors are fine, their panics are not.
            7 | 8 => {
                let eid = input.eid();
                let hash = input.hash();
                let _ = match input.u8() % 7 {
                    0 => b.flow_accept(eid, b"ok").map(drop),
                    1 => b.flow_refuse(eid, input.i32(), b"").map(drop),
                    2 => b.flow_dealloc(eid).map(drop),
                    3 => b.flow_alloc(&hash, QosSpec::default(), b"").map(drop),
                    4 => b.query(&hash, now).map(drop),
                    5 => b.register(&hash).map(drop),
                    _ => {
                        b.unregister(&hash);
                        Ok(())
                    }
                };
                check(&mut b, &totals, true);
            }
            // Time passes.
            _ => {
                now = now + core::time::Duration::from_millis(u64::from(input.u16()));
                if b.poll_timeout().is_some_and(|t| t <= now) {
                    b.handle_timeout(now);
                }
                check(&mut b, &totals, true);
            }
        }
    }
    check(&mut b, &totals, true);
    *b.stats()
}
