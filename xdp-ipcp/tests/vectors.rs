//! The layer against the reference's captured exchanges (proto/tests/vectors): every
//! management frame our layer emits equals the captured one byte for byte when it is given the
//! same inputs, and every captured data frame is classified and re-created exactly.
//!
//! What legitimately differs in real runs is only what the upper layer supplies: the OAP bytes
//! (request id, timestamp, and the responder's request hash) are fed in from the capture here.
//! MACs are configuration. The reference sends unused management fields from uninitialised
//! memory; in the capture they are zero, as we emit them.

mod util;

use o7s_proto::dix::{Frame, HEADER_LEN};
use o7s_proto::eth_mgmt::{MgmtMsg, QosSpec};
use o7s_xdp_ipcp::{Event, QueryStart, RxAction};
use util::{A, B, Pair, RAW_QOS, Side, assert_data, data_frame, oping_hash, vector};

/// The OAP bytes of a captured FLOW_REQ or FLOW_REPLY.
fn oap_of(name: &str) -> Vec<u8> {
    let bytes = vector(name);
    let frame = Frame::new_checked(&bytes[..]).unwrap();
    match MgmtMsg::parse_bytes(frame.payload(), 32).unwrap() {
        MgmtMsg::FlowReq { oap, .. } | MgmtMsg::FlowReply { oap, .. } => oap.to_vec(),
        other => panic!("{name}: {other:?}"),
    }
}

#[track_caller]
fn assert_frame(got: &[u8], name: &str) {
    assert_eq!(got, vector(name), "{name} differs");
}

/// Runs query (if needed), FLOW_REQ and FLOW_REPLY against the capture; returns the eids.
fn allocation(p: &mut Pair, qos: QosSpec, req: &str, reply: &str) -> (u16, u16) {
    let hash = oping_hash();
    let ea = p.a.flow_alloc(&hash, qos, &oap_of(req)).unwrap();
    let t = p.a.poll_transmit().unwrap();
    assert_eq!(t.dst, B);
    assert_frame(&t.frame, req);
    assert!(matches!(
        p.b.handle_rx(&t.frame, p.now),
        RxAction::Mgmt { .. }
    ));
    let [
        Event::FlowReqArrived {
            eid: eb,
            ref oap,
            qos: got_qos,
            remote,
            ..
        },
    ] = p.events_b()[..]
    else {
        panic!("no FlowReqArrived")
    };
    assert_eq!((oap, got_qos, remote), (&oap_of(req), qos, A));
    p.b.flow_accept(eb, &oap_of(reply)).unwrap();
    let t = p.b.poll_transmit().unwrap();
    assert_eq!(t.dst, A);
    assert_frame(&t.frame, reply);
    p.a.handle_rx(&t.frame, p.now);
    assert_eq!(
        p.events_a(),
        [Event::FlowAllocated {
            eid: ea,
            oap: oap_of(reply)
        }]
    );
    (ea, eb)
}

/// Checks captured data frames alternating A->B, B->A: the receiver classifies them to its
/// eid, and the sender's header for the same SDU is the captured one.
fn data(p: &mut Pair, names: &[&str], (ea, eb): (u16, u16)) {
    for (i, name) in names.iter().enumerate() {
        let bytes = vector(name);
        let sdu = &bytes[HEADER_LEN..];
        let side = if i % 2 == 0 { Side::A } else { Side::B };
        let (from, to, to_eid, from_eid) = match side {
            Side::A => (&mut p.a, &mut p.b, eb, ea),
            Side::B => (&mut p.b, &mut p.a, ea, eb),
        };
        assert_data(to, &bytes, to_eid, sdu);
        assert_frame(&data_frame(from, from_eid, sdu), name);
    }
}

#[test]
fn reference_exchange_byte_for_byte() {
    let mut p = Pair::new();
    let hash = oping_hash();
    p.b.register(&hash).unwrap();

    // Name query (frame 5) and reply (frame 6).
    let QueryStart::Pending(_) = p.a.query(&hash, p.now).unwrap() else {
        panic!()
    };
    let t = p.a.poll_transmit().unwrap();
    assert_frame(&t.frame, "alloc-05");
    p.b.handle_rx(&t.frame, p.now);
    let t = p.b.poll_transmit().unwrap();
    assert_frame(&t.frame, "alloc-06");
    p.a.handle_rx(&t.frame, p.now);
    assert!(matches!(
        p.events_a()[..],
        [Event::QueryResolved { mac: B, .. }]
    ));

    // oping with raw QoS: both sides' first eid is 64, as the reference's first fd.
    let eids = allocation(&mut p, RAW_QOS, "alloc-07", "alloc-08");
    assert_eq!(eids, (64, 64));
    data(
        &mut p,
        &[
            "alloc-09", "alloc-10", "alloc-11", "alloc-12", "alloc-13", "alloc-14", "alloc-15",
            "alloc-16", "alloc-17", "alloc-18",
        ],
        eids,
    );

    // oping -q best: in the capture A's fd is 64 again and B's is 65. Reproduce that state:
    // A deallocated its flow (local only), B has not yet.
    p.a.flow_dealloc(64).unwrap();
    let best = QosSpec {
        in_order: 1,
        ..RAW_QOS
    };
    let eids = allocation(&mut p, best, "qos-best-01", "qos-best-02");
    assert_eq!(eids, (64, 65));
    data(
        &mut p,
        &[
            "qos-best-03",
            "qos-best-04",
            "qos-best-05",
            "qos-best-06",
            "qos-best-07",
            "qos-best-08",
        ],
        eids,
    );
    data(&mut p, &["qos-best-11", "qos-best-12", "qos-best-13"], eids);
    assert_eq!(p.a.stats().dropped_total() + p.b.stats().dropped_total(), 0);
}
