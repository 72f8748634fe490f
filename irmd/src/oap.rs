//! OAP, the flow allocation handshake of the IRMds, without cryptography (yet).
//!
//! The allocating IRMd (the *client*) sends an OAP request header as the piggyback of a flow
//! allocation through an IPCP; the accepting IRMd (the *server*) checks it and answers with a
//! response header that the layer carries back; the client checks that. Headers are
//! [`o7s_proto::oap`]'s. What o7s does today is the reference's exchange for names without
//! credentials or encryption settings:
//!
//! * client: an unsigned request without key exchange: a random 16-byte id, the time
//!   (CLOCK_REALTIME, ns) and NIDs 0, so 36 bytes ([`ClientRequest`]);
//! * server ([`Server::check`]): the request must parse, ask for no certificate, key exchange or
//!   cipher (we cannot honour those yet: refused as not supported), be no more than
//!   [`FUTURE_SLACK`] in the future and no older than [`REPLAY_WINDOW`], and its (id,
//!   timestamp) must not have been seen within the window (replay); otherwise the flow is
//!   refused with an authentication error (the reference's `EAUTH`);
//! * server response ([`Accepted::response`]): same id, the server's time, NIDs 0, and the
//!   hash of the whole request (SHA-384 when its `md_nid` is 0, as the reference does even for
//!   unsigned headers): 84 bytes;
//! * client check ([`ClientRequest::complete`]): the response parses, echoes the id, and
//!   carries the request's hash; a signed response or one with key exchange is refused as
//!   not supported.
//!
//! Pure: time comes in as an argument (ns since the Unix epoch), randomness as the id.

use std::collections::BTreeSet;
use std::time::Duration;

use o7s_proto::irm::ErrorCode;
use o7s_proto::oap::{self, ID_LEN, Repr};
use sha2::Digest as _;

/// How old a request may be (the reference's `OAP_REPLAY_TIMER`), and how long its (id,
/// timestamp) is remembered against replays.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(20);
/// How far in the future a request's timestamp may be (clock skew between hosts).
pub const FUTURE_SLACK: Duration = Duration::from_millis(100);
/// Most (id, timestamp) pairs remembered; beyond this the oldest are forgotten early (a flood
/// of fresh requests must not grow the IRMd without bound), and from then on requests no newer
/// than the newest forgotten one are refused ([`OapError::Unverifiable`]): they could be
/// replays of a forgotten request.
pub const MAX_REMEMBERED: usize = 65_536;

const fn nanos(d: Duration) -> u64 {
    // Both constants are far below u64::MAX ns.
    d.as_nanos() as u64
}

/// Why an OAP header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OapError {
    /// The flow request carried no OAP header at all.
    #[error("the flow request carries no OAP header")]
    Missing,
    /// The header does not parse.
    #[error("malformed OAP {what}: {source}")]
    Malformed {
        /// `"request"` or `"response"`.
        what: &'static str,
        /// The defect.
        #[source]
        source: o7s_proto::Error,
    },
    /// The header asks for something this IRMd cannot do yet.
    #[error("OAP {0} is not supported yet (this irmd has no cryptography)")]
    NotSupported(&'static str),
    /// The request's timestamp is too far in the future.
    #[error("OAP request from {ahead_ms} ms in the future (more than {} ms)", FUTURE_SLACK.as_millis())]
    FromTheFuture {
        /// How far ahead, ms.
        ahead_ms: u64,
    },
    /// The request is older than the replay window.
    #[error("OAP request too old ({age_ms} ms, more than {} ms)", REPLAY_WINDOW.as_millis())]
    Stale {
        /// Its age, ms.
        age_ms: u64,
    },
    /// The same (id, timestamp) was seen within the window.
    #[error("OAP request replayed (id and timestamp already seen)")]
    Replayed,
    /// The request is no newer than a request forgotten early (the replay list was full), so
    /// it cannot be told from a replay.
    #[error(
        "OAP request cannot be checked against replays: no newer than requests forgotten while \
         the replay list was full ({MAX_REMEMBERED} requests within the window)"
    )]
    Unverifiable,
    /// The response's id is not the request's.
    #[error("OAP response id does not match the request's")]
    IdMismatch,
    /// The response's request hash is not the hash of our request.
    #[error("OAP response carries a request hash that is not our request's")]
    HashMismatch,
}

