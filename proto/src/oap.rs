//! The OAP header: the flow allocation security handshake of the IRMds, carried as the opaque
//! piggyback of a flow allocation through every layer (FLOW_REQ / FLOW_REPLY of eth-dix).
//!
//! The allocating IRMd sends a *request*, the accepting IRMd answers with a *response*. Both
//! have the same layout (all integers big-endian):
//!
//! ```text
//!  0 16  id          random per allocation; the response echoes the request's
//! 16  8  timestamp   CLOCK_REALTIME, ns since the Unix epoch
//! 24  2  cipher_nid  OpenSSL NID, 0 = none
//! 26  2  kdf_nid     OpenSSL NID of a digest, 0 = none
//! 28  2  md_nid      signature digest, 0 = none (the request hash is then SHA-384)
//! 30  2  crt_len
//! 32  2  kex         bit 15 F (raw key format), bit 14 R (client encapsulates), bits 0-13 kex_len
//! 34  2  data_len
//! 36 ..  crt (crt_len), kex (kex_len), data (data_len),
//!        response only: req_hash (digest size of the request's md_nid, SHA-384's 48 when 0),
//!        signature: every remaining byte
//! ```
//!
//! The signature has no length field: it is whatever follows. An unsigned header (`crt_len` 0)
//! must therefore end right after its data (request) or request hash (response); a trailing
//! byte is an error, as in the reference. The length of the request hash is not on the wire
//! either, so parsing a response needs the request's `md_nid` ([`req_hash_len`]).
//!
//! Without certificates or key exchange (the only kind o7s builds today) a request is exactly
//! [`FIXED_LEN`] (36) bytes and its response 84: the fixed part and SHA-384 of the request.
//!
//! # Strictness
//!
//! Parsing refuses, as the reference's decoder does: input shorter than the fixed part, lengths
//! that run past the input, trailing bytes after an unsigned header, and a non-zero NID that is
//! not a known cipher (`cipher_nid`) or digest (`kdf_nid`, `md_nid`). Emitting refuses what
//! would not parse back the same.

use core::ops::{Range, RangeFrom};

use crate::{Error, be_u16, be_u64};

/// Length of the fixed part of every header.
pub const FIXED_LEN: usize = 36;
/// Length of the id.
pub const ID_LEN: usize = 16;
/// The kex field's format flag F: the key is raw (hybrid KEM), not DER.
pub const KEX_FMT_BIT: u16 = 0x8000;
/// The kex field's role flag R: the client encapsulates (KEM only).
pub const KEX_ROLE_BIT: u16 = 0x4000;
/// The kex field's length bits.
pub const KEX_LEN_MASK: u16 = 0x3fff;
/// Longest key-exchange part (14 bits).
pub const MAX_KEX_LEN: usize = KEX_LEN_MASK as usize;
/// Length of the request hash when the request's `md_nid` is 0: SHA-384.
pub const DEFAULT_REQ_HASH_LEN: usize = 48;

/// Byte ranges of the fixed part.
pub mod field {
    use core::ops::{Range, RangeFrom};

    /// Random id of the allocation.
    pub const ID: Range<usize> = 0..16;
    /// CLOCK_REALTIME in ns.
    pub const TIMESTAMP: Range<usize> = 16..24;
    /// Cipher NID.
    pub const CIPHER_NID: Range<usize> = 24..26;
    /// Key derivation digest NID.
    pub const KDF_NID: Range<usize> = 26..28;
    /// Signature digest NID.
    pub const MD_NID: Range<usize> = 28..30;
    /// Certificate length.
    pub const CRT_LEN: Range<usize> = 30..32;
    /// Key-exchange flags and length.
    pub const KEX: Range<usize> = 32..34;
    /// Piggybacked data length.
    pub const DATA_LEN: Range<usize> = 34..36;
    /// Everything after the fixed part.
    pub const VARIABLE: RangeFrom<usize> = 36..;
}

