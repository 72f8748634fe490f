//! Helpers shared by the integration tests: captured vectors and the truncation sweep.
#![allow(
    dead_code,
    unused_imports,
    reason = "each test binary uses a different subset"
)]

use o7s_proto::Error;
use o7s_proto::dix::{self, Frame};
use o7s_proto::eth_mgmt::MgmtMsg;

pub use o7s_proto::testing::{HASH_LEN, all_vectors, decode_hex, vector};

/// Parses a whole DIX frame (management payloads as [`MgmtMsg`] with `hash_len`) and emits it
/// again into a buffer pre-filled with 0xa5. Returns the re-emitted frame without padding.
pub fn reemit_frame(bytes: &[u8], hash_len: usize) -> Result<Vec<u8>, Error> {
    let frame = Frame::new_checked(bytes)?;
    let repr = dix::Repr::parse(&frame)?;
    let mut out = vec![0xa5u8; repr.frame_len()];
    if frame.is_mgmt() {
        let msg = MgmtMsg::parse_bytes(frame.payload(), hash_len)?;
        let n = msg.emit(&mut out[dix::HEADER_LEN..])?;
        assert_eq!(n, usize::from(repr.payload_len));
    } else {
        out[dix::HEADER_LEN..].copy_from_slice(frame.payload());
    }
    repr.emit(&mut out)?;
    Ok(out)
}

/// The truncation sweep: `parse` (which returns the re-emitted frame) must accept `bytes`
/// whole and reproduce it, reject every prefix, reject every length field that claims more
/// bytes than are present, and never read past a length field that claims fewer (the rest is
/// then padding): such a frame is either rejected or re-emits to exactly what it claims.
#[track_caller]
pub fn assert_truncation_rejected(bytes: &[u8], parse: impl Fn(&[u8]) -> Result<Vec<u8>, Error>) {
    assert_eq!(
        parse(bytes).expect("whole frame must parse"),
        bytes,
        "round trip"
    );

    for cut in 0..bytes.len() {
        assert!(
            parse(&bytes[..cut]).is_err(),
            "prefix of {cut} bytes accepted"
        );
    }

    let true_len = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    assert_eq!(
        true_len + dix::HEADER_LEN,
        bytes.len(),
        "vector has padding"
    );
    let mut lied = bytes.to_vec();
    let mut claims: Vec<usize> = (true_len + 1..true_len + 64).collect();
    claims.push(usize::from(u16::MAX));
    for claim in claims {
        let claim = u16::try_from(claim).unwrap();
        lied[16..18].copy_from_slice(&claim.to_be_bytes());
        assert!(
            matches!(parse(&lied), Err(Error::LengthMismatch { .. })),
            "length field {claim} > {true_len} accepted"
        );
    }
    for claim in 0..true_len {
        let claim16 = u16::try_from(claim).unwrap();
        lied[16..18].copy_from_slice(&claim16.to_be_bytes());
        if let Ok(out) = parse(&lied) {
            assert_eq!(
                out,
                &lied[..dix::HEADER_LEN + claim],
                "length field {claim}: parse used bytes beyond it"
            );
        }
    }
}
