//! eth-dix management messages: captured vectors, emit into garbage, truncation sweep,
//! hash-length handling and round-trip properties.

mod util;

use o7s_proto::Error;
use o7s_proto::dix::{Frame, HEADER_LEN as DIX_HEADER_LEN};
use o7s_proto::eth_mgmt::{
    Code, HASH_LENS, HEADER_LEN, MAX_PAYLOAD, MgmtMsg, Packet, QosSpec, field,
};
use o7s_proto::testing::{OPING_SRV_HASH, RAW_QOS};
use proptest::prelude::*;
use util::{HASH_LEN, assert_truncation_rejected, decode_hex, reemit_frame, vector};

const MGMT_VECTORS: [&str; 6] = [
    "alloc-05",
    "alloc-06",
    "alloc-07",
    "alloc-08",
    "qos-best-01",
    "qos-best-02",
];

fn payload(frame: &[u8]) -> &[u8] {
    Frame::new_checked(frame).unwrap().payload_ref()
}

fn parse(frame: &[u8]) -> MgmtMsg<'_> {
    MgmtMsg::parse_bytes(payload(frame), HASH_LEN).unwrap()
}

/// The unauthenticated OAP request header: id, timestamp, then six zero u16s.
fn oap_request(id: &str, timestamp: &str) -> Vec<u8> {
    let mut v = decode_hex(id);
    v.extend(decode_hex(timestamp));
    v.extend([0u8; 12]);
    v
}

#[test]
fn name_query_request_and_reply() {
    let hash = decode_hex(OPING_SRV_HASH);
    let req = vector("alloc-05");
    assert_eq!(parse(&req), MgmtMsg::NameQueryReq { hash: &hash });
    let reply = vector("alloc-06");
    assert_eq!(parse(&reply), MgmtMsg::NameQueryReply { hash: &hash });
}

#[test]
fn flow_request_raw_qos() {
    let hash = decode_hex(OPING_SRV_HASH);
    let oap = oap_request("885498f5deacb3d9dfd360f705497782", "18edc99142a1c453");
    let bytes = vector("alloc-07");
    assert_eq!(
        parse(&bytes),
        MgmtMsg::FlowReq {
            seid: 64,
            qos: RAW_QOS,
            hash: &hash,
            oap: &oap,
        }
    );
}

#[test]
fn flow_request_best_qos_differs_only_in_in_order() {
    let hash = decode_hex(OPING_SRV_HASH);
    let oap = oap_request("c809dd362735a4e2fa9a363bebf1e9a4", "18edc99308ab067b");
    let bytes = vector("qos-best-01");
    assert_eq!(
        parse(&bytes),
        MgmtMsg::FlowReq {
            seid: 64,
            qos: QosSpec {
                in_order: 1,
                ..RAW_QOS
            },
            hash: &hash,
            oap: &oap,
        }
    );
}

#[test]
fn flow_replies() {
    for (name, seid, id) in [
        ("alloc-08", 64, "885498f5deacb3d9dfd360f705497782"),
        ("qos-best-02", 65, "c809dd362735a4e2fa9a363bebf1e9a4"),
    ] {
        let bytes = vector(name);
        let MgmtMsg::FlowReply {
            seid: s,
            deid,
            response,
            oap,
        } = parse(&bytes)
        else {
            panic!("{name}: not a FLOW_REPLY");
        };
        assert_eq!((s, deid, response), (seid, 64, 0), "{name}");
        // OAP response: 36-byte header echoing the request id, then the 48-byte req_hash.
        assert_eq!(oap.len(), 36 + 48, "{name}");
        assert_eq!(oap[..16], decode_hex(id)[..], "{name}");
    }
}

#[test]
fn view_reads_every_fixed_field() {
    let bytes = vector("alloc-07");
    let packet = Packet::new_checked(payload(&bytes)).unwrap();
    assert_eq!(packet.seid(), 64);
    assert_eq!(packet.deid(), 0);
    assert_eq!(packet.qos(), RAW_QOS);
    assert_eq!(packet.response(), 0);
    assert_eq!(packet.code(), Code::FlowReq);
    assert_eq!(packet.body().len(), 32 + 36);
    assert!(packet.unused_fields_zero());
}

#[test]
fn emit_into_garbage_reproduces_every_message() {
    for name in MGMT_VECTORS {
        let bytes = vector(name);
        let msg = parse(&bytes);
        let mut out = vec![0xa5u8; msg.buffer_len()];
        assert_eq!(
            msg.emit(&mut out),
            Ok(bytes.len() - DIX_HEADER_LEN),
            "{name}"
        );
        assert_eq!(out, payload(&bytes), "{name}");
        assert_eq!(
            reemit_frame(&bytes, HASH_LEN).unwrap(),
            bytes,
            "{name}: whole frame"
        );
    }
}

