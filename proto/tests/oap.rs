//! OAP headers: the requests and responses of the reference captures (the response's request
//! hash is SHA-384 of the request), emit into garbage, truncation and length-field sweeps, and
//! round-trip properties.

mod util;

use o7s_proto::Error;
use o7s_proto::dix::Frame;
use o7s_proto::eth_mgmt::MgmtMsg;
use o7s_proto::oap::{self, FIXED_LEN, Header, ID_LEN, MAX_KEX_LEN, Repr, field, nid};
use proptest::prelude::*;
use sha2::Digest as _;
use util::{HASH_LEN, decode_hex, vector};

/// The OAP bytes of a captured FLOW_REQ or FLOW_REPLY.
fn oap_of(frame: &[u8]) -> Vec<u8> {
    let payload = Frame::new_checked(frame).unwrap().payload_ref();
    match MgmtMsg::parse_bytes(payload, HASH_LEN).unwrap() {
        MgmtMsg::FlowReq { oap, .. } | MgmtMsg::FlowReply { oap, .. } => oap.to_vec(),
        other => panic!("not a flow message: {other:?}"),
    }
}

/// Every captured (FLOW_REQ, FLOW_REPLY) pair.
const EXCHANGES: [(&str, &str); 2] = [("alloc-07", "alloc-08"), ("qos-best-01", "qos-best-02")];

#[test]
fn captured_request_and_response() {
    let request = oap_of(&vector("alloc-07"));
    assert_eq!(request.len(), FIXED_LEN);
    let req = Repr::parse_request(&request).unwrap();
    assert_eq!(
        req,
        Repr::request(
            decode_hex("885498f5deacb3d9dfd360f705497782")
                .try_into()
                .unwrap(),
            1_796_313_452_116_034_643,
        )
    );

    let response = oap_of(&vector("alloc-08"));
    assert_eq!(response.len(), 84);
    let rsp = Repr::parse_response(&response, req.md_nid).unwrap();
    assert_eq!(rsp.id, req.id, "the response echoes the id");
    assert_eq!(rsp.timestamp, 1_796_313_452_130_729_656);
    assert_eq!(
        (rsp.cipher_nid, rsp.kdf_nid, rsp.md_nid),
        (0, 0, 0),
        "no crypto"
    );
    assert!(!rsp.is_signed() && rsp.signature.is_empty());
    assert!(rsp.crt.is_empty() && rsp.kex.is_empty() && rsp.data.is_empty());
    assert_eq!(
        rsp.req_hash,
        &sha2::Sha384::digest(&request)[..],
        "req_hash is SHA-384 of the request"
    );
    // The view agrees with the representation.
    let view = Header::response(&response[..], 0).unwrap();
    assert_eq!(view.id(), rsp.id);
    assert_eq!(view.timestamp(), rsp.timestamp);
    assert_eq!(view.req_hash_len(), 48);
    assert_eq!((view.crt_len(), view.kex_len(), view.data_len()), (0, 0, 0));
}

#[test]
fn every_captured_response_hashes_its_request() {
    for (req_name, rsp_name) in EXCHANGES {
        let request = oap_of(&vector(req_name));
        let response = oap_of(&vector(rsp_name));
        let req = Repr::parse_request(&request).unwrap();
        let rsp = Repr::parse_response(&response, req.md_nid).unwrap();
        assert_eq!(rsp.id, req.id, "{rsp_name}");
        assert_eq!(
            rsp.req_hash,
            &sha2::Sha384::digest(&request)[..],
            "{rsp_name}"
        );
        assert!(rsp.timestamp > req.timestamp, "{rsp_name}");
    }
}

