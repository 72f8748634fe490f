//! The eth-dix management message: name queries and flow allocation, carried as the payload of
//! DIX frames to eid 0 ([`crate::dix::MGMT_EID`]).
//!
//! A fixed 39-byte part (packed, multi-byte fields big-endian) is followed by a body that
//! depends on the code:
//!
//! ```text
//!  0  2  seid          sender's endpoint (FLOW_REQ, FLOW_REPLY)
//!  2  2  deid          receiver's endpoint (FLOW_REPLY: the requester's seid)
//!  4  4  loss          \
//!  8  8  bandwidth      |
//! 16  4  ber            |  QoS spec, FLOW_REQ only
//! 20  4  max_gap        |
//! 24  4  delay          |
//! 28  4  timeout       /   (ms)
//! 32  4  response      (i32) FLOW_REPLY result, 0 = ok
//! 36  1  in_order      QoS spec, FLOW_REQ only
//! 37  1  code          0 FLOW_REQ, 1 FLOW_REPLY, 2 NAME_QUERY_REQ, 3 NAME_QUERY_REPLY
//! 38  1  availability  QoS spec, FLOW_REQ only
//! 39  ..  body          FLOW_REQ: name hash + OAP request; FLOW_REPLY: OAP response (may be
//!                       empty); NAME_QUERY_REQ / NAME_QUERY_REPLY: name hash
//! ```
//!
//! The hash length is the layer's (28, 32, 48 or 64 bytes: SHA3-224/256/384/512) and is not on
//! the wire, so [`MgmtMsg::parse`] takes it as a parameter.
//!
//! # Unused fields
//!
//! A field a code does not use should be zero, but the reference sends its messages from
//! uninitialised heap memory and reads only the fields the code uses, so a conforming peer may
//! put anything there. [`MgmtMsg::parse`] therefore ignores unused fields (they are not part of
//! the representation), and [`MgmtMsg::emit`] writes them as zero. Parsing then emitting is thus
//! exact for every message whose unused fields are zero, which includes every captured one.
//!
//! # Strictness
//!
//! * a payload longer than [`MAX_PAYLOAD`] (9000) bytes is rejected, as the reference drops it;
//! * a name query must hold exactly one hash; a FLOW_REQ at least one hash (the rest is OAP);
//! * an unknown code is rejected with [`Error::UnknownCode`].

use core::ops::Range;

use crate::{Error, be_u16, be_u32, be_u64};

/// Length of the fixed part of every management message.
pub const HEADER_LEN: usize = 39;
/// Largest management payload the reference accepts (`IPCP_ETH_MGMT_FRAME_SIZE`).
pub const MAX_PAYLOAD: usize = 9000;
/// The name hash lengths of the layer hash algorithms (SHA3-224, -256, -384, -512).
pub const HASH_LENS: [usize; 4] = [28, 32, 48, 64];

/// Byte ranges of the fixed part.
pub mod field {
    use core::ops::{Range, RangeFrom};

    /// Sender's endpoint id.
    pub const SEID: Range<usize> = 0..2;
    /// Receiver's endpoint id.
    pub const DEID: Range<usize> = 2..4;
    /// QoS: loss.
    pub const LOSS: Range<usize> = 4..8;
    /// QoS: bandwidth.
    pub const BANDWIDTH: Range<usize> = 8..16;
    /// QoS: bit error rate.
    pub const BER: Range<usize> = 16..20;
    /// QoS: maximum gap.
    pub const MAX_GAP: Range<usize> = 20..24;
    /// QoS: delay.
    pub const DELAY: Range<usize> = 24..28;
    /// QoS: timeout (ms).
    pub const TIMEOUT: Range<usize> = 28..32;
    /// FLOW_REPLY result (signed).
    pub const RESPONSE: Range<usize> = 32..36;
    /// QoS: in-order delivery (non-zero turns FRCT on).
    pub const IN_ORDER: usize = 36;
    /// Message code.
    pub const CODE: usize = 37;
    /// QoS: availability.
    pub const AVAILABILITY: usize = 38;
    /// Variable body.
    pub const BODY: RangeFrom<usize> = 39..;
}