/// The OpenSSL NIDs the reference knows (and so accepts in a header).
pub mod nid {
    /// No algorithm.
    pub const UNDEF: u16 = 0;
    /// aes-128-gcm.
    pub const AES_128_GCM: u16 = 895;
    /// aes-192-gcm.
    pub const AES_192_GCM: u16 = 898;
    /// aes-256-gcm.
    pub const AES_256_GCM: u16 = 901;
    /// aes-128-ctr.
    pub const AES_128_CTR: u16 = 904;
    /// aes-192-ctr.
    pub const AES_192_CTR: u16 = 905;
    /// aes-256-ctr.
    pub const AES_256_CTR: u16 = 906;
    /// chacha20-poly1305.
    pub const CHACHA20_POLY1305: u16 = 1018;
    /// sha256.
    pub const SHA256: u16 = 672;
    /// sha384.
    pub const SHA384: u16 = 673;
    /// sha512.
    pub const SHA512: u16 = 674;
    /// sha3-256.
    pub const SHA3_256: u16 = 1096;
    /// sha3-384.
    pub const SHA3_384: u16 = 1097;
    /// sha3-512.
    pub const SHA3_512: u16 = 1098;
    /// blake2b512.
    pub const BLAKE2B512: u16 = 1056;
    /// blake2s256.
    pub const BLAKE2S256: u16 = 1057;

    /// The known ciphers.
    pub const CIPHERS: [u16; 7] = [
        AES_128_GCM,
        AES_192_GCM,
        AES_256_GCM,
        AES_128_CTR,
        AES_192_CTR,
        AES_256_CTR,
        CHACHA20_POLY1305,
    ];

    /// Whether `nid` is a cipher the reference knows.
    #[must_use]
    pub fn is_cipher(nid: u16) -> bool {
        CIPHERS.contains(&nid)
    }

    /// The output length of a known digest, `None` for anything else (0 included).
    #[must_use]
    pub const fn digest_len(nid: u16) -> Option<usize> {
        match nid {
            SHA256 | SHA3_256 | BLAKE2S256 => Some(32),
            SHA384 | SHA3_384 => Some(48),
            SHA512 | SHA3_512 | BLAKE2B512 => Some(64),
            _ => None,
        }
    }
}

/// The length of the request hash in a response to a request whose `md_nid` is `req_md_nid`:
/// the digest's size, or SHA-384's (48) when it is 0.
///
/// # Errors
/// [`Error::UnknownNid`] for a non-zero NID that is not a known digest.
pub fn req_hash_len(req_md_nid: u16) -> Result<usize, Error> {
    if req_md_nid == nid::UNDEF {
        return Ok(DEFAULT_REQ_HASH_LEN);
    }
    nid::digest_len(req_md_nid).ok_or(Error::UnknownNid {
        what: "OAP request md_nid",
        nid: req_md_nid,
    })
}

/// Checks the three NIDs of a header.
fn check_nids(cipher: u16, kdf: u16, md: u16) -> Result<(), Error> {
    if cipher != nid::UNDEF && !nid::is_cipher(cipher) {
        return Err(Error::UnknownNid {
            what: "OAP cipher_nid",
            nid: cipher,
        });
    }
    for (what, n) in [("OAP kdf_nid", kdf), ("OAP md_nid", md)] {
        if n != nid::UNDEF && nid::digest_len(n).is_none() {
            return Err(Error::UnknownNid { what, nid: n });
        }
    }
    Ok(())
}

/// Where the variable parts of a header lie, computed by [`Header::check_len`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    crt: Range<usize>,
    kex: Range<usize>,
    data: Range<usize>,
    req_hash: Range<usize>,
    signature: RangeFrom<usize>,
}