#[test]
fn captured_headers_emit_into_garbage_identically() {
    for (req_name, rsp_name) in EXCHANGES {
        for (name, bytes, response) in [
            (req_name, oap_of(&vector(req_name)), false),
            (rsp_name, oap_of(&vector(rsp_name)), true),
        ] {
            let repr = if response {
                Repr::parse_response(&bytes, 0)
            } else {
                Repr::parse_request(&bytes)
            }
            .unwrap();
            assert_eq!(repr.buffer_len(), bytes.len(), "{name}");
            let mut out = vec![0xa5u8; bytes.len()];
            assert_eq!(repr.emit(&mut out), Ok(bytes.len()), "{name}");
            assert_eq!(out, bytes, "{name}");
            assert!(matches!(
                repr.emit(&mut out[..bytes.len() - 1]),
                Err(Error::BufferTooSmall { .. })
            ));
        }
    }
}

/// Every prefix of an unsigned header fails, as does every length field that claims more than
/// is present; one that claims less leaves trailing bytes, which an unsigned header refuses.
#[track_caller]
fn assert_unsigned_sweep(bytes: &[u8], parse: impl Fn(&[u8]) -> Result<Repr<'_>, Error>) {
    parse(bytes).expect("whole header parses");
    for cut in 0..bytes.len() {
        assert!(parse(&bytes[..cut]).is_err(), "prefix of {cut} accepted");
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(matches!(
        parse(&longer),
        Err(Error::TrailingData { extra: 1, .. })
    ));
    for f in [field::KEX, field::DATA_LEN] {
        for claim in [1u16, 2, 47, 48, 49, 0x3fff] {
            let mut lied = bytes.to_vec();
            lied[f.clone()].copy_from_slice(&claim.to_be_bytes());
            assert!(
                matches!(parse(&lied), Err(Error::LengthMismatch { .. })),
                "length {claim} in {f:?} accepted"
            );
        }
    }
}

#[test]
fn fuzz_seeds_are_the_captured_headers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/oap");
    for (name, selector) in [
        ("alloc-07", 0u8),
        ("alloc-08", 1),
        ("qos-best-01", 0),
        ("qos-best-02", 1),
    ] {
        let mut expected = vec![selector];
        expected.extend(oap_of(&vector(name)));
        let path = dir.join(format!("{name}.bin"));
        let seed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(seed, expected, "{}", path.display());
    }
}

#[test]
fn truncation_and_lying_lengths_are_rejected() {
    let request = oap_of(&vector("alloc-07"));
    assert_unsigned_sweep(&request, |b| Repr::parse_request(b));
    let response = oap_of(&vector("alloc-08"));
    assert_unsigned_sweep(&response, |b| Repr::parse_response(b, 0));
    // A response read as a request: 48 trailing bytes after an unsigned header.
    assert!(matches!(
        Repr::parse_request(&response),
        Err(Error::TrailingData { extra: 48, .. })
    ));
    // A certificate length makes the rest crt + signature; too long a one is a mismatch.
    let mut signed = response.clone();
    signed.extend([0x5a; 20]);
    signed[field::CRT_LEN].copy_from_slice(&10u16.to_be_bytes());
    let r = Repr::parse_response(&signed, 0).unwrap();
    assert_eq!(
        (r.crt.len(), r.req_hash.len(), r.signature.len()),
        (10, 48, 10)
    );
    assert_eq!(r.crt, &response[FIXED_LEN..FIXED_LEN + 10]);
    signed[field::CRT_LEN].copy_from_slice(&40u16.to_be_bytes());
    assert!(matches!(
        Repr::parse_response(&signed, 0),
        Err(Error::LengthMismatch {
            claimed: 88,
            have: 68,
            ..
        })
    ));
}

fn known_cipher() -> impl Strategy<Value = u16> {
    prop_oneof![Just(0u16), prop::sample::select(nid::CIPHERS.to_vec())]
}

fn known_digest() -> impl Strategy<Value = u16> {
    prop::sample::select(vec![
        0u16,
        nid::SHA256,
        nid::SHA384,
        nid::SHA512,
        nid::SHA3_256,
        nid::SHA3_384,
        nid::SHA3_512,
        nid::BLAKE2B512,
        nid::BLAKE2S256,
    ])
}

