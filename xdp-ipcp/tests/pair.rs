//! Two layers back to back in memory: name queries, flow allocation, data classification,
//! malformed frames and the MTU check.

mod util;

use core::time::Duration;

use o7s_proto::MacAddr;
use o7s_proto::dix::{self, HEADER_LEN};
use o7s_proto::eth_mgmt::{self, MgmtMsg, QosSpec};
use o7s_xdp_ipcp::{
    Config, DropReason, Error, Event, FlowState, Instant, Layer, QUERY_TIMEOUT, QueryStart,
    RxAction,
};
use util::{A, B, Pair, RAW_QOS, assert_data, data_frame};

const H1: [u8; 32] = [0x11; 32];
const H2: [u8; 32] = [0x22; 32];
const C: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0c]);

/// A management frame from `src` to `dst` carrying `payload`.
fn mgmt_frame(src: MacAddr, dst: MacAddr, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; HEADER_LEN + payload.len()];
    f[HEADER_LEN..].copy_from_slice(payload);
    dix::Repr {
        dst_addr: dst,
        src_addr: src,
        ethertype: dix::DEFAULT_ETHERTYPE,
        eid: 0,
        payload_len: u16::try_from(payload.len()).unwrap(),
    }
    .emit(&mut f)
    .unwrap();
    f
}

fn msg_bytes(msg: &MgmtMsg<'_>) -> Vec<u8> {
    let mut v = vec![0u8; msg.buffer_len()];
    msg.emit(&mut v).unwrap();
    v
}

#[test]
fn name_query_and_reply() {
    let mut p = Pair::new();
    p.b.register(&H1).unwrap();
    assert!(!p.b.register(&H1).unwrap(), "register is idempotent");
    let QueryStart::Pending(id) = p.a.query(&H1, p.now).unwrap() else {
        panic!("directory should be empty");
    };
    assert_eq!(p.a.poll_timeout(), Some(Instant::ZERO + QUERY_TIMEOUT));
    assert_eq!(p.pump(), 2);
    // The request went to broadcast, the reply to A.
    assert_eq!(&p.wire[0].1[..6], &MacAddr::BROADCAST.0);
    assert_eq!(&p.wire[1].1[..6], &A.0);
    assert_eq!(
        p.events_a(),
        [Event::QueryResolved {
            id,
            hash: H1.to_vec(),
            mac: B
        }]
    );
    assert_eq!(p.a.poll_timeout(), None);
    assert_eq!(p.a.query(&H1, p.now).unwrap(), QueryStart::Resolved(B));
    assert!(p.a.poll_transmit().is_none(), "cached: nothing sent");
    assert_eq!(p.a.stats().mgmt_tx, [0, 0, 1, 0]);
    assert_eq!(p.b.stats().mgmt_rx, [0, 0, 1, 0]);
    assert_eq!(p.b.stats().mgmt_tx, [0, 0, 0, 1]);
    assert_eq!(p.a.stats().mgmt_rx, [0, 0, 0, 1]);
    assert_eq!(p.a.stats().dropped_total() + p.b.stats().dropped_total(), 0);
    // Unregister of an unknown hash is fine.
    assert!(!p.b.unregister(&H2));
    assert!(p.b.unregister(&H1));
}

#[test]
fn query_times_out_after_2000_ms() {
    let mut p = Pair::new();
    p.now = Instant::from_millis(5000);
    let QueryStart::Pending(id) = p.a.query(&H1, p.now).unwrap() else {
        panic!()
    };
    p.pump();
    assert_eq!(p.b.stats().dropped(DropReason::UnregisteredName), 1);
    let deadline = Instant::from_millis(7000);
    assert_eq!(p.a.poll_timeout(), Some(deadline));
    p.a.handle_timeout(Instant::from_millis(6999));
    assert!(p.events_a().is_empty());
    p.a.handle_timeout(deadline);
    assert_eq!(
        p.events_a(),
        [Event::QueryTimedOut {
            id,
            hash: H1.to_vec()
        }]
    );
    assert_eq!(p.a.poll_timeout(), None);
    assert_eq!(p.a.pending_queries(), 0);
}