/// Checks that `len` is the length of a layer name hash.
///
/// # Errors
/// [`Error::InvalidHashLen`] for anything but 28, 32, 48 or 64.
pub fn check_hash_len(len: usize) -> Result<(), Error> {
    if HASH_LENS.contains(&len) {
        Ok(())
    } else {
        Err(Error::InvalidHashLen(len))
    }
}

/// A management message code. Codes the reference does not define keep their value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// 0: flow allocation request.
    FlowReq,
    /// 1: flow allocation reply.
    FlowReply,
    /// 2: name query request (broadcast).
    NameQueryReq,
    /// 3: name query reply.
    NameQueryReply,
    /// Any other value.
    Unknown(u8),
}

impl From<u8> for Code {
    fn from(value: u8) -> Self {
        match value {
            0 => Code::FlowReq,
            1 => Code::FlowReply,
            2 => Code::NameQueryReq,
            3 => Code::NameQueryReply,
            other => Code::Unknown(other),
        }
    }
}

impl From<Code> for u8 {
    fn from(code: Code) -> Self {
        match code {
            Code::FlowReq => 0,
            Code::FlowReply => 1,
            Code::NameQueryReq => 2,
            Code::NameQueryReply => 3,
            Code::Unknown(other) => other,
        }
    }
}

impl Code {
    /// The byte ranges of the fixed part that this code uses; every other byte of the fixed
    /// part is unused (see the module doc) and emitted as zero.
    #[must_use]
    pub fn used_fields(self) -> &'static [Range<usize>] {
        const FLOW_REQ: &[Range<usize>] = &[
            field::SEID,
            // loss .. timeout are contiguous: 4..32
            field::LOSS.start..field::TIMEOUT.end,
            field::IN_ORDER..field::AVAILABILITY + 1,
        ];
        const FLOW_REPLY: &[Range<usize>] = &[
            field::SEID.start..field::DEID.end,
            field::RESPONSE,
            field::CODE..field::CODE + 1,
        ];
        #[expect(
            clippy::single_range_in_vec_init,
            reason = "a list of ranges that has one element, not a list of indices"
        )]
        const CODE_ONLY: &[Range<usize>] = &[field::CODE..field::CODE + 1];
        match self {
            Code::FlowReq => FLOW_REQ,
            Code::FlowReply => FLOW_REPLY,
            Code::NameQueryReq | Code::NameQueryReply | Code::Unknown(_) => CODE_ONLY,
        }
    }
}

/// The QoS specification a FLOW_REQ carries. The eth layers transport it but do not enforce it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct QosSpec {
    /// Acceptable loss.
    pub loss: u32,
    /// Bandwidth.
    pub bandwidth: u64,
    /// Bit error rate.
    pub ber: u32,
    /// Maximum gap.
    pub max_gap: u32,
    /// Delay.
    pub delay: u32,
    /// Timeout in ms.
    pub timeout: u32,
    /// In-order delivery; non-zero turns FRCT on for the flow. Kept as the byte on the wire.
    pub in_order: u8,
    /// Availability.
    pub availability: u8,
}