/// A read/write view of one OAP header: the whole piggyback of a flow allocation message.
///
/// `req_hash_len` is 0 for a request and [`req_hash_len`] of the request for a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
    req_hash_len: usize,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wraps a buffer without checking it. Use on buffers about to be written, never on input.
    pub const fn new_unchecked(buffer: T, req_hash_len: usize) -> Header<T> {
        Header {
            buffer,
            req_hash_len,
        }
    }

    /// Wraps a received header after [`check_len`](Self::check_len).
    ///
    /// # Errors
    /// As [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T, req_hash_len: usize) -> Result<Header<T>, Error> {
        let header = Self::new_unchecked(buffer, req_hash_len);
        header.check_len()?;
        Ok(header)
    }

    /// A request (no request hash), checked.
    ///
    /// # Errors
    /// As [`check_len`](Self::check_len).
    pub fn request(buffer: T) -> Result<Header<T>, Error> {
        Self::new_checked(buffer, 0)
    }

    /// A response to a request whose `md_nid` is `req_md_nid`, checked.
    ///
    /// # Errors
    /// As [`req_hash_len`] and [`check_len`](Self::check_len).
    pub fn response(buffer: T, req_md_nid: u16) -> Result<Header<T>, Error> {
        Self::new_checked(buffer, req_hash_len(req_md_nid)?)
    }

    /// Checks that the fixed part is complete, that the variable parts and the request hash fit
    /// the buffer, that an unsigned header has nothing after them, and that the NIDs are known.
    /// After it succeeds no getter panics.
    ///
    /// # Errors
    /// [`Error::Truncated`] (fixed part), [`Error::LengthMismatch`] (the length fields and the
    /// request hash need more bytes than present), [`Error::TrailingData`] (bytes after an
    /// unsigned header), [`Error::UnknownNid`].
    pub fn check_len(&self) -> Result<(), Error> {
        self.layout().map(drop)
    }

    fn layout(&self) -> Result<Layout, Error> {
        let b = self.buffer.as_ref();
        if b.len() < FIXED_LEN {
            return Err(Error::Truncated {
                what: "OAP header",
                need: FIXED_LEN,
                have: b.len(),
            });
        }
        check_nids(
            be_u16(b, field::CIPHER_NID.start),
            be_u16(b, field::KDF_NID.start),
            be_u16(b, field::MD_NID.start),
        )?;
        let crt_len = usize::from(be_u16(b, field::CRT_LEN.start));
        let kex_len = usize::from(be_u16(b, field::KEX.start) & KEX_LEN_MASK);
        let data_len = usize::from(be_u16(b, field::DATA_LEN.start));
        // At most 3 * 65535 + a digest: no overflow.
        let claimed = crt_len + kex_len + data_len + self.req_hash_len;
        let have = b.len() - FIXED_LEN;
        if claimed > have {
            return Err(Error::LengthMismatch {
                what: "OAP header",
                claimed,
                have,
            });
        }
        if crt_len == 0 && claimed < have {
            return Err(Error::TrailingData {
                what: "unsigned OAP header",
                extra: have - claimed,
            });
        }
        let crt = FIXED_LEN..FIXED_LEN + crt_len;
        let kex = crt.end..crt.end + kex_len;
        let data = kex.end..kex.end + data_len;
        let req_hash = data.end..data.end + self.req_hash_len;
        let signature = req_hash.end..;
        Ok(Layout {
            crt,
            kex,
            data,
            req_hash,
            signature,
        })
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The id.
    pub fn id(&self) -> [u8; ID_LEN] {
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&self.buffer.as_ref()[field::ID]);
        id
    }

    /// The timestamp, ns since the Unix epoch.
    pub fn timestamp(&self) -> u64 {
        be_u64(self.buffer.as_ref(), field::TIMESTAMP.start)
    }

    /// The cipher NID.
    pub fn cipher_nid(&self) -> u16 {
        be_u16(self.buffer.as_ref(), field::CIPHER_NID.start)
    }

    /// The key derivation digest NID.
    pub fn kdf_nid(&self) -> u16 {
        be_u16(self.buffer.as_ref(), field::KDF_NID.start)
    }

    /// The signature digest NID.
    pub fn md_nid(&self) -> u16 {
        be_u16(self.buffer.as_ref(), field::MD_NID.start)
    }

    /// The certificate's length.
    pub fn crt_len(&self) -> usize {
        usize::from(be_u16(self.buffer.as_ref(), field::CRT_LEN.start))
    }

    /// The raw kex field: flags and length.
    pub fn kex_field(&self) -> u16 {
        be_u16(self.buffer.as_ref(), field::KEX.start)
    }

    /// The key-exchange part's length.
    pub fn kex_len(&self) -> usize {
        usize::from(self.kex_field() & KEX_LEN_MASK)
    }

    /// The piggybacked data's length.
    pub fn data_len(&self) -> usize {
        usize::from(be_u16(self.buffer.as_ref(), field::DATA_LEN.start))
    }

    /// The length of the request hash this view expects (0: a request).
    pub const fn req_hash_len(&self) -> usize {
        self.req_hash_len
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Header<&'a T> {
    /// The variable parts, with the lifetime of the buffer. The view must have been checked.
    fn parts(&self) -> Result<(Layout, &'a [u8]), Error> {
        let layout = self.layout()?;
        Ok((layout, self.buffer.as_ref()))
    }
}