#[test]
fn late_reply_still_fills_the_directory() {
    let mut p = Pair::new();
    p.b.register(&H1).unwrap();
    p.a.query(&H1, p.now).unwrap();
    let req = p.a.poll_transmit().unwrap();
    p.a.handle_timeout(p.now + Duration::from_secs(3));
    assert!(matches!(p.events_a()[..], [Event::QueryTimedOut { .. }]));
    p.b.handle_rx(&req.frame, p.now);
    p.pump();
    assert!(p.events_a().is_empty(), "no query left to complete");
    assert_eq!(p.a.directory().lookup(&H1), Some(B));
}

#[test]
fn directory_refuses_identical_pairs_and_prefers_newest() {
    let mut p = Pair::new();
    p.resolve(&H1);
    p.resolve(&H1); // cached: nothing sent
    let reply = mgmt_frame(B, A, &msg_bytes(&MgmtMsg::NameQueryReply { hash: &H1 }));
    p.a.handle_rx(&reply, p.now);
    assert_eq!(p.a.directory().len(), 1, "identical pair refused");
    let reply = mgmt_frame(C, A, &msg_bytes(&MgmtMsg::NameQueryReply { hash: &H1 }));
    p.a.handle_rx(&reply, p.now);
    assert_eq!(p.a.directory().len(), 2);
    assert_eq!(p.a.directory().lookup(&H1), Some(C));
}

#[test]
fn flow_request_accept_and_data() {
    let mut p = Pair::new();
    p.resolve(&H1);
    let ea = p.a.flow_alloc(&H1, RAW_QOS, b"req").unwrap();
    assert_eq!(ea, 64, "first eid is 64, as the reference's first fd");
    assert_eq!(p.a.flow(ea).unwrap().state, FlowState::Requested);
    p.pump();
    assert_eq!(
        p.events_b(),
        [Event::FlowReqArrived {
            eid: 64,
            hash: H1.to_vec(),
            qos: RAW_QOS,
            oap: b"req".to_vec(),
            remote: A
        }]
    );
    assert_eq!(p.b.flow(64).unwrap().state, FlowState::Arrived);
    assert_eq!(p.b.flow(64).unwrap().remote_eid, 64);
    p.b.flow_accept(64, b"resp").unwrap();
    assert_eq!(p.b.flow(64).unwrap().state, FlowState::Allocated);
    p.pump();
    assert_eq!(
        p.events_a(),
        [Event::FlowAllocated {
            eid: 64,
            oap: b"resp".to_vec()
        }]
    );
    let fa = p.a.flow(64).unwrap();
    assert_eq!(
        (fa.state, fa.remote_mac, fa.remote_eid),
        (FlowState::Allocated, B, 64)
    );

    // Data both ways.
    let f = data_frame(&mut p.a, 64, b"hello");
    assert_eq!(&f[..6], &B.0);
    assert_data(&mut p.b, &f, 64, b"hello");
    let f = data_frame(&mut p.b, 64, b"world!");
    assert_data(&mut p.a, &f, 64, b"world!");
    assert_eq!(p.a.flow(64).unwrap().stats.tx_bytes, 5);
    assert_eq!(p.a.flow(64).unwrap().stats.rx_bytes, 6);
    assert_eq!(p.b.flow(64).unwrap().stats.rx_packets, 1);
    assert_eq!(p.b.stats().data_rx, 1);
    assert_eq!(p.b.stats().data_tx, 1);

    // An empty SDU is a valid data frame.
    let f = data_frame(&mut p.a, 64, b"");
    assert_data(&mut p.b, &f, 64, b"");
}

#[test]
fn eids_are_per_side_and_reused_after_dealloc() {
    let mut p = Pair::new();
    assert_eq!(p.allocate(&H1, RAW_QOS), (64, 64));
    assert_eq!(p.allocate(&H1, RAW_QOS), (65, 65));
    p.a.flow_dealloc(64).unwrap();
    assert_eq!(p.a.flow_dealloc(64), Err(Error::UnknownEid(64)));
    assert!(p.a.poll_transmit().is_none(), "dealloc sends nothing");
    // A reuses 64, B (which still has 64) hands out 66.
    assert_eq!(p.allocate(&H1, RAW_QOS), (64, 66));
    // B's old flow 64 now points at A's 64, which A gave to another flow: the reference has
    // the same hazard, since dealloc is local only.
    let f = data_frame(&mut p.b, 66, b"x");
    assert_data(&mut p.a, &f, 64, b"x");
    assert_eq!(p.a.flow_count(), 2);
}