/// A read/write view of a management message: the exact payload of a DIX frame to eid 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it. Use on buffers about to be written, never on input.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a received message after [`check_len`](Self::check_len).
    ///
    /// # Errors
    /// As [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the fixed part is complete and that the message is not larger than
    /// [`MAX_PAYLOAD`]. The body is checked by [`MgmtMsg::parse`], which knows the hash length.
    ///
    /// # Errors
    /// [`Error::Truncated`] or [`Error::TooLong`].
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            Err(Error::Truncated {
                what: "management message",
                need: HEADER_LEN,
                have: len,
            })
        } else if len > MAX_PAYLOAD {
            Err(Error::TooLong {
                what: "management message",
                len,
                max: MAX_PAYLOAD,
            })
        } else {
            Ok(())
        }
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Sender's endpoint id.
    pub fn seid(&self) -> u16 {
        be_u16(self.buffer.as_ref(), field::SEID.start)
    }

    /// Receiver's endpoint id.
    pub fn deid(&self) -> u16 {
        be_u16(self.buffer.as_ref(), field::DEID.start)
    }

    /// The QoS fields.
    pub fn qos(&self) -> QosSpec {
        let b = self.buffer.as_ref();
        QosSpec {
            loss: be_u32(b, field::LOSS.start),
            bandwidth: be_u64(b, field::BANDWIDTH.start),
            ber: be_u32(b, field::BER.start),
            max_gap: be_u32(b, field::MAX_GAP.start),
            delay: be_u32(b, field::DELAY.start),
            timeout: be_u32(b, field::TIMEOUT.start),
            in_order: b[field::IN_ORDER],
            availability: b[field::AVAILABILITY],
        }
    }

    /// FLOW_REPLY result, 0 = success.
    pub fn response(&self) -> i32 {
        be_u32(self.buffer.as_ref(), field::RESPONSE.start).cast_signed()
    }

    /// Message code.
    pub fn code(&self) -> Code {
        Code::from(self.buffer.as_ref()[field::CODE])
    }

    /// Whether every byte of the fixed part that [`code`](Self::code) does not use is zero.
    pub fn unused_fields_zero(&self) -> bool {
        let fixed = &self.buffer.as_ref()[..HEADER_LEN];
        let used = self.code().used_fields();
        fixed
            .iter()
            .enumerate()
            .all(|(i, &b)| b == 0 || used.iter().any(|r| r.contains(&i)))
    }

    /// The variable body after the fixed part.
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[field::BODY]
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The body with the lifetime of the underlying buffer rather than of the view.
    pub fn body_ref(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::BODY]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the sender's endpoint id.
    pub fn set_seid(&mut self, eid: u16) {
        self.buffer.as_mut()[field::SEID].copy_from_slice(&eid.to_be_bytes());
    }

    /// Sets the receiver's endpoint id.
    pub fn set_deid(&mut self, eid: u16) {
        self.buffer.as_mut()[field::DEID].copy_from_slice(&eid.to_be_bytes());
    }

    /// Sets all QoS fields.
    pub fn set_qos(&mut self, qos: &QosSpec) {
        let b = self.buffer.as_mut();
        b[field::LOSS].copy_from_slice(&qos.loss.to_be_bytes());
        b[field::BANDWIDTH].copy_from_slice(&qos.bandwidth.to_be_bytes());
        b[field::BER].copy_from_slice(&qos.ber.to_be_bytes());
        b[field::MAX_GAP].copy_from_slice(&qos.max_gap.to_be_bytes());
        b[field::DELAY].copy_from_slice(&qos.delay.to_be_bytes());
        b[field::TIMEOUT].copy_from_slice(&qos.timeout.to_be_bytes());
        b[field::IN_ORDER] = qos.in_order;
        b[field::AVAILABILITY] = qos.availability;
    }

    /// Sets the FLOW_REPLY result.
    pub fn set_response(&mut self, response: i32) {
        self.buffer.as_mut()[field::RESPONSE].copy_from_slice(&response.to_be_bytes());
    }

    /// Sets the code.
    pub fn set_code(&mut self, code: Code) {
        self.buffer.as_mut()[field::CODE] = u8::from(code);
    }

    /// The body, writable.
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::BODY]
    }
}

/// A management message, its bodies borrowed from the received buffer.
///
/// Only the fields a code uses are represented; see the module doc on unused fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MgmtMsg<'a> {
    /// Code 0: allocate a flow to the name whose hash is `hash`.
    FlowReq {
        /// Requester's endpoint id (its fd for the flow).
        seid: u16,
        /// Requested QoS.
        qos: QosSpec,
        /// Hash of the destination name (layer hash length).
        hash: &'a [u8],
        /// OAP request bytes, opaque here.
        oap: &'a [u8],
    },
    /// Code 1: answer to a FLOW_REQ. Carries no hash.
    FlowReply {
        /// Responder's endpoint id.
        seid: u16,
        /// Requester's endpoint id (the seid of the request).
        deid: u16,
        /// Result, 0 = success.
        response: i32,
        /// OAP response bytes, opaque here; may be empty.
        oap: &'a [u8],
    },
    /// Code 2: who has the name whose hash is `hash`? Sent to broadcast.
    NameQueryReq {
        /// Hash of the name looked up.
        hash: &'a [u8],
    },
    /// Code 3: I have it. The sender's MAC becomes the directory entry.
    NameQueryReply {
        /// Hash of the name.
        hash: &'a [u8],
    },
}

