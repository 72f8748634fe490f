//! DIX header: captured vectors, emit into garbage, truncation sweep and round-trip properties.

mod util;

use o7s_proto::Error;
use o7s_proto::dix::{self, DEFAULT_ETHERTYPE, Frame, HEADER_LEN, MGMT_EID, MacAddr, Repr};
use proptest::prelude::*;
use util::{all_vectors, assert_truncation_rejected, vector};

const A: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
const B: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);

/// (vector, src, dst, eid, length) for every captured eth-dix frame.
fn expected_headers() -> Vec<(&'static str, MacAddr, MacAddr, u16, u16)> {
    let mut v = vec![
        ("alloc-05", A, MacAddr::BROADCAST, MGMT_EID, 71),
        ("alloc-06", B, A, MGMT_EID, 71),
        ("alloc-07", A, B, MGMT_EID, 107),
        ("alloc-08", B, A, MGMT_EID, 123),
        ("qos-best-01", A, B, MGMT_EID, 107),
        ("qos-best-02", B, A, MGMT_EID, 123),
        ("qos-best-11", A, B, 65, 12),
        ("qos-best-12", B, A, 64, 12),
        ("qos-best-13", A, B, 65, 12),
    ];
    // oping with raw QoS: 64-byte SDUs, A and B alternate, both eids are 64.
    const ALLOC_DATA: [&str; 10] = [
        "alloc-09", "alloc-10", "alloc-11", "alloc-12", "alloc-13", "alloc-14", "alloc-15",
        "alloc-16", "alloc-17", "alloc-18",
    ];
    for (i, name) in ALLOC_DATA.into_iter().enumerate() {
        let (src, dst) = if i % 2 == 0 { (A, B) } else { (B, A) };
        v.push((name, src, dst, 64, 64));
    }
    // oping -q best: 12-byte FRCT PCI + 64-byte SDU; B's fd is 65, A's is 64.
    const BEST_DATA: [&str; 6] = [
        "qos-best-03",
        "qos-best-04",
        "qos-best-05",
        "qos-best-06",
        "qos-best-07",
        "qos-best-08",
    ];
    for (i, name) in BEST_DATA.into_iter().enumerate() {
        let (src, dst, eid) = if i % 2 == 0 { (A, B, 65) } else { (B, A, 64) };
        v.push((name, src, dst, eid, 76));
    }
    v
}

#[test]
fn every_captured_frame_has_the_expected_header() {
    let expected = expected_headers();
    assert_eq!(
        expected.len(),
        all_vectors().len(),
        "a vector has no expectation"
    );
    for (name, src, dst, eid, length) in expected {
        let bytes = vector(name);
        let frame = Frame::new_checked(&bytes[..]).unwrap_or_else(|e| panic!("{name}: {e}"));
        let repr = Repr::parse(&frame).unwrap();
        assert_eq!(
            repr,
            Repr {
                dst_addr: dst,
                src_addr: src,
                ethertype: DEFAULT_ETHERTYPE,
                eid,
                payload_len: length,
            },
            "{name}"
        );
        assert_eq!(frame.is_mgmt(), eid == MGMT_EID);
        assert_eq!(frame.payload().len(), usize::from(length));
        assert_eq!(frame.payload_ref(), &bytes[HEADER_LEN..]);
        assert_eq!(frame.frame_len(), bytes.len());
    }
}

#[test]
fn emit_into_garbage_reproduces_every_header() {
    for (name, bytes) in all_vectors() {
        let repr = Repr::parse(&Frame::new_checked(&bytes[..]).unwrap()).unwrap();

        let mut header = [0xa5u8; HEADER_LEN];
        repr.emit_header(&mut header);
        assert_eq!(header, bytes[..HEADER_LEN], "{name}: emit_header");

        let mut frame = vec![0xa5u8; bytes.len()];
        frame[HEADER_LEN..].copy_from_slice(&bytes[HEADER_LEN..]);
        repr.emit(&mut frame).unwrap();
        assert_eq!(frame, bytes, "{name}: emit");

        let mut view = Frame::new_unchecked(vec![0xa5u8; bytes.len()]);
        view.set_dst_addr(repr.dst_addr);
        view.set_src_addr(repr.src_addr);
        view.set_ethertype(repr.ethertype);
        view.set_eid(repr.eid);
        view.set_length(repr.payload_len);
        view.payload_mut().copy_from_slice(&bytes[HEADER_LEN..]);
        assert_eq!(view.into_inner(), bytes, "{name}: setters");
    }
}