impl OapError {
    /// The IRM error code a flow refused for this reason gets.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotSupported(_) => ErrorCode::NotSupported,
            _ => ErrorCode::Auth,
        }
    }
}

/// Formats an id for logs (the first 8 bytes, as the reference does).
#[must_use]
pub fn id_hex(id: &[u8; ID_LEN]) -> String {
    id[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The request hash of a request whose `md_nid` is `md_nid`.
fn request_hash(md_nid: u16, request: &[u8]) -> Result<Vec<u8>, OapError> {
    use oap::nid;
    Ok(match md_nid {
        nid::UNDEF | nid::SHA384 => sha2::Sha384::digest(request).to_vec(),
        nid::SHA256 => sha2::Sha256::digest(request).to_vec(),
        nid::SHA512 => sha2::Sha512::digest(request).to_vec(),
        nid::SHA3_256 => sha3::Sha3_256::digest(request).to_vec(),
        nid::SHA3_384 => sha3::Sha3_384::digest(request).to_vec(),
        nid::SHA3_512 => sha3::Sha3_512::digest(request).to_vec(),
        _ => return Err(OapError::NotSupported("digest (BLAKE2)")),
    })
}

/// Refuses what a header asks that needs cryptography.
fn check_no_crypto(h: &Repr<'_>) -> Result<(), OapError> {
    if h.is_signed() {
        return Err(OapError::NotSupported("authentication (a certificate)"));
    }
    if !h.kex.is_empty() || h.kex_raw || h.kex_client_encap {
        return Err(OapError::NotSupported("key exchange"));
    }
    if h.cipher_nid != oap::nid::UNDEF {
        return Err(OapError::NotSupported("encryption (a cipher)"));
    }
    if h.kdf_nid != oap::nid::UNDEF {
        return Err(OapError::NotSupported("key derivation"));
    }
    Ok(())
}

/// The client's side of one allocation: the request sent, and what the response must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    id: [u8; ID_LEN],
    bytes: Vec<u8>,
    hash: Vec<u8>,
}

impl ClientRequest {
    /// An unsigned request without key exchange, made at `now_ns` (CLOCK_REALTIME) with a
    /// random `id`.
    #[must_use]
    pub fn new(id: [u8; ID_LEN], now_ns: u64) -> Self {
        let repr = Repr::request(id, now_ns);
        let mut bytes = vec![0u8; repr.buffer_len()];
        // A request without parts always fits its own buffer_len.
        let _ = repr.emit(&mut bytes);
        let hash = sha2::Sha384::digest(&bytes).to_vec();
        Self { id, bytes, hash }
    }

    /// The request header, to carry as the allocation's piggyback.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Its id.
    #[must_use]
    pub const fn id(&self) -> &[u8; ID_LEN] {
        &self.id
    }

    /// Checks the server's response.
    ///
    /// # Errors
    /// [`OapError::Missing`] (empty), [`OapError::Malformed`], [`OapError::IdMismatch`],
    /// [`OapError::HashMismatch`], [`OapError::NotSupported`] for a signed response or one
    /// with key exchange or a cipher.
    pub fn complete(&self, response: &[u8]) -> Result<(), OapError> {
        if response.is_empty() {
            return Err(OapError::Missing);
        }
        let rsp = Repr::parse_response(response, oap::nid::UNDEF).map_err(|source| {
            OapError::Malformed {
                what: "response",
                source,
            }
        })?;
        if rsp.id != self.id {
            return Err(OapError::IdMismatch);
        }
        if rsp.req_hash != self.hash.as_slice() {
            return Err(OapError::HashMismatch);
        }
        check_no_crypto(&rsp)
    }
}

/// A request the server accepted: what its response needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    id: [u8; ID_LEN],
    req_hash: Vec<u8>,
}

impl Accepted {
    /// The request's id.
    #[must_use]
    pub const fn id(&self) -> &[u8; ID_LEN] {
        &self.id
    }