#[test]
fn setters_reproduce_every_message() {
    for name in MGMT_VECTORS {
        let bytes = vector(name);
        let src = Packet::new_checked(payload(&bytes)).unwrap();
        let mut dst = Packet::new_unchecked(vec![0xa5u8; src.into_inner().len()]);
        dst.set_seid(src.seid());
        dst.set_deid(src.deid());
        dst.set_qos(&src.qos());
        dst.set_response(src.response());
        dst.set_code(src.code());
        dst.body_mut().copy_from_slice(src.body());
        assert_eq!(dst.into_inner(), payload(&bytes), "{name}");
    }
}

#[test]
fn every_message_survives_the_truncation_sweep() {
    for name in MGMT_VECTORS {
        eprintln!("{name}");
        assert_truncation_rejected(&vector(name), |b| reemit_frame(b, HASH_LEN));
    }
}

#[test]
fn message_errors_name_the_defect() {
    let nq = vector("alloc-05");
    let nq = payload(&nq);
    assert_eq!(
        MgmtMsg::parse_bytes(&nq[..HEADER_LEN - 1], HASH_LEN),
        Err(Error::Truncated {
            what: "management message",
            need: HEADER_LEN,
            have: HEADER_LEN - 1
        })
    );
    assert_eq!(
        MgmtMsg::parse_bytes(&nq[..nq.len() - 1], HASH_LEN),
        Err(Error::Truncated {
            what: "NAME_QUERY_REQ name hash",
            need: 32,
            have: 31
        })
    );
    let mut long = nq.to_vec();
    long.push(0);
    assert_eq!(
        MgmtMsg::parse_bytes(&long, HASH_LEN),
        Err(Error::TrailingData {
            what: "NAME_QUERY_REQ name hash",
            extra: 1
        })
    );
    let req = vector("alloc-07");
    let req = payload(&req);
    assert_eq!(
        MgmtMsg::parse_bytes(&req[..HEADER_LEN + 31], HASH_LEN),
        Err(Error::Truncated {
            what: "FLOW_REQ name hash",
            need: 32,
            have: 31
        })
    );
    // A FLOW_REQ whose OAP is empty is still well-formed here; OAP checks it.
    assert!(MgmtMsg::parse_bytes(&req[..HEADER_LEN + 32], HASH_LEN).is_ok());
    let reply = vector("alloc-08");
    let reply = payload(&reply);
    assert!(matches!(
        MgmtMsg::parse_bytes(&reply[..HEADER_LEN], HASH_LEN),
        Ok(MgmtMsg::FlowReply { oap: [], .. })
    ));
    for code in 4..=u8::MAX {
        let mut bad = req.to_vec();
        bad[field::CODE] = code;
        assert_eq!(
            MgmtMsg::parse_bytes(&bad, HASH_LEN),
            Err(Error::UnknownCode(code))
        );
    }
}

#[test]
fn hash_length_is_the_layers() {
    let nq = vector("alloc-05");
    let nq = payload(&nq);
    // The captured 32-byte hash read as SHA3-224 leaves 4 bytes over; as SHA3-384 it is short.
    assert!(matches!(
        MgmtMsg::parse_bytes(nq, 28),
        Err(Error::TrailingData { extra: 4, .. })
    ));
    assert!(matches!(
        MgmtMsg::parse_bytes(nq, 48),
        Err(Error::Truncated {
            need: 48,
            have: 32,
            ..
        })
    ));
    for bad in [0, 16, 33, 1000] {
        assert_eq!(
            MgmtMsg::parse_bytes(nq, bad),
            Err(Error::InvalidHashLen(bad))
        );
    }
    // A FLOW_REQ read with a shorter hash moves the rest into the OAP bytes.
    let req = vector("alloc-07");
    let MgmtMsg::FlowReq { hash, oap, .. } = MgmtMsg::parse_bytes(payload(&req), 28).unwrap()
    else {
        panic!("not a FLOW_REQ");
    };
    assert_eq!((hash.len(), oap.len()), (28, 40));
    // Emitting refuses a hash of a length no layer uses.
    let msg = MgmtMsg::NameQueryReq { hash: &[0; 20] };
    assert_eq!(msg.emit(&mut [0u8; 100]), Err(Error::InvalidHashLen(20)));
}