/// A parsed header: its values, its variable parts borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr<'a> {
    /// Random id of the allocation; a response echoes the request's.
    pub id: [u8; ID_LEN],
    /// CLOCK_REALTIME in ns when the header was made.
    pub timestamp: u64,
    /// Cipher NID, 0 = none.
    pub cipher_nid: u16,
    /// Key derivation digest NID, 0 = none.
    pub kdf_nid: u16,
    /// Signature digest NID, 0 = none.
    pub md_nid: u16,
    /// Flag F: the key-exchange part is a raw key (hybrid KEM), not DER.
    pub kex_raw: bool,
    /// Flag R: the client encapsulates (KEM).
    pub kex_client_encap: bool,
    /// X.509 certificate, DER; empty: the header is unsigned.
    pub crt: &'a [u8],
    /// Public key or KEM ciphertext; empty: no key exchange.
    pub kex: &'a [u8],
    /// Piggybacked application data.
    pub data: &'a [u8],
    /// Response only: the hash of the whole request. Empty in a request.
    pub req_hash: &'a [u8],
    /// Signature over every byte before it; empty in an unsigned header.
    pub signature: &'a [u8],
}

impl<'a> Repr<'a> {
    /// An unsigned request without key exchange or data: what o7s sends today.
    #[must_use]
    pub const fn request(id: [u8; ID_LEN], timestamp: u64) -> Repr<'a> {
        Repr {
            id,
            timestamp,
            cipher_nid: nid::UNDEF,
            kdf_nid: nid::UNDEF,
            md_nid: nid::UNDEF,
            kex_raw: false,
            kex_client_encap: false,
            crt: &[],
            kex: &[],
            data: &[],
            req_hash: &[],
            signature: &[],
        }
    }

    /// An unsigned response without key exchange or data, carrying the request's hash.
    #[must_use]
    pub const fn response(id: [u8; ID_LEN], timestamp: u64, req_hash: &'a [u8]) -> Repr<'a> {
        Repr {
            req_hash,
            ..Repr::request(id, timestamp)
        }
    }

    /// Parses a checked view.
    ///
    /// # Errors
    /// As [`Header::check_len`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(header: &Header<&'a T>) -> Result<Repr<'a>, Error> {
        let (layout, b) = header.parts()?;
        let kex = header.kex_field();
        Ok(Repr {
            id: header.id(),
            timestamp: header.timestamp(),
            cipher_nid: header.cipher_nid(),
            kdf_nid: header.kdf_nid(),
            md_nid: header.md_nid(),
            kex_raw: kex & KEX_FMT_BIT != 0,
            kex_client_encap: kex & KEX_ROLE_BIT != 0,
            crt: &b[layout.crt],
            kex: &b[layout.kex],
            data: &b[layout.data],
            req_hash: &b[layout.req_hash],
            signature: &b[layout.signature],
        })
    }

    /// Parses a request.
    ///
    /// # Errors
    /// As [`Header::check_len`].
    pub fn parse_request(bytes: &'a [u8]) -> Result<Repr<'a>, Error> {
        Self::parse(&Header::request(bytes)?)
    }

    /// Parses a response to a request whose `md_nid` was `req_md_nid`.
    ///
    /// # Errors
    /// As [`req_hash_len`] and [`Header::check_len`].
    pub fn parse_response(bytes: &'a [u8], req_md_nid: u16) -> Result<Repr<'a>, Error> {
        Self::parse(&Header::response(bytes, req_md_nid)?)
    }

    /// Whether it carries a certificate (and so a signature).
    #[must_use]
    pub const fn is_signed(&self) -> bool {
        !self.crt.is_empty()
    }

    /// Bytes [`emit`](Self::emit) writes.
    #[must_use]
    pub const fn buffer_len(&self) -> usize {
        FIXED_LEN
            + self.crt.len()
            + self.kex.len()
            + self.data.len()
            + self.req_hash.len()
            + self.signature.len()
    }

    /// Checks that the header can be emitted and parses back the same.
    fn check(&self) -> Result<(u16, u16, u16), Error> {
        check_nids(self.cipher_nid, self.kdf_nid, self.md_nid)?;
        let too_long = |what, len: usize, max: usize| Error::TooLong { what, len, max };
        let crt = u16::try_from(self.crt.len())
            .map_err(|_| too_long("OAP certificate", self.crt.len(), usize::from(u16::MAX)))?;
        if self.kex.len() > MAX_KEX_LEN {
            return Err(too_long("OAP key exchange", self.kex.len(), MAX_KEX_LEN));
        }
        let data = u16::try_from(self.data.len())
            .map_err(|_| too_long("OAP data", self.data.len(), usize::from(u16::MAX)))?;
        if crt == 0 && !self.signature.is_empty() {
            return Err(Error::TrailingData {
                what: "unsigned OAP header (a signature without a certificate)",
                extra: self.signature.len(),
            });
        }
        // Checked above: at most 14 bits.
        let mut kex = self.kex.len() as u16;
        if self.kex_raw {
            kex |= KEX_FMT_BIT;
        }
        if self.kex_client_encap {
            kex |= KEX_ROLE_BIT;
        }
        Ok((crt, kex, data))
    }

    /// Writes the header at the start of `buf`; returns [`buffer_len`](Self::buffer_len).
    /// Every byte of the header is written.
    ///
    /// # Errors
    /// [`Error::BufferTooSmall`]; [`Error::TooLong`] for a part longer than its length field;
    /// [`Error::TrailingData`] for a signature without a certificate; [`Error::UnknownNid`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let (crt_len, kex, data_len) = self.check()?;
        let len = self.buffer_len();
        if buf.len() < len {
            return Err(Error::BufferTooSmall {
                what: "OAP header",
                need: len,
                have: buf.len(),
            });
        }
        let b = &mut buf[..len];
        b[field::ID].copy_from_slice(&self.id);
        b[field::TIMESTAMP].copy_from_slice(&self.timestamp.to_be_bytes());
        b[field::CIPHER_NID].copy_from_slice(&self.cipher_nid.to_be_bytes());
        b[field::KDF_NID].copy_from_slice(&self.kdf_nid.to_be_bytes());
        b[field::MD_NID].copy_from_slice(&self.md_nid.to_be_bytes());
        b[field::CRT_LEN].copy_from_slice(&crt_len.to_be_bytes());
        b[field::KEX].copy_from_slice(&kex.to_be_bytes());
        b[field::DATA_LEN].copy_from_slice(&data_len.to_be_bytes());
        let mut at = FIXED_LEN;
        for part in [self.crt, self.kex, self.data, self.req_hash, self.signature] {
            b[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        Ok(len)
    }

    /// The header in a new buffer.
    ///
    /// # Errors
    /// As [`emit`](Self::emit), except [`Error::BufferTooSmall`].
    pub fn to_vec(&self) -> Result<Vec<u8>, Error> {
        let mut out = vec![0u8; self.buffer_len()];
        self.emit(&mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn an_unsigned_request_is_36_bytes_and_parses_back() {
        let id = [7u8; ID_LEN];
        let r = Repr::request(id, 0x0102_0304_0506_0708);
        let mut buf = [0xa5u8; 40];
        assert_eq!(r.emit(&mut buf), Ok(FIXED_LEN));
        assert_eq!(&buf[..16], &id);
        assert_eq!(&buf[16..24], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&buf[24..36], &[0u8; 12]);
        assert_eq!(&buf[36..], &[0xa5; 4], "nothing written past the header");
        assert_eq!(Repr::parse_request(&buf[..FIXED_LEN]), Ok(r));
        assert!(matches!(
            Repr::parse_request(&buf),
            Err(Error::TrailingData { extra: 4, .. })
        ));
    }

    #[test]
    fn a_response_needs_its_request_hash() {
        let hash = [9u8; DEFAULT_REQ_HASH_LEN];
        let r = Repr::response([1; ID_LEN], 5, &hash);
        let bytes = r.to_vec().unwrap();
        assert_eq!(bytes.len(), 84);
        assert_eq!(Repr::parse_response(&bytes, 0), Ok(r));
        assert!(matches!(
            Repr::parse_response(&bytes[..83], 0),
            Err(Error::LengthMismatch {
                claimed: 48,
                have: 47,
                ..
            })
        ));
        // A SHA-256 request makes the last 16 bytes trailing garbage of an unsigned header.
        assert!(matches!(
            Repr::parse_response(&bytes, nid::SHA256),
            Err(Error::TrailingData { extra: 16, .. })
        ));
        assert!(matches!(
            Repr::parse_response(&bytes, 1),
            Err(Error::UnknownNid { nid: 1, .. })
        ));
    }

    #[test]
    fn flags_and_unknown_nids() {
        let kex = [3u8; 10];
        let crt = [4u8; 5];
        let r = Repr {
            cipher_nid: nid::AES_256_GCM,
            kdf_nid: nid::SHA3_512,
            md_nid: nid::SHA384,
            kex_raw: true,
            kex_client_encap: true,
            crt: &crt,
            kex: &kex,
            signature: b"sig",
            ..Repr::request([0; ID_LEN], 1)
        };
        let bytes = r.to_vec().unwrap();
        assert_eq!(&bytes[field::KEX], &(0xc000u16 | 10).to_be_bytes());
        assert_eq!(Repr::parse_request(&bytes), Ok(r));
        for (at, what) in [(24, "cipher"), (26, "kdf"), (28, "md")] {
            let mut bad = bytes.clone();
            bad[at..at + 2].copy_from_slice(&nid::AES_128_GCM.wrapping_add(1).to_be_bytes());
            let e = Repr::parse_request(&bad).unwrap_err();
            assert!(
                matches!(e, Error::UnknownNid { what: w, .. } if w.contains(what)),
                "{e}"
            );
        }
        let unsigned_with_sig = Repr { crt: &[], ..r };
        assert!(matches!(
            unsigned_with_sig.emit(&mut [0u8; 100]),
            Err(Error::TrailingData { .. })
        ));
        let long_kex = [0u8; MAX_KEX_LEN + 1];
        assert!(matches!(
            Repr {
                kex: &long_kex,
                ..r
            }
            .to_vec(),
            Err(Error::TooLong { .. })
        ));
    }
}
