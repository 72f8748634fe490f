//! The Ethernet DIX header of the eth-dix layer (18 bytes) and MAC addresses.
//!
//! ```text
//!  0  6  destination MAC
//!  6  6  source MAC
//! 12  2  EtherType (configured, default 0xA000)
//! 14  2  eid: the *receiver's* endpoint id; 0 = management
//! 16  2  length: payload bytes after this header
//! 18  n  payload
//! ```
//!
//! All multi-byte fields are big-endian. The `length` field is what recovers the payload when a
//! NIC pads a short frame to 60 bytes, so bytes after the payload are valid padding and are not
//! part of [`Frame::payload`].
//!
//! The EtherType is not checked here: which value the layer uses is configuration, and matching
//! it is the receiving IPCP's job.

use core::fmt;
use core::str::FromStr;

use crate::{Error, be_u16};

/// Length of the header: two MAC addresses, EtherType, eid and length.
pub const HEADER_LEN: usize = 18;
/// The eid of management frames ([`crate::eth_mgmt`] messages).
pub const MGMT_EID: u16 = 0;
/// The EtherType a layer uses unless configured otherwise.
pub const DEFAULT_ETHERTYPE: u16 = 0xA000;
/// Bytes of the eid and length fields, which the MTU must also carry.
const DIX_FIELDS_LEN: usize = 4;

/// The largest SDU an eth-dix layer carries over an interface of MTU `mtu`: `mtu - 4`, since the
/// eid and length fields travel inside the Ethernet payload. The reference drops larger SDUs.
/// Returns 0 for an MTU too small to carry anything.
#[must_use]
pub const fn max_sdu(mtu: usize) -> usize {
    mtu.saturating_sub(DIX_FIELDS_LEN)
}

/// Byte ranges of the header fields.
pub mod field {
    use core::ops::{Range, RangeFrom};

    /// Destination MAC address.
    pub const DST_ADDR: Range<usize> = 0..6;
    /// Source MAC address.
    pub const SRC_ADDR: Range<usize> = 6..12;
    /// EtherType.
    pub const ETHERTYPE: Range<usize> = 12..14;
    /// Destination endpoint id.
    pub const EID: Range<usize> = 14..16;
    /// Payload length.
    pub const LENGTH: Range<usize> = 16..18;
    /// Payload (and any padding after it).
    pub const PAYLOAD: RangeFrom<usize> = 18..;
}

/// A 48-bit Ethernet MAC address.
///
/// Displays and parses as six lower-case hex octets separated by colons: `02:00:00:00:00:0a`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`, the destination of NAME_QUERY_REQ.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Copies an address out of a 6-byte slice, or `None` for any other length.
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }

    /// The six octets.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    /// Whether this is the broadcast address.
    #[must_use]
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Whether the group bit is set (multicast, including broadcast).
    #[must_use]
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    /// Parses `aa:bb:cc:dd:ee:ff` (exactly two hex digits per octet, either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or(Error::InvalidMacAddr)?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(Error::InvalidMacAddr);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| Error::InvalidMacAddr)?;
        }
        if parts.next().is_some() {
            return Err(Error::InvalidMacAddr);
        }
        Ok(MacAddr(out))
    }
}

/// A read/write view of a DIX frame: header, payload and any padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checking it. Use on buffers about to be written, never on input.
    pub const fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wraps a received frame after [`check_len`](Self::check_len).
    ///
    /// # Errors
    /// As [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Frame<T>, Error> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Checks that the header is complete and that the length field does not claim more bytes
    /// than follow it. Bytes after the payload (NIC padding) are allowed.
    ///
    /// # Errors
    /// [`Error::Truncated`] for a runt (< 18 bytes), [`Error::LengthMismatch`] when the length
    /// field exceeds the bytes present.
    pub fn check_len(&self) -> Result<(), Error> {
        let have = self.buffer.as_ref().len();
        if have < HEADER_LEN {
            return Err(Error::Truncated {
                what: "DIX header",
                need: HEADER_LEN,
                have,
            });
        }
        let claimed = usize::from(self.length());
        if claimed > have - HEADER_LEN {
            return Err(Error::LengthMismatch {
                what: "DIX header",
                claimed,
                have: have - HEADER_LEN,
            });
        }
        Ok(())
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Destination MAC address.
    pub fn dst_addr(&self) -> MacAddr {
        let b = self.buffer.as_ref();
        MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// Source MAC address.
    pub fn src_addr(&self) -> MacAddr {
        let b = self.buffer.as_ref();
        MacAddr([b[6], b[7], b[8], b[9], b[10], b[11]])
    }

    /// EtherType.
    pub fn ethertype(&self) -> u16 {
        be_u16(self.buffer.as_ref(), field::ETHERTYPE.start)
    }

    /// Destination endpoint id; [`MGMT_EID`] for management frames.
    pub fn eid(&self) -> u16 {
        be_u16(self.buffer.as_ref(), field::EID.start)
    }

    /// The length field: payload bytes after the header.
    pub fn length(&self) -> u16 {
        be_u16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// Whether this frame carries a management message.
    pub fn is_mgmt(&self) -> bool {
        self.eid() == MGMT_EID
    }

    /// Header plus payload, without padding.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + usize::from(self.length())
    }

    /// The payload: exactly `length` bytes after the header, padding excluded.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.frame_len()]
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Frame<&'a T> {
    /// The payload with the lifetime of the underlying buffer rather than of the view.
    pub fn payload_ref(&self) -> &'a [u8] {
        let end = self.frame_len();
        &self.buffer.as_ref()[HEADER_LEN..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the destination MAC address.
    pub fn set_dst_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.0);
    }

    /// Sets the source MAC address.
    pub fn set_src_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.0);
    }

    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, ethertype: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&ethertype.to_be_bytes());
    }

    /// Sets the destination endpoint id.
    pub fn set_eid(&mut self, eid: u16) {
        self.buffer.as_mut()[field::EID].copy_from_slice(&eid.to_be_bytes());
    }

    /// Sets the length field.
    pub fn set_length(&mut self, length: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&length.to_be_bytes());
    }

    /// The payload, writable: exactly `length` bytes after the header.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.frame_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// The values of a DIX header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Destination MAC address.
    pub dst_addr: MacAddr,
    /// Source MAC address.
    pub src_addr: MacAddr,
    /// EtherType.
    pub ethertype: u16,
    /// Destination endpoint id ([`MGMT_EID`] for management).
    pub eid: u16,
    /// Payload bytes after the header.
    pub payload_len: u16,
}