#[test]
fn emit_prepends_in_headroom_without_touching_the_sdu() {
    let sdu = [7u8; 30];
    let mut block = [0xa5u8; 64 + 30];
    let at = 64 - HEADER_LEN;
    block[64..].copy_from_slice(&sdu);
    let repr = Repr {
        dst_addr: B,
        src_addr: A,
        ethertype: 0x0800 + 0xA000,
        eid: 4095,
        payload_len: 30,
    };
    repr.emit(&mut block[at..]).unwrap();
    assert!(
        block[..at].iter().all(|&b| b == 0xa5),
        "wrote before the headroom"
    );
    let frame = Frame::new_checked(&block[at..]).unwrap();
    assert_eq!(Repr::parse(&frame), Ok(repr));
    assert_eq!(frame.payload(), sdu);
}

/// The DIX layer alone: header re-emitted, payload copied whatever it holds.
fn reemit_dix(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let frame = Frame::new_checked(bytes)?;
    let repr = Repr::parse(&frame)?;
    let mut out = vec![0xa5u8; repr.frame_len()];
    out[HEADER_LEN..].copy_from_slice(frame.payload());
    repr.emit(&mut out)?;
    Ok(out)
}

#[test]
fn every_captured_frame_survives_the_truncation_sweep() {
    // Management payloads get the same sweep through their parser in tests/eth_mgmt.rs.
    for (name, bytes) in all_vectors() {
        eprintln!("{name}");
        assert_truncation_rejected(&bytes, reemit_dix);
    }
}

#[test]
fn runts_and_lying_lengths_are_named() {
    assert_eq!(
        Frame::new_checked(&[0u8; 17][..]),
        Err(Error::Truncated {
            what: "DIX header",
            need: 18,
            have: 17
        })
    );
    let mut bytes = vector("alloc-09");
    bytes[17] += 1;
    assert_eq!(
        Frame::new_checked(&bytes[..]).map(|_| ()),
        Err(Error::LengthMismatch {
            what: "DIX header",
            claimed: 65,
            have: 64
        })
    );
}

#[test]
fn nic_padding_is_not_payload() {
    // A 30-byte FRCT ACK frame as a real NIC delivers it: padded to 60 bytes.
    let mut padded = vector("qos-best-11");
    let unpadded_len = padded.len();
    padded.resize(60, 0);
    let frame = Frame::new_checked(&padded[..]).unwrap();
    assert_eq!(frame.payload().len(), 12);
    assert_eq!(frame.frame_len(), unpadded_len);
    assert_eq!(reemit_dix(&padded).unwrap(), vector("qos-best-11"));
}

fn arb_mac() -> impl Strategy<Value = MacAddr> {
    any::<[u8; 6]>().prop_map(MacAddr)
}

fn arb_repr() -> impl Strategy<Value = Repr> {
    (arb_mac(), arb_mac(), any::<u16>(), any::<u16>(), 0u16..2048).prop_map(
        |(dst_addr, src_addr, ethertype, eid, payload_len)| Repr {
            dst_addr,
            src_addr,
            ethertype,
            eid,
            payload_len,
        },
    )
}

proptest! {
    #[test]
    fn repr_emit_parse_round_trip(repr in arb_repr(), pad in 0usize..64) {
        let mut buf = vec![0xa5u8; repr.frame_len() + pad];
        repr.emit(&mut buf).unwrap();
        let frame = Frame::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(Repr::parse(&frame).unwrap(), repr);
        prop_assert_eq!(frame.payload().len(), usize::from(repr.payload_len));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_reemit_what_they_consumed(
        bytes in proptest::collection::vec(any::<u8>(), 0..256)
    ) {
        if let Ok(out) = reemit_dix(&bytes) {
            prop_assert_eq!(&out[..], &bytes[..out.len()]);
        }
    }

    #[test]
    fn mac_display_parse_round_trip(mac in arb_mac()) {
        prop_assert_eq!(mac.to_string().parse::<MacAddr>(), Ok(mac));
        prop_assert_eq!(mac.to_string().to_uppercase().parse::<MacAddr>(), Ok(mac));
    }

    #[test]
    fn mac_parse_never_panics(s in "\\PC{0,24}") {
        let _ = s.parse::<MacAddr>();
    }

    #[test]
    fn max_sdu_never_underflows(mtu in any::<usize>()) {
        prop_assert!(dix::max_sdu(mtu) <= mtu);
    }
}
