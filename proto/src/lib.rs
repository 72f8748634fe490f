//! Every o7s wire format, pure: views with checked lengths and parse/emit representations, no I/O.
//!
//! This crate opens no file descriptor, reads no clock and holds no state, so every daemon and
//! every fuzzer can link it. It is byte-compatible with the reference implementation
//! (Ouroboros 0.23) on everything that crosses a network.
//!
//! # Implemented formats
//!
//! | module | format |
//! |---|---|
//! | [`dix`] | the 18-byte Ethernet DIX header of the eth-dix layer, and [`MacAddr`] |
//! | [`eth_mgmt`] | the eth-dix management message (name queries, flow allocation) |
//! | [`oap`] | the OAP header of the IRMds' flow allocation handshake, carried by every layer |
//!
//! # The contract of every format module
//!
//! Each header has two faces:
//!
//! * a **view** (`Frame<T>`, `Packet<T>`) that wraps a borrowed buffer `T: AsRef<[u8]>` and
//!   reads fields in place through a `field` module of `Range<usize>` constants. Setters exist
//!   only when `T: AsMut<[u8]>`.
//!   - `new_checked` (= `new_unchecked` + `check_len`) is **required** on untrusted input: after
//!     it succeeds, no getter can panic.
//!   - `new_checked` is **wrong** on emit: pool buffers are always reused, so the bytes of a
//!     buffer about to be written are stale and say nothing. Wrap them with `new_unchecked`, or
//!     use the `Repr` emit functions directly.
//!   - getters on a view made with `new_unchecked` over a buffer that `check_len` would refuse
//!     may panic; that is a programming error, never a property of the input.
//! * a small **representation** (`Repr`, [`eth_mgmt::MgmtMsg`]) of valid values with `parse`,
//!   `emit` and `buffer_len`. `parse` validates everything it keeps; `emit` returns an error
//!   instead of panicking when the buffer is too small, and writes every byte of the message
//!   (a buffer pre-filled with garbage comes out identical to a fresh one).
//!
//! No function in this crate panics on any input bytes. Errors are one [`Error`] enum that
//! names the defect.
//!
//! # Example
//!
//! Emit a DIX header in front of an SDU, then parse the frame back:
//!
//! ```
//! use o7s_proto::dix::{self, Frame, MacAddr, Repr};
//!
//! let sdu = b"hello";
//! let repr = Repr {
//!     dst_addr: MacAddr([0x02, 0, 0, 0, 0, 0x0b]),
//!     src_addr: MacAddr([0x02, 0, 0, 0, 0, 0x0a]),
//!     ethertype: dix::DEFAULT_ETHERTYPE,
//!     eid: 64,
//!     payload_len: sdu.len() as u16,
//! };
//! let mut buf = [0xa5u8; dix::HEADER_LEN + 5];
//! buf[dix::HEADER_LEN..].copy_from_slice(sdu);
//! repr.emit(&mut buf)?;
//!
//! let frame = Frame::new_checked(&buf[..])?;
//! assert_eq!(Repr::parse(&frame)?, repr);
//! assert_eq!(frame.payload(), sdu);
//! # Ok::<(), o7s_proto::Error>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dix;
mod error;
pub mod eth_mgmt;
#[doc(hidden)]
pub mod fuzzing;
pub mod irm;
pub mod oap;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use dix::MacAddr;
pub use error::Error;

/// Reads a big-endian `u16` at `at`. The caller has checked the length.
fn be_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

/// Reads a big-endian `u32` at `at`. The caller has checked the length.
fn be_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Reads a big-endian `u64` at `at`. The caller has checked the length.
fn be_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}
