//! Helpers shared by the integration tests: two layers wired back to back, captured vectors.
#![allow(
    dead_code,
    unused_imports,
    reason = "each test binary uses a different subset"
)]

use o7s_proto::MacAddr;
use o7s_proto::eth_mgmt::QosSpec;
use o7s_xdp_ipcp::{Config, Event, Instant, Layer, QueryStart, RxAction};

pub const A: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
pub const B: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);

pub use o7s_proto::testing::{OPING_SRV_HASH, RAW_QOS, decode_hex, vector};

/// Which side sent a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// Two layers on one wire. Frames only move when [`Pair::pump`] is called.
pub struct Pair {
    pub a: Layer,
    pub b: Layer,
    pub now: Instant,
    /// Every frame moved by `pump`, with its sender, in order.
    pub wire: Vec<(Side, Vec<u8>)>,
}

impl Pair {
    pub fn new() -> Pair {
        Pair::with_configs(Config::new(A), Config::new(B))
    }

    pub fn with_configs(a: Config, b: Config) -> Pair {
        Pair {
            a: Layer::new(a).unwrap(),
            b: Layer::new(b).unwrap(),
            now: Instant::ZERO,
            wire: Vec::new(),
        }
    }

    /// Moves queued management frames across until both sides are quiet; returns how many.
    pub fn pump(&mut self) -> usize {
        let mut moved = 0;
        loop {
            let mut any = false;
            while let Some(t) = self.a.poll_transmit() {
                assert_eq!(&t.frame[..6], &t.dst.0, "Transmit.dst is the frame's dst");
                self.b.handle_rx(&t.frame, self.now);
                self.wire.push((Side::A, t.frame));
                any = true;
                moved += 1;
            }
            while let Some(t) = self.b.poll_transmit() {
                assert_eq!(&t.frame[..6], &t.dst.0, "Transmit.dst is the frame's dst");
                self.a.handle_rx(&t.frame, self.now);
                self.wire.push((Side::B, t.frame));
                any = true;
                moved += 1;
            }
            if !any {
                return moved;
            }
        }
    }

    /// Drains A's events.
    pub fn events_a(&mut self) -> Vec<Event> {
        core::iter::from_fn(|| self.a.poll_event()).collect()
    }

    /// Drains B's events.
    pub fn events_b(&mut self) -> Vec<Event> {
        core::iter::from_fn(|| self.b.poll_event()).collect()
    }

    /// B registers `hash`, A queries it; returns once A's directory has it.
    pub fn resolve(&mut self, hash: &[u8]) {
        self.b.register(hash).unwrap();
        if let QueryStart::Pending(id) = self.a.query(hash, self.now).unwrap() {
            self.pump();
            assert!(matches!(
                self.events_a().as_slice(),
                [Event::QueryResolved { id: got, mac: B, .. }] if *got == id
            ));
        }
        assert_eq!(self.a.directory().lookup(hash), Some(B));
    }

    /// Full allocation from A to B's `hash`; returns (A's eid, B's eid).
    pub fn allocate(&mut self, hash: &[u8], qos: QosSpec) -> (u16, u16) {
        self.resolve(hash);
        let ea = self.a.flow_alloc(hash, qos, b"oap-req").unwrap();
        self.pump();
        let [Event::FlowReqArrived { eid: eb, .. }] = self.events_b()[..] else {
            panic!("no FlowReqArrived");
        };
        self.b.flow_accept(eb, b"oap-resp").unwrap();
        self.pump();
        assert_eq!(
            self.events_a(),
            [Event::FlowAllocated {
                eid: ea,
                oap: b"oap-resp".to_vec()
            }]
        );
        (ea, eb)
    }
}

/// Builds a data frame from `from` whose header `from` writes for its flow `eid`.
pub fn data_frame(from: &mut Layer, eid: u16, sdu: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; 18 + sdu.len()];
    let header: &mut [u8; 18] = (&mut frame[..18]).try_into().unwrap();
    from.write_header(eid, sdu.len(), header).unwrap();
    frame[18..].copy_from_slice(sdu);
    frame
}

/// Asserts `frame` is delivered by `to` as data for `eid` carrying `sdu`.
#[track_caller]
pub fn assert_data(to: &mut Layer, frame: &[u8], eid: u16, sdu: &[u8]) {
    match to.classify_rx(frame) {
        RxAction::Data { eid: got, payload } => {
            assert_eq!(got, eid);
            assert_eq!(&frame[payload], sdu);
        }
        other => panic!("expected data for eid {eid}, got {other:?}"),
    }
}

pub fn oping_hash() -> Vec<u8> {
    decode_hex(OPING_SRV_HASH)
}