#[test]
fn refusal_frees_both_eids() {
    let mut p = Pair::new();
    p.resolve(&H1);
    let ea = p.a.flow_alloc(&H1, QosSpec::default(), b"req").unwrap();
    p.pump();
    let [Event::FlowReqArrived { eid: eb, .. }] = p.events_b()[..] else {
        panic!()
    };
    p.b.flow_refuse(eb, -13, b"no").unwrap();
    assert!(p.b.flow(eb).is_none());
    p.pump();
    assert_eq!(
        p.events_a(),
        [Event::FlowAllocFailed {
            eid: ea,
            response: -13,
            oap: b"no".to_vec()
        }]
    );
    assert!(p.a.flow(ea).is_none());
    assert_eq!(p.allocate(&H1, RAW_QOS), (64, 64));

    // A refusal with response 0 is sent as -1, never as success.
    let ea = p.a.flow_alloc(&H1, RAW_QOS, b"").unwrap();
    p.pump();
    let [Event::FlowReqArrived { eid: eb, .. }] = p.events_b()[..] else {
        panic!()
    };
    p.b.flow_refuse(eb, 0, b"").unwrap();
    p.pump();
    assert!(matches!(
        p.events_a()[..],
        [Event::FlowAllocFailed { eid, response: -1, .. }] if eid == ea
    ));
}

#[test]
fn request_side_errors() {
    let mut p = Pair::new();
    assert_eq!(p.a.flow_alloc(&H1, RAW_QOS, b""), Err(Error::NotResolved));
    assert_eq!(
        p.a.flow_alloc(&H1[..31], RAW_QOS, b""),
        Err(Error::HashLen {
            len: 31,
            expected: 32
        })
    );
    assert!(matches!(
        p.a.query(&[0; 64], p.now),
        Err(Error::HashLen { .. })
    ));
    assert!(matches!(p.a.register(&[0; 28]), Err(Error::HashLen { .. })));
    p.resolve(&H1);
    // An OAP part that cannot fit one management frame (MTU 1500 -> 1496 bytes).
    let big = vec![0u8; 1496 - 39 - 32 + 1];
    assert_eq!(
        p.a.flow_alloc(&H1, RAW_QOS, &big),
        Err(Error::MgmtTooLong {
            len: 1497,
            max: 1496
        })
    );
    assert_eq!(p.a.flow_count(), 0, "no eid leaked");
    assert!(p.a.flow_alloc(&H1, RAW_QOS, &big[1..]).is_ok());
    // accept/refuse need an arrived flow.
    assert_eq!(
        p.a.flow_accept(64, b""),
        Err(Error::WrongState {
            eid: 64,
            state: FlowState::Requested,
            needed: FlowState::Arrived
        })
    );
    assert_eq!(p.a.flow_refuse(99, -1, b""), Err(Error::UnknownEid(99)));
    let mut hdr = [0u8; 18];
    assert!(matches!(
        p.a.write_header(64, 10, &mut hdr),
        Err(Error::WrongState { .. })
    ));
    assert_eq!(
        p.a.write_header(70, 10, &mut hdr),
        Err(Error::UnknownEid(70))
    );
}

#[test]
fn flow_req_for_unregistered_name_is_ignored() {
    let mut p = Pair::new();
    p.resolve(&H1);
    p.b.unregister(&H1);
    p.a.flow_alloc(&H1, RAW_QOS, b"").unwrap();
    p.pump();
    assert!(p.events_b().is_empty());
    assert_eq!(p.b.stats().dropped(DropReason::UnregisteredName), 1);
    assert_eq!(p.b.flow_count(), 0);
}