impl Repr {
    /// Reads the header of a frame.
    ///
    /// # Errors
    /// As [`Frame::check_len`] (checked again, so an unchecked view is safe here).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(frame: &Frame<&T>) -> Result<Repr, Error> {
        frame.check_len()?;
        Ok(Repr {
            dst_addr: frame.dst_addr(),
            src_addr: frame.src_addr(),
            ethertype: frame.ethertype(),
            eid: frame.eid(),
            payload_len: frame.length(),
        })
    }

    /// Bytes of the header this emits: always [`HEADER_LEN`].
    #[must_use]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Header plus payload.
    #[must_use]
    pub const fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload_len as usize
    }

    /// Writes the header into the 18 bytes of headroom in front of an SDU: the TX path's
    /// in-place prepend. Every byte of `out` is written.
    pub fn emit_header(&self, out: &mut [u8; HEADER_LEN]) {
        out[field::DST_ADDR].copy_from_slice(&self.dst_addr.0);
        out[field::SRC_ADDR].copy_from_slice(&self.src_addr.0);
        out[field::ETHERTYPE].copy_from_slice(&self.ethertype.to_be_bytes());
        out[field::EID].copy_from_slice(&self.eid.to_be_bytes());
        out[field::LENGTH].copy_from_slice(&self.payload_len.to_be_bytes());
    }

    /// Writes the header into the first 18 bytes of `frame`, which holds (or will hold) the
    /// payload right after them. The payload bytes are not touched.
    ///
    /// # Errors
    /// [`Error::BufferTooSmall`] if `frame` is shorter than header plus `payload_len`, so the
    /// emitted frame could never pass [`Frame::check_len`].
    pub fn emit(&self, frame: &mut [u8]) -> Result<(), Error> {
        let need = self.frame_len();
        let have = frame.len();
        match frame
            .get_mut(..HEADER_LEN)
            .and_then(|h| <&mut [u8; HEADER_LEN]>::try_from(h).ok())
        {
            Some(header) if have >= need => {
                self.emit_header(header);
                Ok(())
            }
            _ => Err(Error::BufferTooSmall {
                what: "DIX frame",
                need,
                have,
            }),
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn max_sdu_matches_reference() {
        assert_eq!(max_sdu(1500), 1496);
        assert_eq!(max_sdu(9000), 8996);
        assert_eq!(max_sdu(65535), 65531);
        assert_eq!(max_sdu(3), 0);
    }

    #[test]
    fn mac_display_and_parse() {
        let mac = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
        assert_eq!(mac.to_string(), "02:00:00:00:00:0a");
        assert_eq!("02:00:00:00:00:0A".parse::<MacAddr>(), Ok(mac));
        assert_eq!(MacAddr::BROADCAST.to_string(), "ff:ff:ff:ff:ff:ff");
        assert!(MacAddr::BROADCAST.is_broadcast());
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(!mac.is_multicast());
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:0a:",
            "02:00:00:00:00:0a:0b",
            "2:00:00:00:00:0a",
            "+2:00:00:00:00:0a",
            "02-00-00-00-00-0a",
            "0g:00:00:00:00:0a",
            "002:00:00:00:00:0a",
        ] {
            assert_eq!(
                bad.parse::<MacAddr>(),
                Err(Error::InvalidMacAddr),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn emit_refuses_short_buffer() {
        let repr = Repr {
            dst_addr: MacAddr::BROADCAST,
            src_addr: MacAddr::default(),
            ethertype: DEFAULT_ETHERTYPE,
            eid: MGMT_EID,
            payload_len: 4,
        };
        let mut short = [0u8; HEADER_LEN + 3];
        assert_eq!(
            repr.emit(&mut short),
            Err(Error::BufferTooSmall {
                what: "DIX frame",
                need: 22,
                have: 21
            })
        );
        let mut runt = [0u8; 5];
        assert!(repr.emit(&mut runt).is_err());
    }
}