impl<'a> MgmtMsg<'a> {
    /// Parses a checked view, for a layer whose name hashes are `hash_len` bytes long.
    ///
    /// # Errors
    /// [`Error::InvalidHashLen`], the errors of [`Packet::check_len`], [`Error::UnknownCode`],
    /// [`Error::Truncated`] when the body is shorter than a hash, and [`Error::TrailingData`]
    /// after the hash of a name query.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &Packet<&'a T>,
        hash_len: usize,
    ) -> Result<MgmtMsg<'a>, Error> {
        check_hash_len(hash_len)?;
        packet.check_len()?;
        let body = packet.body_ref();
        match packet.code() {
            Code::FlowReq => {
                let (hash, oap) = split_hash(body, hash_len, "FLOW_REQ name hash")?;
                Ok(MgmtMsg::FlowReq {
                    seid: packet.seid(),
                    qos: packet.qos(),
                    hash,
                    oap,
                })
            }
            Code::FlowReply => Ok(MgmtMsg::FlowReply {
                seid: packet.seid(),
                deid: packet.deid(),
                response: packet.response(),
                oap: body,
            }),
            Code::NameQueryReq => Ok(MgmtMsg::NameQueryReq {
                hash: exact_hash(body, hash_len, "NAME_QUERY_REQ name hash")?,
            }),
            Code::NameQueryReply => Ok(MgmtMsg::NameQueryReply {
                hash: exact_hash(body, hash_len, "NAME_QUERY_REPLY name hash")?,
            }),
            Code::Unknown(code) => Err(Error::UnknownCode(code)),
        }
    }

    /// Checks and parses a DIX payload in one step.
    ///
    /// # Errors
    /// As [`Packet::new_checked`] and [`parse`](Self::parse).
    pub fn parse_bytes(payload: &'a [u8], hash_len: usize) -> Result<MgmtMsg<'a>, Error> {
        Self::parse(&Packet::new_checked(payload)?, hash_len)
    }

    /// The code of this message.
    #[must_use]
    pub const fn code(&self) -> Code {
        match self {
            MgmtMsg::FlowReq { .. } => Code::FlowReq,
            MgmtMsg::FlowReply { .. } => Code::FlowReply,
            MgmtMsg::NameQueryReq { .. } => Code::NameQueryReq,
            MgmtMsg::NameQueryReply { .. } => Code::NameQueryReply,
        }
    }

    /// Bytes [`emit`](Self::emit) writes: the fixed part plus the body. This is also the DIX
    /// length of the frame carrying the message.
    #[must_use]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match self {
                MgmtMsg::FlowReq { hash, oap, .. } => hash.len() + oap.len(),
                MgmtMsg::FlowReply { oap, .. } => oap.len(),
                MgmtMsg::NameQueryReq { hash } | MgmtMsg::NameQueryReply { hash } => hash.len(),
            }
    }

    /// Writes the message into `buf[..self.buffer_len()]`, unused fields as zero, and returns
    /// the number of bytes written. Bytes of `buf` past that are not touched.
    ///
    /// # Errors
    /// [`Error::InvalidHashLen`] if a hash is not 28, 32, 48 or 64 bytes, [`Error::TooLong`]
    /// if the message would exceed [`MAX_PAYLOAD`] (a reference peer would drop it),
    /// [`Error::BufferTooSmall`] if `buf` is shorter than [`buffer_len`](Self::buffer_len).
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        match self {
            MgmtMsg::FlowReq { hash, .. }
            | MgmtMsg::NameQueryReq { hash }
            | MgmtMsg::NameQueryReply { hash } => check_hash_len(hash.len())?,
            MgmtMsg::FlowReply { .. } => {}
        }
        let len = self.buffer_len();
        if len > MAX_PAYLOAD {
            return Err(Error::TooLong {
                what: "management message",
                len,
                max: MAX_PAYLOAD,
            });
        }
        let have = buf.len();
        let Some(out) = buf.get_mut(..len) else {
            return Err(Error::BufferTooSmall {
                what: "management message",
                need: len,
                have,
            });
        };
        out[..HEADER_LEN].fill(0);
        let mut packet = Packet::new_unchecked(out);
        packet.set_code(self.code());
        match *self {
            MgmtMsg::FlowReq {
                seid,
                ref qos,
                hash,
                oap,
            } => {
                packet.set_seid(seid);
                packet.set_qos(qos);
                let body = packet.body_mut();
                body[..hash.len()].copy_from_slice(hash);
                body[hash.len()..].copy_from_slice(oap);
            }
            MgmtMsg::FlowReply {
                seid,
                deid,
                response,
                oap,
            } => {
                packet.set_seid(seid);
                packet.set_deid(deid);
                packet.set_response(response);
                packet.body_mut().copy_from_slice(oap);
            }
            MgmtMsg::NameQueryReq { hash } | MgmtMsg::NameQueryReply { hash } => {
                packet.body_mut().copy_from_slice(hash);
            }
        }
        Ok(len)
    }
}