/// The owned parts of a header, for proptest.
#[derive(Debug, Clone)]
struct Parts {
    id: [u8; ID_LEN],
    timestamp: u64,
    nids: (u16, u16, u16),
    flags: (bool, bool),
    crt: Vec<u8>,
    kex: Vec<u8>,
    data: Vec<u8>,
    signature: Vec<u8>,
    req_md_nid: Option<u16>,
}

impl Parts {
    fn repr<'a>(&'a self, req_hash: &'a [u8]) -> Repr<'a> {
        Repr {
            id: self.id,
            timestamp: self.timestamp,
            cipher_nid: self.nids.0,
            kdf_nid: self.nids.1,
            md_nid: self.nids.2,
            kex_raw: self.flags.0,
            kex_client_encap: self.flags.1,
            crt: &self.crt,
            kex: &self.kex,
            data: &self.data,
            req_hash,
            signature: if self.crt.is_empty() {
                &[]
            } else {
                &self.signature
            },
        }
    }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..8),
        1 => proptest::collection::vec(any::<u8>(), 0..max),
    ]
}

fn parts() -> impl Strategy<Value = Parts> {
    (
        any::<[u8; ID_LEN]>(),
        any::<u64>(),
        (known_cipher(), known_digest(), known_digest()),
        any::<(bool, bool)>(),
        (
            bytes(600),
            bytes(MAX_KEX_LEN.min(2000)),
            bytes(300),
            bytes(200),
        ),
        prop::option::of(known_digest()),
    )
        .prop_map(
            |(id, timestamp, nids, flags, (crt, kex, data, signature), req_md_nid)| Parts {
                id,
                timestamp,
                nids,
                flags,
                crt,
                kex,
                data,
                signature,
                req_md_nid,
            },
        )
}

proptest! {
    #[test]
    fn valid_headers_round_trip(p in parts(), fill in any::<u8>()) {
        let hash_len = p.req_md_nid.map_or(0, |md| oap::req_hash_len(md).unwrap());
        let req_hash: Vec<u8> = (0..hash_len).map(|i| i as u8 ^ fill).collect();
        let repr = p.repr(&req_hash);
        let mut out = vec![fill; repr.buffer_len() + 3];
        prop_assert_eq!(repr.emit(&mut out), Ok(repr.buffer_len()));
        prop_assert!(out[repr.buffer_len()..].iter().all(|&b| b == fill));
        let bytes = &out[..repr.buffer_len()];
        let parsed = match p.req_md_nid {
            None => Repr::parse_request(bytes),
            Some(md) => Repr::parse_response(bytes, md),
        };
        prop_assert_eq!(parsed, Ok(repr));
        let unsigned = bytes.len() == FIXED_LEN + repr.kex.len() + repr.data.len() + hash_len;
        prop_assert_eq!(unsigned, !repr.is_signed());
    }

    #[test]
    fn any_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        md in any::<u16>(),
    ) {
        let _ = Repr::parse_request(&bytes);
        let _ = Repr::parse_response(&bytes, md);
        if let Ok(view) = Header::new_checked(&bytes[..], usize::from(md % 100)) {
            let _ = (view.id(), view.timestamp(), view.kex_len(), view.data_len());
        }
        let mut tagged = vec![md as u8];
        tagged.extend(&bytes);
        o7s_proto::fuzzing::oap(&tagged);
    }

    #[test]
    fn mutated_captures_never_panic(
        which in 0usize..4,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        pad in 0usize..64,
    ) {
        let names = ["alloc-07", "alloc-08", "qos-best-01", "qos-best-02"];
        let mut h = oap_of(&vector(names[which]));
        for (at, b) in edits {
            let i = at.index(h.len());
            h[i] = b;
        }
        h.truncate(cut.index(h.len() + 1));
        h.resize(h.len() + pad, 0);
        for sel in 0u8..4 {
            let mut tagged = vec![sel];
            tagged.extend(&h);
            o7s_proto::fuzzing::oap(&tagged);
        }
    }
}