#[test]
fn unexpected_replies_are_dropped() {
    let mut p = Pair::new();
    p.resolve(&H1);
    let ea = p.a.flow_alloc(&H1, RAW_QOS, b"").unwrap();
    p.a.poll_transmit().unwrap();
    let reply = |seid, deid, response| {
        msg_bytes(&MgmtMsg::FlowReply {
            seid,
            deid,
            response,
            oap: &[],
        })
    };
    // For an eid with no flow.
    let f = mgmt_frame(B, A, &reply(64, 99, 0));
    assert_eq!(
        p.a.handle_rx(&f, p.now),
        RxAction::Drop(DropReason::UnexpectedReply)
    );
    // From another MAC than the one the request went to.
    let f = mgmt_frame(C, A, &reply(64, ea, 0));
    assert_eq!(
        p.a.handle_rx(&f, p.now),
        RxAction::Drop(DropReason::UnexpectedReply)
    );
    // Responder eid 0 (the management eid) on success.
    let f = mgmt_frame(B, A, &reply(0, ea, 0));
    assert_eq!(
        p.a.handle_rx(&f, p.now),
        RxAction::Drop(DropReason::BadEndpoint)
    );
    assert_eq!(p.a.flow(ea).unwrap().state, FlowState::Requested);
    // The real one, then a duplicate.
    let f = mgmt_frame(B, A, &reply(70, ea, 0));
    assert!(matches!(p.a.handle_rx(&f, p.now), RxAction::Mgmt { .. }));
    assert_eq!(
        p.a.handle_rx(&f, p.now),
        RxAction::Drop(DropReason::UnexpectedReply)
    );
    assert_eq!(p.a.flow(ea).unwrap().remote_eid, 70);
    assert_eq!(p.a.stats().dropped(DropReason::UnexpectedReply), 3);
    // A FLOW_REQ with seid 0 is refused.
    p.a.register(&H2).unwrap();
    let req = msg_bytes(&MgmtMsg::FlowReq {
        seid: 0,
        qos: RAW_QOS,
        hash: &H2,
        oap: &[],
    });
    let f = mgmt_frame(B, A, &req);
    assert_eq!(
        p.a.handle_rx(&f, p.now),
        RxAction::Drop(DropReason::BadEndpoint)
    );
    assert!(p.events_a().len() == 1, "only the FlowAllocated event");
}

#[test]
fn data_for_unknown_and_unallocated_eids() {
    let mut p = Pair::new();
    let (ea, eb) = p.allocate(&H1, RAW_QOS);
    let good = data_frame(&mut p.a, ea, b"data");
    assert_data(&mut p.b, &good, eb, b"data");

    let with = |eid: u16, src: MacAddr, dst: MacAddr, ethertype: u16| {
        let mut f = good.clone();
        dix::Repr {
            dst_addr: dst,
            src_addr: src,
            ethertype,
            eid,
            payload_len: 4,
        }
        .emit(&mut f)
        .unwrap();
        f
    };
    let e = dix::DEFAULT_ETHERTYPE;
    for (frame, reason) in [
        (with(65, A, B, e), DropReason::UnknownEid),
        (with(63, A, B, e), DropReason::UnknownEid),
        (with(4096, A, B, e), DropReason::UnknownEid),
        (with(u16::MAX, A, B, e), DropReason::UnknownEid),
        (with(eb, C, B, e), DropReason::WrongSource),
        (with(eb, A, C, e), DropReason::NotForUs),
        (with(eb, A, MacAddr::BROADCAST, e), DropReason::NotForUs),
        (with(eb, A, B, 0x0800), DropReason::WrongEthertype),
        (with(eb, MacAddr::BROADCAST, B, e), DropReason::BadSource),
        (with(eb, B, B, e), DropReason::BadSource),
        (with(0, A, C, e), DropReason::NotForUs),
    ] {
        assert_eq!(
            p.b.classify_rx(&frame),
            RxAction::Drop(reason),
            "{reason:?}"
        );
    }
    assert_eq!(p.b.stats().dropped(DropReason::UnknownEid), 4);
    assert_eq!(p.b.stats().dropped_total(), 11);

    // A flow that is requested but not answered yet.
    p.a.flow_alloc(&H1, RAW_QOS, b"").unwrap();
    p.a.poll_transmit().unwrap();
    let f = with(65, B, A, e);
    assert_eq!(
        p.a.classify_rx(&f),
        RxAction::Drop(DropReason::NotAllocated)
    );
    // After dealloc the eid is unknown again.
    p.b.flow_dealloc(eb).unwrap();
    assert_eq!(
        p.b.classify_rx(&good),
        RxAction::Drop(DropReason::UnknownEid)
    );
}

