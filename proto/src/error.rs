//! The one error type of the crate: every variant names the defect and the part it was found in.

/// Why bytes could not be parsed, or a message could not be emitted.
///
/// `what` fields name the part being read or written (e.g. `"DIX header"`,
/// `"FLOW_REQ name hash"`), so a log line says where a peer's frame went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input ends before `what` does: `need` bytes are required, only `have` are present.
    #[error("{what} truncated: need {need} bytes, have {have}")]
    Truncated {
        /// The part that was cut short.
        what: &'static str,
        /// Bytes the part needs.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// A length field claims more bytes than the input holds.
    #[error("{what} length field says {claimed} bytes, only {have} present")]
    LengthMismatch {
        /// The header whose length field lies.
        what: &'static str,
        /// The value of the length field.
        claimed: usize,
        /// Bytes actually present after the header.
        have: usize,
    },
    /// Bytes follow the end of a message that has a fixed size.
    #[error("{extra} unexpected bytes after {what}")]
    TrailingData {
        /// The message that should have ended.
        what: &'static str,
        /// How many bytes follow it.
        extra: usize,
    },
    /// A message is larger than its format allows (the reference drops such frames).
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// The message that is too large.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The largest length accepted.
        max: usize,
    },
    /// An eth-dix management message carries a code other than 0..=3.
    #[error("unknown management message code {0}")]
    UnknownCode(u8),
    /// A name hash length that no layer hash algorithm produces (valid: 28, 32, 48, 64).
    #[error("invalid name hash length {0} (expected 28, 32, 48 or 64)")]
    InvalidHashLen(usize),
    /// The output buffer is too small for the message being emitted.
    #[error("buffer too small to emit {what}: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// The message being emitted.
        what: &'static str,
        /// Bytes it needs.
        need: usize,
        /// Bytes the buffer has.
        have: usize,
    },
    /// An OAP header names an algorithm (OpenSSL NID) that is not a known cipher or digest.
    #[error("{what} {nid} is not a known algorithm")]
    UnknownNid {
        /// The field.
        what: &'static str,
        /// Its value.
        nid: u16,
    },
    /// Text that is not a MAC address of the form `aa:bb:cc:dd:ee:ff`.
    #[error("invalid MAC address (expected six hex octets such as 02:00:00:00:00:0a)")]
    InvalidMacAddr,
}