#[test]
fn unused_fields_are_ignored_and_emitted_as_zero() {
    // The reference fills unused fields from uninitialised memory; they must not matter.
    let bytes = vector("alloc-08");
    let mut dirty = payload(&bytes).to_vec();
    dirty[field::LOSS].fill(0x5a);
    dirty[field::IN_ORDER] = 1;
    dirty[field::AVAILABILITY] = 9;
    assert!(
        !Packet::new_checked(&dirty[..])
            .unwrap()
            .unused_fields_zero()
    );
    let msg = MgmtMsg::parse_bytes(&dirty, HASH_LEN).unwrap();
    assert_eq!(msg, parse(&bytes));
    let mut out = vec![0xa5u8; msg.buffer_len()];
    msg.emit(&mut out).unwrap();
    assert_eq!(out, payload(&bytes));
}

#[test]
fn emit_refuses_a_short_buffer_and_writes_nothing_past_buffer_len() {
    let bytes = vector("alloc-07");
    let msg = parse(&bytes);
    let n = msg.buffer_len();
    let mut short = vec![0u8; n - 1];
    assert_eq!(
        msg.emit(&mut short),
        Err(Error::BufferTooSmall {
            what: "management message",
            need: n,
            have: n - 1
        })
    );
    let mut long = vec![0xa5u8; n + 16];
    assert_eq!(msg.emit(&mut long), Ok(n));
    assert!(long[n..].iter().all(|&b| b == 0xa5));
}

fn arb_qos() -> impl Strategy<Value = QosSpec> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u8>(),
        any::<u8>(),
    )
        .prop_map(
            |(loss, bandwidth, ber, max_gap, delay, timeout, in_order, availability)| QosSpec {
                loss,
                bandwidth,
                ber,
                max_gap,
                delay,
                timeout,
                in_order,
                availability,
            },
        )
}

/// Owned parts of an arbitrary message: (code, seid, deid, response, qos, hash, oap).
type Parts = (u8, u16, u16, i32, QosSpec, Vec<u8>, Vec<u8>);

fn arb_parts() -> impl Strategy<Value = Parts> {
    (
        0u8..4,
        any::<u16>(),
        any::<u16>(),
        any::<i32>(),
        arb_qos(),
        prop::sample::select(HASH_LENS.to_vec())
            .prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n)),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
}

fn msg_of(parts: &Parts) -> MgmtMsg<'_> {
    let (code, seid, deid, response, qos, hash, oap) = parts;
    match code {
        0 => MgmtMsg::FlowReq {
            seid: *seid,
            qos: *qos,
            hash,
            oap,
        },
        1 => MgmtMsg::FlowReply {
            seid: *seid,
            deid: *deid,
            response: *response,
            oap,
        },
        2 => MgmtMsg::NameQueryReq { hash },
        _ => MgmtMsg::NameQueryReply { hash },
    }
}

proptest! {
    #[test]
    fn repr_emit_parse_round_trip(parts in arb_parts()) {
        let msg = msg_of(&parts);
        let hash_len = parts.5.len();
        let mut buf = vec![0xa5u8; msg.buffer_len()];
        prop_assert_eq!(msg.emit(&mut buf), Ok(msg.buffer_len()));
        let packet = Packet::new_checked(&buf[..]).unwrap();
        prop_assert!(packet.unused_fields_zero());
        prop_assert_eq!(MgmtMsg::parse(&packet, hash_len), Ok(msg));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_reemit_what_they_consumed(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        code in 0u8..6,
        hash_len in prop::sample::select(vec![28usize, 32, 48, 64, 0, 31]),
        zero_unused in any::<bool>(),
    ) {
        // Steer most inputs to a known code so that the interesting paths are reached.
        let mut bytes = bytes;
        if let Some(b) = bytes.get_mut(field::CODE) {
            *b = code;
        }
        if zero_unused && bytes.len() >= HEADER_LEN {
            let used = Code::from(code).used_fields();
            for (i, b) in bytes[..HEADER_LEN].iter_mut().enumerate() {
                if !used.iter().any(|r| r.contains(&i)) {
                    *b = 0;
                }
            }
        }
        if let Ok(msg) = MgmtMsg::parse_bytes(&bytes, hash_len) {
            prop_assert_eq!(msg.buffer_len(), bytes.len());
            let mut out = vec![0xa5u8; msg.buffer_len()];
            msg.emit(&mut out).unwrap();
            if zero_unused {
                prop_assert_eq!(&out, &bytes);
            }
            prop_assert_eq!(MgmtMsg::parse_bytes(&out, hash_len), Ok(msg));
        }
    }

    #[test]
    fn oversized_payloads_are_rejected(extra in 1usize..100, code in 0u8..4) {
        let mut bytes = vec![0u8; MAX_PAYLOAD + extra];
        bytes[field::CODE] = code;
        let rejected = matches!(
            MgmtMsg::parse_bytes(&bytes, HASH_LEN),
            Err(Error::TooLong { .. })
        );
        prop_assert!(rejected);
    }
}
