//! Helpers shared by the integration tests: captured vectors and the truncation sweep.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::PathBuf;

use o7s_proto::Error;
use o7s_proto::dix::{self, Frame};
use o7s_proto::eth_mgmt::MgmtMsg;

/// Hash length of the captured layer (SHA3-256).
pub const HASH_LEN: usize = 32;

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// Decodes a `.hex` vector: `#` starts a comment, whitespace is ignored.
pub fn decode_hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.bytes().filter(|b| !b.is_ascii_whitespace()))
        .collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits
        .chunks(2)
        .map(|p| {
            let s = std::str::from_utf8(p).unwrap();
            u8::from_str_radix(s, 16).unwrap_or_else(|_| panic!("bad hex {s:?}"))
        })
        .collect()
}

/// One captured frame, by file stem (e.g. `alloc-07`).
pub fn vector(name: &str) -> Vec<u8> {
    let path = vectors_dir().join(format!("{name}.hex"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    decode_hex(&text)
}

/// Every captured frame, sorted by name.
pub fn all_vectors() -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<String> = std::fs::read_dir(vectors_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hex"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no vectors found");
    names.into_iter().map(|n| (n.clone(), vector(&n))).collect()
}

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