#[test]
fn runts_lying_lengths_and_padding() {
    let mut p = Pair::new();
    let (ea, eb) = p.allocate(&H1, RAW_QOS);
    let good = data_frame(&mut p.a, ea, b"0123456789");
    for cut in 0..HEADER_LEN {
        assert_eq!(
            p.b.classify_rx(&good[..cut]),
            RxAction::Drop(DropReason::Runt)
        );
    }
    assert_eq!(p.b.stats().dropped(DropReason::Runt), 18);
    // Every length that claims more than is present, including 65535.
    for claim in (11..100).chain([u16::MAX]) {
        let mut f = good.clone();
        f[16..18].copy_from_slice(&claim.to_be_bytes());
        assert_eq!(
            p.b.classify_rx(&f),
            RxAction::Drop(DropReason::BadLength),
            "{claim}"
        );
    }
    // Truncated frames whose length field still says 10.
    for cut in HEADER_LEN..good.len() {
        assert_eq!(
            p.b.classify_rx(&good[..cut]),
            RxAction::Drop(DropReason::BadLength)
        );
    }
    // A NIC pads short frames to 60 bytes: the padding is not payload.
    let mut padded = good.clone();
    padded.resize(60, 0);
    assert_data(&mut p.b, &padded, eb, b"0123456789");
    // A shorter length field is honoured (the rest is padding).
    let mut f = good.clone();
    f[16..18].copy_from_slice(&3u16.to_be_bytes());
    assert_data(&mut p.b, &f, eb, b"012");
    // Padded management frame (a NAME_QUERY_REPLY is 89 bytes; pad to 200).
    let mut reply = mgmt_frame(B, A, &msg_bytes(&MgmtMsg::NameQueryReply { hash: &H2 }));
    reply.resize(200, 0xee);
    assert_eq!(
        p.a.handle_rx(&reply, p.now),
        RxAction::Mgmt {
            payload: HEADER_LEN..HEADER_LEN + 39 + 32
        }
    );
    assert_eq!(p.a.directory().lookup(&H2), Some(B));
}

#[test]
fn garbage_management_payloads_are_counted() {
    let mut p = Pair::new();
    p.b.register(&H1).unwrap();
    let q = msg_bytes(&MgmtMsg::NameQueryReq { hash: &H1 });
    let mut unknown = q.clone();
    unknown[eth_mgmt::field::CODE] = 9;
    let mut trailing = q.clone();
    trailing.push(0);
    let mut short_hash = q.clone();
    short_hash.pop();
    let mut req_no_hash = vec![0u8; 39 + 31];
    req_no_hash[eth_mgmt::field::CODE] = 0;
    let mut huge = vec![0u8; eth_mgmt::MAX_PAYLOAD + 1];
    huge[eth_mgmt::field::CODE] = 1;
    let cases: [(&[u8], DropReason); 8] = [
        (&[], DropReason::BadMgmt),
        (&[0u8; 38], DropReason::BadMgmt),
        (&unknown, DropReason::UnknownCode),
        (&trailing, DropReason::BadMgmt),
        (&short_hash, DropReason::BadMgmt),
        (&req_no_hash, DropReason::BadMgmt),
        (&huge, DropReason::BadMgmt),
        (&[0xff; 100], DropReason::UnknownCode),
    ];
    for (payload, reason) in cases {
        let f = mgmt_frame(A, MacAddr::BROADCAST, payload);
        assert_eq!(
            p.b.handle_rx(&f, p.now),
            RxAction::Drop(reason),
            "{reason:?}"
        );
    }
    assert_eq!(p.b.stats().dropped(DropReason::BadMgmt), 6);
    assert_eq!(p.b.stats().dropped(DropReason::UnknownCode), 2);
    assert_eq!(p.b.stats().mgmt_rx, [0; 4]);
    assert!(p.b.poll_transmit().is_none());
    assert!(p.b.poll_event().is_none());
    // And the layer still works.
    let f = mgmt_frame(A, MacAddr::BROADCAST, &q);
    assert!(matches!(p.b.handle_rx(&f, p.now), RxAction::Mgmt { .. }));
    assert!(p.b.poll_transmit().is_some());
}

