//! Fuzz oracles, shared by the `cargo fuzz` targets in `proto/fuzz/` and by the test suite.
//!
//! Each oracle parses arbitrary bytes and, when they parse, re-emits the representation into a
//! buffer filled with garbage and compares it with the bytes that were consumed. It panics only
//! when that invariant breaks (or when the parser itself panics): any panic is a bug.
//! Not a stable API.

use crate::dix::{self, Frame};
use crate::eth_mgmt::{self, MgmtMsg, Packet};
use crate::irm;
use crate::oap;

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

/// Outcome of decoding a whole byte stream with an [`irm::FrameDecoder`].
#[derive(Debug, PartialEq)]
struct IrmStream {
    /// One entry per frame: its envelope, or why it did not decode. Ends at the first framing
    /// error.
    frames: Vec<Result<irm::Envelope, irm::FrameError>>,
    /// What `finish` said at the end of the stream.
    end: Result<(), irm::FrameError>,
}

/// Feeds `stream` to a fresh decoder `chunk` bytes at a time, checking its bounds as it goes.
fn irm_decode_stream(stream: &[u8], chunk: usize) -> IrmStream {
    let mut decoder = irm::FrameDecoder::new();
    let mut frames = Vec::new();
    'feed: for piece in stream.chunks(chunk.max(1)) {
        let mut input = piece;
        loop {
            let before = input.len();
            let out = decoder.decode(&mut input);
            assert!(
                decoder.buffered() <= irm::LEN_PREFIX + irm::MAX_FRAME,
                "decoder buffered {} bytes",
                decoder.buffered()
            );
            match out {
                Ok(None) => {
                    assert!(input.is_empty(), "Ok(None) with input left");
                    break;
                }
                Ok(Some(envelope)) => frames.push(Ok(envelope)),
                Err(e @ irm::FrameError::TooLong { .. }) => {
                    assert!(decoder.has_failed());
                    frames.push(Err(e));
                    break 'feed;
                }
                Err(e) => frames.push(Err(e)),
            }
            assert!(
                input.len() < before,
                "a frame was yielded without consuming input"
            );
            if input.is_empty() {
                break;
            }
        }
    }
    IrmStream {
        frames,
        end: decoder.finish(),
    }
}

/// Oracle for [`irm`] framing and envelopes. The first byte of `data` picks a chunk size; the
/// rest is a byte stream from a client. Decoding it in chunks yields exactly what decoding it
/// whole does; the decoder never buffers more than one bounded frame; every decoded envelope
/// re-encodes (unless its canonical encoding exceeds [`irm::MAX_FRAME`], which the codec must
/// then refuse) and decodes back to itself.
///
/// # Panics
/// On any violation of the invariant.
pub fn irm(data: &[u8]) {
    use prost::Message as _;

    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let whole = irm_decode_stream(stream, stream.len());
    let chunked = irm_decode_stream(stream, usize::from(first) + 1);
    assert_eq!(whole, chunked, "chunking changed the decoded stream");

    for envelope in whole.frames.iter().flatten() {
        let len = envelope.encoded_len();
        match irm::Codec::encode_to_vec(envelope) {
            Ok(bytes) => {
                assert!(len <= irm::MAX_FRAME, "codec wrote a {len}-byte envelope");
                assert_eq!(bytes.len(), irm::LEN_PREFIX + len);
                let again = irm_decode_stream(&bytes, bytes.len());
                assert_eq!(again.end, Ok(()));
                assert_eq!(
                    again.frames,
                    vec![Ok(envelope.clone())],
                    "re-encoded envelope decodes differently"
                );
            }
            Err(irm::FrameError::TooLong { len: l, .. }) => {
                assert_eq!(l, len);
                assert!(len > irm::MAX_FRAME, "codec refused a {len}-byte envelope");
            }
            Err(e) => panic!("codec failed on a decoded envelope: {e}"),
        }
    }
}

/// Oracle for [`oap`]: the first byte of `data` picks how the rest is read (a request, or a
/// response to a request of `md_nid` 0, SHA-256 or SHA-512). A header that parses re-emits to
/// exactly the input (into a buffer of garbage, writing nothing past it) and parses back to
/// itself; its parts add up to the input's length.
///
/// # Panics
/// On any violation of the invariant.
pub fn oap(data: &[u8]) {
    let Some((&first, bytes)) = data.split_first() else {
        return;
    };
    let md_nid = match first % 4 {
        0 => None,
        1 => Some(oap::nid::UNDEF),
        2 => Some(oap::nid::SHA256),
        _ => Some(oap::nid::SHA512),
    };
    let parsed = match md_nid {
        None => oap::Repr::parse_request(bytes),
        Some(md) => oap::Repr::parse_response(bytes, md),
    };
    let Ok(repr) = parsed else {
        return;
    };
    assert_eq!(repr.buffer_len(), bytes.len(), "parts do not add up");
    assert_eq!(
        repr.req_hash.len(),
        md_nid.map_or(0, |md| oap::req_hash_len(md).unwrap_or(usize::MAX)),
        "request hash of the wrong length"
    );
    assert!(
        repr.is_signed() || repr.signature.is_empty(),
        "an unsigned header with a signature"
    );
    let mut out = vec![FILL; bytes.len() + 5];
    match repr.emit(&mut out) {
        Ok(n) => assert_eq!(n, bytes.len()),
        Err(e) => panic!("emit refused a header it parsed: {e}"),
    }
    assert_eq!(&out[..bytes.len()], bytes, "re-emitted OAP header differs");
    assert!(
        out[bytes.len()..].iter().all(|&b| b == FILL),
        "emit wrote past buffer_len"
    );
}