    /// The response header, made at `now_ns`.
    #[must_use]
    pub fn response(&self, now_ns: u64) -> Vec<u8> {
        let repr = Repr::response(self.id, now_ns, &self.req_hash);
        let mut bytes = vec![0u8; repr.buffer_len()];
        // An unsigned response of buffer_len bytes: emit cannot fail.
        let _ = repr.emit(&mut bytes);
        bytes
    }
}

/// The server's side: the freshness rule and the replay list.
#[derive(Debug, Default)]
pub struct Server {
    /// (timestamp, id) of the requests accepted within the window, ordered by timestamp, which
    /// is also the order in which they expire.
    seen: BTreeSet<(u64, [u8; ID_LEN])>,
    /// The newest timestamp forgotten before its time because the list was full: nothing at
    /// or before it can be checked any more.
    forgotten_up_to: Option<u64>,
}

impl Server {
    /// A server that has seen nothing.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests remembered against replays.
    #[must_use]
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    /// Checks a request that arrived at `now_ns` and remembers it.
    ///
    /// # Errors
    /// [`OapError::Missing`], [`OapError::Malformed`], [`OapError::NotSupported`],
    /// [`OapError::FromTheFuture`], [`OapError::Stale`], [`OapError::Replayed`], [`OapError::Unverifiable`].
    pub fn check(&mut self, request: &[u8], now_ns: u64) -> Result<Accepted, OapError> {
        if request.is_empty() {
            return Err(OapError::Missing);
        }
        let req = Repr::parse_request(request).map_err(|source| OapError::Malformed {
            what: "request",
            source,
        })?;
        check_no_crypto(&req)?;
        let req_hash = request_hash(req.md_nid, request)?;
        if req.timestamp > now_ns {
            let ahead = req.timestamp - now_ns;
            if ahead > nanos(FUTURE_SLACK) {
                return Err(OapError::FromTheFuture {
                    ahead_ms: ahead / 1_000_000,
                });
            }
        } else {
            let age = now_ns - req.timestamp;
            if age > nanos(REPLAY_WINDOW) {
                return Err(OapError::Stale {
                    age_ms: age / 1_000_000,
                });
            }
        }
        self.prune(now_ns);
        if self.seen.contains(&(req.timestamp, req.id)) {
            return Err(OapError::Replayed);
        }
        if self.forgotten_up_to.is_some_and(|ts| req.timestamp <= ts) {
            return Err(OapError::Unverifiable);
        }
        if self.seen.len() >= MAX_REMEMBERED
            && let Some((ts, _)) = self.seen.pop_first()
        {
            self.forgotten_up_to = Some(ts);
        }
        self.seen.insert((req.timestamp, req.id));
        Ok(Accepted {
            id: req.id,
            req_hash,
        })
    }