#[test]
fn mtu_check() {
    let mut p = Pair::new();
    let (ea, _) = p.allocate(&H1, RAW_QOS);
    assert_eq!(p.a.check_sdu_len(1496), Ok(()));
    assert_eq!(
        p.a.check_sdu_len(1497),
        Err(Error::SduTooLong {
            len: 1497,
            max: 1496
        })
    );
    let mut hdr = [0u8; 18];
    assert_eq!(
        p.a.write_header(ea, 1497, &mut hdr),
        Err(Error::SduTooLong {
            len: 1497,
            max: 1496
        })
    );
    assert_eq!(p.a.flow(ea).unwrap().stats.tx_packets, 0);
    assert!(
        Error::SduTooLong {
            len: 1497,
            max: 1496
        }
        .to_string()
        .contains("MTU - 4")
    );
    p.a.write_header(ea, 1496, &mut hdr).unwrap();
    assert_eq!(u16::from_be_bytes([hdr[16], hdr[17]]), 1496);

    let jumbo = Layer::new(Config {
        mtu: 65535,
        ..Config::new(A)
    })
    .unwrap();
    assert_eq!(jumbo.check_sdu_len(65531), Ok(()));
    assert!(jumbo.check_sdu_len(65532).is_err());
    assert!(jumbo.check_sdu_len(usize::MAX).is_err());
    assert_eq!(jumbo.config().max_mgmt_len(), 9000);
}

#[test]
fn config_validation() {
    let ok = Config::new(A);
    assert_eq!(ok.ethertype, 0xA000);
    assert_eq!(ok.hash_len, 32);
    assert_eq!(ok.max_sdu(), 1496);
    for bad in [
        Config {
            mac: MacAddr::BROADCAST,
            ..ok
        },
        Config {
            mac: MacAddr([1, 0, 0, 0, 0, 0]),
            ..ok
        },
        Config {
            ethertype: 0x05ff,
            ..ok
        },
        Config {
            ethertype: 0xffff,
            ..ok
        },
        Config { hash_len: 20, ..ok },
        Config { mtu: 65536, ..ok },
        Config {
            mtu: 4 + 39 + 31,
            ..ok
        },
        Config { mtu: 0, ..ok },
    ] {
        assert!(
            matches!(Layer::new(bad), Err(Error::InvalidConfig(_))),
            "{bad:?}"
        );
    }
    assert!(
        Layer::new(Config {
            mtu: 4 + 39 + 32,
            ..ok
        })
        .is_ok()
    );
    assert!(
        Layer::new(Config {
            ethertype: 0x0600,
            hash_len: 64,
            mtu: 9000,
            ..ok
        })
        .is_ok()
    );
}

#[test]
fn other_ethertype_layer_ignores_default_frames() {
    let mut p = Pair::with_configs(
        Config {
            ethertype: 0x88b5,
            ..Config::new(A)
        },
        Config {
            ethertype: 0x88b5,
            ..Config::new(B)
        },
    );
    p.allocate(&H1, RAW_QOS);
    assert_eq!(
        u16::from_be_bytes([p.wire[0].1[12], p.wire[0].1[13]]),
        0x88b5
    );
    let mut other = Layer::new(Config::new(B)).unwrap();
    assert_eq!(
        other.classify_rx(&p.wire[0].1),
        RxAction::Drop(DropReason::WrongEthertype)
    );
}

#[test]
fn out_of_eids_refuses_and_tells_the_requester() {
    let mut p = Pair::new();
    p.resolve(&H1);
    // Exhaust B's eids with requests from A.
    for _ in 64..4096 {
        p.a.flow_alloc(&H1, RAW_QOS, b"").unwrap();
        p.pump();
    }
    assert_eq!(p.a.flow_alloc(&H1, RAW_QOS, b""), Err(Error::NoEid));
    assert_eq!(p.b.flow_count(), 4032);
    p.events_b();
    // A third party asks B for one more.
    let req = msg_bytes(&MgmtMsg::FlowReq {
        seid: 100,
        qos: RAW_QOS,
        hash: &H1,
        oap: &[],
    });
    let f = mgmt_frame(C, B, &req);
    assert_eq!(p.b.handle_rx(&f, p.now), RxAction::Drop(DropReason::NoEid));
    let t = p.b.poll_transmit().unwrap();
    assert_eq!(t.dst, C);
    let frame = dix::Frame::new_checked(&t.frame[..]).unwrap();
    assert_eq!(
        MgmtMsg::parse_bytes(frame.payload(), 32).unwrap(),
        MgmtMsg::FlowReply {
            seid: 0,
            deid: 100,
            response: -12,
            oap: &[]
        }
    );
}