/// Splits a hash of `hash_len` bytes off the front of `body`.
fn split_hash<'a>(
    body: &'a [u8],
    hash_len: usize,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), Error> {
    body.split_at_checked(hash_len).ok_or(Error::Truncated {
        what,
        need: hash_len,
        have: body.len(),
    })
}

/// Requires `body` to be exactly one hash of `hash_len` bytes.
fn exact_hash<'a>(body: &'a [u8], hash_len: usize, what: &'static str) -> Result<&'a [u8], Error> {
    let (hash, rest) = split_hash(body, hash_len, what)?;
    if rest.is_empty() {
        Ok(hash)
    } else {
        Err(Error::TrailingData {
            what,
            extra: rest.len(),
        })
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn code_round_trips_every_value() {
        for v in 0..=u8::MAX {
            assert_eq!(u8::from(Code::from(v)), v);
        }
        assert_eq!(Code::from(3), Code::NameQueryReply);
        assert_eq!(Code::from(4), Code::Unknown(4));
    }

    #[test]
    fn used_fields_stay_inside_the_fixed_part() {
        for code in [
            Code::FlowReq,
            Code::FlowReply,
            Code::NameQueryReq,
            Code::NameQueryReply,
        ] {
            for r in code.used_fields() {
                assert!(r.end <= HEADER_LEN);
            }
            assert!(code.used_fields().iter().any(|r| r.contains(&field::CODE)));
        }
    }

    #[test]
    fn hash_lengths() {
        for len in HASH_LENS {
            assert_eq!(check_hash_len(len), Ok(()));
        }
        for len in [0, 1, 20, 31, 33, 65, usize::MAX] {
            assert_eq!(check_hash_len(len), Err(Error::InvalidHashLen(len)));
        }
    }

    #[test]
    fn unknown_code_keeps_its_value() {
        let mut msg = [0u8; HEADER_LEN + 32];
        msg[field::CODE] = 0x7f;
        assert_eq!(
            MgmtMsg::parse_bytes(&msg, 32),
            Err(Error::UnknownCode(0x7f))
        );
    }

    #[test]
    fn oversized_payload_is_rejected() {
        let mut msg = vec![0u8; MAX_PAYLOAD + 1];
        msg[field::CODE] = 1;
        assert_eq!(
            MgmtMsg::parse_bytes(&msg, 32),
            Err(Error::TooLong {
                what: "management message",
                len: MAX_PAYLOAD + 1,
                max: MAX_PAYLOAD
            })
        );
        assert!(MgmtMsg::parse_bytes(&msg[..MAX_PAYLOAD], 32).is_ok());
        let big = MgmtMsg::FlowReply {
            seid: 1,
            deid: 2,
            response: 0,
            oap: &msg[..MAX_PAYLOAD - HEADER_LEN + 1],
        };
        let mut out = vec![0u8; MAX_PAYLOAD + 1];
        assert!(matches!(big.emit(&mut out), Err(Error::TooLong { .. })));
    }
}