    /// Forgets what is older than the window: it would be refused as stale anyway.
    fn prune(&mut self, now_ns: u64) {
        let window = nanos(REPLAY_WINDOW);
        if self
            .forgotten_up_to
            .is_some_and(|ts| now_ns > ts.saturating_add(window))
        {
            self.forgotten_up_to = None;
        }
        while let Some(&(ts, _)) = self.seen.first()
            && now_ns > ts.saturating_add(window)
        {
            self.seen.pop_first();
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    const T0: u64 = 1_796_313_452_116_034_643;
    const MS: u64 = 1_000_000;

    fn id(n: u8) -> [u8; ID_LEN] {
        [n; ID_LEN]
    }

    #[test]
    fn a_fresh_request_is_accepted_and_answered_with_its_hash() {
        let client = ClientRequest::new(id(1), T0);
        assert_eq!(client.bytes().len(), 36);
        let mut server = Server::new();
        let accepted = server.check(client.bytes(), T0 + 3 * MS).expect("fresh");
        assert_eq!(accepted.id(), &id(1));
        let response = accepted.response(T0 + 5 * MS);
        assert_eq!(response.len(), 84);
        let rsp = Repr::parse_response(&response, 0).unwrap();
        assert_eq!(rsp.timestamp, T0 + 5 * MS, "the server's own time");
        assert_eq!(rsp.req_hash, &sha2::Sha384::digest(client.bytes())[..]);
        assert_eq!(client.complete(&response), Ok(()));
    }

    #[test]
    fn the_reference_capture_passes_both_checks() {
        // eth-dix-alloc.pcap frames 7 and 8: the reference's request and its response.
        let request =
            hex("885498f5deacb3d9dfd360f705497782 18edc99142a1c453 000000000000000000000000");
        let mut server = Server::new();
        let accepted = server
            .check(&request, T0 + 14 * MS)
            .expect("the reference's request");
        let ours = accepted.response(T0 + 15 * MS);
        let theirs = hex(
            "885498f5deacb3d9dfd360f705497782 18edc9914381feb8 000000000000000000000000 \
             e793bcd37f0f1cac0736a24566c312fc95402aca81f270ed412841fb6d258910bcd1368cd617bbf406ce7eda9c384477",
        );
        assert_eq!(ours[36..], theirs[36..], "the same request hash");
        assert_eq!(ours[..16], theirs[..16], "the same id");
        let client = ClientRequest {
            id: id_of(&request),
            hash: sha2::Sha384::digest(&request).to_vec(),
            bytes: request,
        };
        assert_eq!(client.complete(&theirs), Ok(()));
    }

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn id_of(request: &[u8]) -> [u8; ID_LEN] {
        request[..ID_LEN].try_into().unwrap()
    }

    #[test]
    fn freshness_window_edges() {
        let mut server = Server::new();
        let at = |s: &mut Server, n: u8, ts: u64, now: u64| {
            s.check(ClientRequest::new(id(n), ts).bytes(), now)
        };
        // 100 ms ahead is still fine, 101 is not.
        assert!(at(&mut server, 1, T0 + 100 * MS, T0).is_ok());
        assert_eq!(
            at(&mut server, 2, T0 + 101 * MS, T0),
            Err(OapError::FromTheFuture { ahead_ms: 101 })
        );
        // 20 s old is still fine, a nanosecond more is not.
        let window = nanos(REPLAY_WINDOW);
        assert!(at(&mut server, 3, T0, T0 + window).is_ok());
        assert_eq!(
            at(&mut server, 4, T0, T0 + window + 1),
            Err(OapError::Stale { age_ms: 20_000 })
        );
        assert_eq!(
            at(&mut server, 5, 0, T0).map_err(|e| e.code()),
            Err(ErrorCode::Auth)
        );
    }

    #[test]
    fn replays_are_refused_within_the_window_and_forgotten_after() {
        let mut server = Server::new();
        let req = ClientRequest::new(id(7), T0);
        assert!(server.check(req.bytes(), T0).is_ok());
        assert_eq!(server.check(req.bytes(), T0 + MS), Err(OapError::Replayed));
        // The same id with another timestamp is another request.
        let other = ClientRequest::new(id(7), T0 + 1);
        assert!(server.check(other.bytes(), T0 + MS).is_ok());
        assert_eq!(server.remembered(), 2);
        // Past the window the pair is forgotten; the old request is then stale anyway.
        let later = T0 + nanos(REPLAY_WINDOW) + 2 * MS;
        assert!(matches!(
            server.check(req.bytes(), later),
            Err(OapError::Stale { .. })
        ));
        assert!(
            server
                .check(ClientRequest::new(id(8), later).bytes(), later)
                .is_ok()
        );
        assert_eq!(server.remembered(), 1, "expired entries pruned");
    }

    #[test]
    fn the_replay_list_is_bounded() {
        let mut server = Server::new();
        for i in 0..MAX_REMEMBERED as u64 + 10 {
            let mut n = [0u8; ID_LEN];
            n[..8].copy_from_slice(&i.to_be_bytes());
            // Each a nanosecond later: one forgotten early is older than every later one.
            let ts = T0 + i;
            assert!(server.check(ClientRequest::new(n, ts).bytes(), ts).is_ok());
        }
        assert_eq!(server.remembered(), MAX_REMEMBERED);
    }

    #[test]
    fn a_request_forgotten_early_cannot_be_replayed() {
        let mut server = Server::new();
        let request = |i: u64, ts: u64| {
            let mut n = [0u8; ID_LEN];
            n[..8].copy_from_slice(&i.to_be_bytes());
            ClientRequest::new(n, ts)
        };
        let first = request(0, T0);
        assert!(server.check(first.bytes(), T0).is_ok());
        // A flood of later requests pushes the first one out of the full list.
        for i in 1..=MAX_REMEMBERED as u64 {
            assert!(server.check(request(i, T0 + MS).bytes(), T0 + MS).is_ok());
        }
        assert_eq!(server.remembered(), MAX_REMEMBERED);
        assert_eq!(
            server.check(first.bytes(), T0 + 2 * MS),
            Err(OapError::Unverifiable),
            "its replay is refused although it is no longer listed"
        );
        // Newer requests are still accepted; once the window has passed the floor is lifted.
        assert!(
            server
                .check(request(u64::MAX, T0 + 3 * MS).bytes(), T0 + 3 * MS)
                .is_ok()
        );
        let later = T0 + nanos(REPLAY_WINDOW) + 5 * MS;
        assert!(server.check(request(7, later).bytes(), later).is_ok());
        assert_eq!(server.forgotten_up_to, None);
    }

    #[test]
    fn crypto_requests_are_not_supported_yet() {
        let crt = [1u8; 4];
        let kex = [2u8; 4];
        let base = Repr::request(id(1), T0);
        let cases = [
            (
                Repr {
                    crt: &crt,
                    signature: b"s",
                    ..base
                },
                "certificate",
            ),
            (Repr { kex: &kex, ..base }, "key exchange"),
            (
                Repr {
                    cipher_nid: oap::nid::AES_256_GCM,
                    ..base
                },
                "cipher",
            ),
            (
                Repr {
                    kdf_nid: oap::nid::SHA256,
                    ..base
                },
                "key derivation",
            ),
        ];
        let mut server = Server::new();
        for (repr, what) in cases {
            let e = server.check(&repr.to_vec().unwrap(), T0).unwrap_err();
            assert_eq!(e.code(), ErrorCode::NotSupported, "{e}");
            assert!(e.to_string().contains(what), "{e}");
            assert!(e.to_string().contains("not supported yet"), "{e}");
        }
        // A digest alone is fine: it only sets the request hash's algorithm.
        let sha256 = Repr {
            md_nid: oap::nid::SHA256,
            ..base
        }
        .to_vec()
        .unwrap();
        let accepted = server.check(&sha256, T0).unwrap();
        assert_eq!(accepted.req_hash, sha2::Sha256::digest(&sha256).to_vec());
    }

    #[test]
    fn bad_responses_are_refused() {
        let client = ClientRequest::new(id(3), T0);
        let good = Server::new()
            .check(client.bytes(), T0)
            .unwrap()
            .response(T0 + MS);
        assert_eq!(client.complete(&[]), Err(OapError::Missing));
        assert!(matches!(
            client.complete(&good[..83]),
            Err(OapError::Malformed { .. })
        ));
        let mut other_id = good.clone();
        other_id[0] ^= 1;
        assert_eq!(client.complete(&other_id), Err(OapError::IdMismatch));
        let mut other_hash = good.clone();
        other_hash[83] ^= 1;
        assert_eq!(client.complete(&other_hash), Err(OapError::HashMismatch));
        // The request itself is no response.
        assert!(matches!(
            client.complete(client.bytes()),
            Err(OapError::Malformed { .. })
        ));
        let mut signed = good.clone();
        signed[30..32].copy_from_slice(&1u16.to_be_bytes());
        signed.insert(36, 0xcc);
        signed.push(0xdd);
        assert_eq!(
            client.complete(&signed).map_err(|e| e.code()),
            Err(ErrorCode::NotSupported)
        );
    }

    #[test]
    fn malformed_requests_are_authentication_errors() {
        let mut server = Server::new();
        for bad in [&[][..], &[0u8; 35][..], &[0u8; 37][..]] {
            let e = server.check(bad, T0).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Auth, "{e}");
        }
    }
}
