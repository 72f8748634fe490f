//! Fuzz oracles, shared by the `cargo fuzz` targets in `proto/fuzz/` and by the test suite.
//!
//! Each oracle parses arbitrary bytes and, when they parse, re-emits the representation into a
//! buffer filled with garbage and compares it with the bytes that were consumed. It panics only
//! when that invariant breaks (or when the parser itself panics): any panic is a bug.
//! Not a stable API.

use crate::dix::{self, Frame};
use crate::eth_mgmt::{self, MgmtMsg, Packet};

/// Garbage a buffer is filled with before emitting into it, to catch unwritten bytes.
const FILL: u8 = 0xa5;

/// Oracle for [`dix`]: a frame that passes `check_len` re-emits to the same header, and its
/// payload is exactly the `length` bytes after the header.
///
/// # Panics
/// On any violation of the invariant.
pub fn dix(data: &[u8]) {
    let Ok(frame) = Frame::new_checked(data) else {
        return;
    };
    let repr = match dix::Repr::parse(&frame) {
        Ok(repr) => repr,
        Err(e) => panic!("check_len accepted a frame that parse refused: {e}"),
    };
    let consumed = repr.frame_len();
    assert!(consumed <= data.len(), "consumed past the input");
    assert_eq!(frame.frame_len(), consumed);
    assert_eq!(frame.payload(), &data[dix::HEADER_LEN..consumed]);

    let mut out = vec![FILL; consumed];
    out[dix::HEADER_LEN..].copy_from_slice(frame.payload());
    if let Err(e) = repr.emit(&mut out) {
        panic!("emit refused a buffer of frame_len bytes: {e}");
    }
    assert_eq!(out, &data[..consumed], "re-emitted DIX frame differs");
}

/// Oracle for [`eth_mgmt`]: `data` is a whole DIX frame, its payload is parsed as a management
/// message under each valid hash length. A message that parses consumes the whole payload and
/// re-emits to it, except that unused fields (see [`eth_mgmt`]) come out as zero; parsing the
/// re-emitted bytes gives the same message.
///
/// # Panics
/// On any violation of the invariant.
pub fn eth_mgmt(data: &[u8]) {
    let Ok(frame) = Frame::new_checked(data) else {
        return;
    };
    let payload = frame.payload();
    for hash_len in eth_mgmt::HASH_LENS {
        eth_mgmt_payload(payload, hash_len);
    }
}

/// The [`eth_mgmt`] oracle for one management payload and one hash length.
///
/// # Panics
/// On any violation of the invariant.
pub fn eth_mgmt_payload(payload: &[u8], hash_len: usize) {
    let Ok(msg) = MgmtMsg::parse_bytes(payload, hash_len) else {
        return;
    };
    assert_eq!(
        msg.buffer_len(),
        payload.len(),
        "message did not consume the payload"
    );

    let mut expected = payload.to_vec();
    let used = msg.code().used_fields();
    for (i, b) in expected[..eth_mgmt::HEADER_LEN].iter_mut().enumerate() {
        if !used.iter().any(|r| r.contains(&i)) {
            *b = 0;
        }
    }

    let mut out = vec![FILL; payload.len() + 7];
    match msg.emit(&mut out) {
        Ok(n) => assert_eq!(n, payload.len()),
        Err(e) => panic!("emit refused a message it parsed: {e}"),
    }
    assert_eq!(
        &out[..payload.len()],
        &expected[..],
        "re-emitted message differs"
    );
    assert!(
        out[payload.len()..].iter().all(|&b| b == FILL),
        "emit wrote past buffer_len"
    );
    assert!(Packet::new_unchecked(&expected[..]).unused_fields_zero());

    match MgmtMsg::parse_bytes(&out[..payload.len()], hash_len) {
        Ok(again) => assert_eq!(again, msg, "re-parsed message differs"),
        Err(e) => panic!("re-emitted message does not parse: {e}"),
    }
}
