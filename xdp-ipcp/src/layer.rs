//! The eth-dix layer as a sans-IO state machine.
//!
//! [`Layer`] holds the registry, the directory cache, the outstanding name queries and the
//! flow table of one eth-dix IPCP. It owns no socket and reads no clock:
//!
//! * **input**: received frames ([`Layer::handle_rx`], or [`Layer::classify_rx`] then
//!   [`Layer::handle_mgmt`]), upper-layer requests ([`Layer::register`], [`Layer::query`],
//!   [`Layer::flow_alloc`], [`Layer::flow_accept`], [`Layer::flow_refuse`],
//!   [`Layer::flow_dealloc`]) and the passage of time ([`Layer::handle_timeout`]). Every call
//!   that can start or end a timer takes `now`.
//! * **output**: management frames to send ([`Layer::poll_transmit`]), events for the upper
//!   layer ([`Layer::poll_event`]) and when to call [`Layer::handle_timeout`] next
//!   ([`Layer::poll_timeout`]). After any input call, drain `poll_transmit` and `poll_event`
//!   and re-arm the timer from `poll_timeout`.
//!
//! The data path ([`Layer::classify_rx`], [`Layer::write_header`]) never allocates.

use core::ops::Range;
use std::collections::VecDeque;

use o7s_proto::MacAddr;
use o7s_proto::dix::{self, Frame, MGMT_EID};
use o7s_proto::eth_mgmt::{self, MgmtMsg, QosSpec};

use crate::directory::{Directory, QUERY_TIMEOUT, Queries, QueryId, Registry};
use crate::flows::{Flow, FlowState, FlowStats, FlowTable};
use crate::time::Instant;

/// Largest MTU of a DIX layer (the reference's cap).
pub const MAX_MTU: usize = 65535;

/// `-ENOMEM`, the response sent when a FLOW_REQ arrives and no eid is free.
const ENOMEM: i32 = -12;

/// Configuration of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The interface's MAC address: source of every frame we send.
    pub mac: MacAddr,
    /// The layer's EtherType (default [`dix::DEFAULT_ETHERTYPE`]).
    pub ethertype: u16,
    /// The interface MTU, at most [`MAX_MTU`]. The largest SDU is `mtu - 4`.
    pub mtu: usize,
    /// Length of the layer's name hashes (28, 32, 48 or 64; default 32, SHA3-256).
    pub hash_len: usize,
}

impl Config {
    /// Defaults: EtherType 0xA000, MTU 1500, 32-byte hashes.
    #[must_use]
    pub const fn new(mac: MacAddr) -> Config {
        Config {
            mac,
            ethertype: dix::DEFAULT_ETHERTYPE,
            mtu: 1500,
            hash_len: 32,
        }
    }

    /// The largest SDU a flow carries: `mtu - 4`.
    #[must_use]
    pub const fn max_sdu(&self) -> usize {
        dix::max_sdu(self.mtu)
    }

    /// The largest management message we send: the smaller of the SDU limit and the
    /// reference's 9000-byte management frame limit.
    #[must_use]
    pub const fn max_mgmt_len(&self) -> usize {
        let sdu = self.max_sdu();
        if sdu < eth_mgmt::MAX_PAYLOAD {
            sdu
        } else {
            eth_mgmt::MAX_PAYLOAD
        }
    }

    /// Checks the values as the reference does, plus: the MAC must be unicast, and the MTU must
    /// carry a name query.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field.
    pub fn validate(&self) -> Result<(), Error> {
        if self.mac.is_multicast() {
            return Err(Error::InvalidConfig("MAC address is multicast"));
        }
        if self.ethertype < 0x0600 || self.ethertype == 0xffff {
            return Err(Error::InvalidConfig(
                "EtherType must be at least 0x0600 and not 0xffff",
            ));
        }
        if eth_mgmt::check_hash_len(self.hash_len).is_err() {
            return Err(Error::InvalidConfig("hash length must be 28, 32, 48 or 64"));
        }
        if self.mtu > MAX_MTU {
            return Err(Error::InvalidConfig("MTU above 65535"));
        }
        if self.max_sdu() < eth_mgmt::HEADER_LEN + self.hash_len {
            return Err(Error::InvalidConfig("MTU too small to carry a name query"));
        }
        Ok(())
    }
}

/// What went wrong with an upper-layer request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// A name hash of the wrong length for this layer.
    #[error("name hash of {len} bytes, this layer uses {expected}")]
    HashLen {
        /// Length given.
        len: usize,
        /// The layer's hash length.
        expected: usize,
    },
    /// `flow_alloc` for a hash that is not in the directory (query it first).
    #[error("name not in the directory; query it first")]
    NotResolved,
    /// All eids (64..4095) are in use.
    #[error("no free endpoint id")]
    NoEid,
    /// No flow has this eid.
    #[error("no flow with eid {0}")]
    UnknownEid(u16),
    /// The flow exists but is not in the state the request needs.
    #[error("flow {eid} is {state:?}, request needs {needed:?}")]
    WrongState {
        /// The flow.
        eid: u16,
        /// Its state.
        state: FlowState,
        /// The state needed.
        needed: FlowState,
    },
    /// An SDU larger than the layer carries (`mtu - 4`). Never dropped silently.
    #[error("SDU of {len} bytes exceeds the layer's maximum of {max} (MTU - 4)")]
    SduTooLong {
        /// SDU length.
        len: usize,
        /// The largest SDU.
        max: usize,
    },
    /// A management message (e.g. a FLOW_REQ with a large OAP part) larger than we may send.
    #[error("management message of {len} bytes exceeds the limit of {max}")]
    MgmtTooLong {
        /// Message length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Emitting a message failed (a bug: the layer checks lengths before emitting).
    #[error(transparent)]
    Proto(#[from] o7s_proto::Error),
}

/// Why a received frame was dropped. Every drop is counted in [`Stats::drops`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum DropReason {
    /// Shorter than the 18-byte DIX header.
    Runt,
    /// The length field claims more bytes than the frame holds.
    BadLength,
    /// Another EtherType.
    WrongEthertype,
    /// Destined to another MAC (or a multicast address other than broadcast for management).
    NotForUs,
    /// A multicast source MAC, or our own MAC as source.
    BadSource,
    /// A data frame for an eid that has no flow.
    UnknownEid,
    /// A data frame for a flow that is not allocated yet.
    NotAllocated,
    /// A data frame whose source MAC is not the flow's peer.
    WrongSource,
    /// A management payload that does not parse (truncated, trailing bytes, > 9000 bytes).
    BadMgmt,
    /// A management message with an unknown code.
    UnknownCode,
    /// A FLOW_REQ or NAME_QUERY_REQ for a name not registered here (the reference ignores
    /// these silently; the requester times out).
    UnregisteredName,
    /// A FLOW_REPLY for an eid with no pending request, or from another MAC than the one
    /// the request went to.
    UnexpectedReply,
    /// A FLOW_REQ or successful FLOW_REPLY whose sender eid is 0 (the management eid).
    BadEndpoint,
    /// A FLOW_REQ arrived while every eid is in use (answered with a refusal).
    NoEid,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 14] = [
        DropReason::Runt,
        DropReason::BadLength,
        DropReason::WrongEthertype,
        DropReason::NotForUs,
        DropReason::BadSource,
        DropReason::UnknownEid,
        DropReason::NotAllocated,
        DropReason::WrongSource,
        DropReason::BadMgmt,
        DropReason::UnknownCode,
        DropReason::UnregisteredName,
        DropReason::UnexpectedReply,
        DropReason::BadEndpoint,
        DropReason::NoEid,
    ];
}

/// What to do with a received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RxAction {
    /// Deliver `frame[payload]` (padding excluded) to the N+1 flow `eid`.
    Data {
        /// Our eid of the flow.
        eid: u16,
        /// The SDU's bytes within the frame.
        payload: Range<usize>,
    },
    /// A management frame: `frame[payload]` is the management message. [`Layer::handle_rx`]
    /// has already handled it; after [`Layer::classify_rx`], pass the frame to
    /// [`Layer::handle_mgmt`].
    Mgmt {
        /// The message's bytes within the frame.
        payload: Range<usize>,
    },
    /// Drop the frame (already counted).
    Drop(DropReason),
}

/// A management frame to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination MAC (broadcast for NAME_QUERY_REQ).
    pub dst: MacAddr,
    /// The whole frame: DIX header (eid 0) and management message, no padding.
    pub frame: Vec<u8>,
}

/// Something the upper layer (the IPCP runtime talking to the IRMd) must hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A query started with [`Layer::query`] got a NAME_QUERY_REPLY; the directory has the
    /// entry.
    QueryResolved {
        /// The query.
        id: QueryId,
        /// The name hash.
        hash: Vec<u8>,
        /// The MAC that answered.
        mac: MacAddr,
    },
    /// A query got no reply within 2000 ms.
    QueryTimedOut {
        /// The query.
        id: QueryId,
        /// The name hash.
        hash: Vec<u8>,
    },
    /// A FLOW_REQ arrived for a registered name. Answer with [`Layer::flow_accept`] or
    /// [`Layer::flow_refuse`].
    FlowReqArrived {
        /// The eid allocated for the flow here.
        eid: u16,
        /// The requested name's hash.
        hash: Vec<u8>,
        /// The requested QoS.
        qos: QosSpec,
        /// OAP request bytes.
        oap: Vec<u8>,
        /// The requester's MAC.
        remote: MacAddr,
    },
    /// Our FLOW_REQ was accepted: the flow is allocated.
    FlowAllocated {
        /// Our eid.
        eid: u16,
        /// OAP response bytes.
        oap: Vec<u8>,
    },
    /// Our FLOW_REQ was refused; the eid is freed.
    FlowAllocFailed {
        /// The eid the flow had.
        eid: u16,
        /// The peer's (negative) response.
        response: i32,
        /// OAP response bytes (may be empty).
        oap: Vec<u8>,
    },
}

/// Outcome of [`Layer::query`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryStart {
    /// The directory already has the name: done, nothing sent.
    Resolved(MacAddr),
    /// A NAME_QUERY_REQ is queued; an [`Event::QueryResolved`] or [`Event::QueryTimedOut`]
    /// with this id follows.
    Pending(QueryId),
}

/// Layer-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Drops, indexed by `DropReason as usize`; see [`Stats::dropped`].
    pub drops: [u64; DropReason::ALL.len()],
    /// Management messages handled, by code (FLOW_REQ, FLOW_REPLY, NAME_QUERY_REQ,
    /// NAME_QUERY_REPLY); dropped ones included if they parsed.
    pub mgmt_rx: [u64; 4],
    /// Management messages queued for transmission, by code.
    pub mgmt_tx: [u64; 4],
    /// Data frames delivered by [`Layer::classify_rx`].
    pub data_rx: u64,
    /// Data headers written by [`Layer::write_header`].
    pub data_tx: u64,
}

impl Stats {
    /// Frames dropped for `reason`.
    #[must_use]
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Frames dropped for any reason.
    #[must_use]
    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// The state of one eth-dix layer (one IPCP on one interface). A clone is an independent copy
/// of the whole state (tests and the fuzz oracle start from a prepared one).
#[derive(Debug, Clone)]
pub struct Layer {
    config: Config,
    registry: Registry,
    directory: Directory,
    queries: Queries,
    flows: FlowTable,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Layer {
    /// A layer with nothing registered, an empty directory and no flow.
    ///
    /// # Errors
    /// [`Config::validate`].
    pub fn new(config: Config) -> Result<Layer, Error> {
        config.validate()?;
        Ok(Layer {
            config,
            registry: Registry::default(),
            directory: Directory::default(),
            queries: Queries::default(),
            flows: FlowTable::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        })
    }

    /// The configuration.
    #[must_use]
    pub const fn config(&self) -> &Config {
        &self.config
    }

    /// The counters.
    #[must_use]
    pub const fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The directory cache.
    #[must_use]
    pub const fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The flow of `eid`, in any state.
    #[must_use]
    pub fn flow(&self, eid: u16) -> Option<&Flow> {
        self.flows.get(eid)
    }

    /// Number of flows in any state.
    #[must_use]
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Every flow in any state with its eid, lowest eid first.
    pub fn flows(&self) -> impl Iterator<Item = (u16, &Flow)> + '_ {
        self.flows.iter()
    }

    /// Counts `n` SDUs of flow `eid` that the layer delivered ([`RxAction::Data`]) but that
    /// were dropped above it (e.g. the flow's ring was full) in the flow's
    /// [`FlowStats::rx_dropped`]. Does nothing for an unknown eid. Does not allocate.
    pub fn count_flow_drops(&mut self, eid: u16, n: u64) {
        if let Some(flow) = self.flows.get_mut(eid) {
            flow.stats.rx_dropped += n;
        }
    }

    /// Number of outstanding name queries.
    #[must_use]
    pub fn pending_queries(&self) -> usize {
        self.queries.len()
    }

    fn check_hash(&self, hash: &[u8]) -> Result<(), Error> {
        if hash.len() == self.config.hash_len {
            Ok(())
        } else {
            Err(Error::HashLen {
                len: hash.len(),
                expected: self.config.hash_len,
            })
        }
    }

    // ---- registry and directory -------------------------------------------------------------

    /// Registers `hash` here (idempotent; nothing is sent). Returns whether it was new.
    ///
    /// # Errors
    /// [`Error::HashLen`].
    pub fn register(&mut self, hash: &[u8]) -> Result<bool, Error> {
        self.check_hash(hash)?;
        Ok(self.registry.add(hash))
    }

    /// Unregisters `hash` (unknown hashes are fine). Returns whether it was registered.
    pub fn unregister(&mut self, hash: &[u8]) -> bool {
        self.registry.remove(hash)
    }

    /// Whether `hash` is registered here.
    #[must_use]
    pub fn is_registered(&self, hash: &[u8]) -> bool {
        self.registry.contains(hash)
    }

    /// Looks `hash` up: from the directory cache if present, else broadcasts a NAME_QUERY_REQ
    /// and waits up to 2000 ms from `now` for a reply.
    ///
    /// # Errors
    /// [`Error::HashLen`].
    pub fn query(&mut self, hash: &[u8], now: Instant) -> Result<QueryStart, Error> {
        self.check_hash(hash)?;
        if let Some(mac) = self.directory.lookup(hash) {
            return Ok(QueryStart::Resolved(mac));
        }
        self.send_mgmt(MacAddr::BROADCAST, &MgmtMsg::NameQueryReq { hash })?;
        Ok(QueryStart::Pending(
            self.queries.start(hash, now + QUERY_TIMEOUT),
        ))
    }

    // ---- flow allocation --------------------------------------------------------------------

    /// Requests a flow to the name `hash`, which must be in the directory: queues a FLOW_REQ
    /// to its newest MAC and returns our eid. [`Event::FlowAllocated`] or
    /// [`Event::FlowAllocFailed`] follows if the peer answers (there is no timeout here: the
    /// upper layer gives up with [`flow_dealloc`](Self::flow_dealloc)).
    ///
    /// # Errors
    /// [`Error::HashLen`], [`Error::NotResolved`], [`Error::NoEid`], [`Error::MgmtTooLong`]
    /// if the OAP bytes do not fit in one management frame.
    pub fn flow_alloc(&mut self, hash: &[u8], qos: QosSpec, oap: &[u8]) -> Result<u16, Error> {
        self.check_hash(hash)?;
        let mac = self.directory.lookup(hash).ok_or(Error::NotResolved)?;
        let mut msg = MgmtMsg::FlowReq {
            seid: 0,
            qos,
            hash,
            oap,
        };
        self.check_mgmt_len(&msg)?;
        let eid = self
            .flows
            .insert(Flow {
                state: FlowState::Requested,
                remote_mac: mac,
                remote_eid: 0,
                qos,
                stats: FlowStats::default(),
            })
            .ok_or(Error::NoEid)?;
        if let MgmtMsg::FlowReq { seid, .. } = &mut msg {
            *seid = eid;
        }
        if let Err(e) = self.send_mgmt(mac, &msg) {
            self.flows.remove(eid);
            return Err(e);
        }
        Ok(eid)
    }

    fn arrived_flow(&self, eid: u16) -> Result<&Flow, Error> {
        let flow = self.flows.get(eid).ok_or(Error::UnknownEid(eid))?;
        if flow.state == FlowState::Arrived {
            Ok(flow)
        } else {
            Err(Error::WrongState {
                eid,
                state: flow.state,
                needed: FlowState::Arrived,
            })
        }
    }

    /// Accepts the arrived flow `eid`: queues a FLOW_REPLY (response 0) carrying `oap`; the
    /// flow is allocated.
    ///
    /// # Errors
    /// [`Error::UnknownEid`], [`Error::WrongState`] unless the flow is
    /// [`FlowState::Arrived`], [`Error::MgmtTooLong`] (the flow stays arrived).
    pub fn flow_accept(&mut self, eid: u16, oap: &[u8]) -> Result<(), Error> {
        let flow = self.arrived_flow(eid)?;
        let (mac, deid) = (flow.remote_mac, flow.remote_eid);
        self.send_mgmt(
            mac,
            &MgmtMsg::FlowReply {
                seid: eid,
                deid,
                response: 0,
                oap,
            },
        )?;
        if let Some(flow) = self.flows.get_mut(eid) {
            flow.state = FlowState::Allocated;
        }
        Ok(())
    }

    /// Refuses the arrived flow `eid` with `response` (a negative errno; 0 is turned into
    /// `-1` so the peer never reads it as success): queues a FLOW_REPLY and frees the eid.
    ///
    /// # Errors
    /// As [`flow_accept`](Self::flow_accept); on error the flow stays arrived.
    pub fn flow_refuse(&mut self, eid: u16, response: i32, oap: &[u8]) -> Result<(), Error> {
        let flow = self.arrived_flow(eid)?;
        let (mac, deid) = (flow.remote_mac, flow.remote_eid);
        let response = if response == 0 { -1 } else { response };
        self.send_mgmt(
            mac,
            &MgmtMsg::FlowReply {
                seid: eid,
                deid,
                response,
                oap,
            },
        )?;
        self.flows.remove(eid);
        Ok(())
    }

    /// Deallocates the flow `eid` in any state and frees the eid. Nothing is sent (as the
    /// reference); the peer's frames to this eid are dropped as [`DropReason::UnknownEid`].
    ///
    /// # Errors
    /// [`Error::UnknownEid`].
    pub fn flow_dealloc(&mut self, eid: u16) -> Result<Flow, Error> {
        self.flows.remove(eid).ok_or(Error::UnknownEid(eid))
    }

    // ---- data path --------------------------------------------------------------------------

    /// Checks that an SDU of `len` bytes fits the layer (`len <= mtu - 4`).
    ///
    /// # Errors
    /// [`Error::SduTooLong`]: the caller must report it, never drop silently.
    pub const fn check_sdu_len(&self, len: usize) -> Result<(), Error> {
        let max = self.config.max_sdu();
        if len > max {
            Err(Error::SduTooLong { len, max })
        } else {
            Ok(())
        }
    }

    /// Writes the DIX header for an SDU of `sdu_len` bytes on the allocated flow `eid` into
    /// `out` (the 18 bytes of headroom in front of the SDU) and counts the packet. Does not
    /// allocate.
    ///
    /// # Errors
    /// [`Error::SduTooLong`], [`Error::UnknownEid`], [`Error::WrongState`] unless allocated.
    pub fn write_header(
        &mut self,
        eid: u16,
        sdu_len: usize,
        out: &mut [u8; dix::HEADER_LEN],
    ) -> Result<(), Error> {
        self.check_sdu_len(sdu_len)?;
        let max = self.config.max_sdu();
        let payload_len =
            u16::try_from(sdu_len).map_err(|_| Error::SduTooLong { len: sdu_len, max })?;
        let (mac, ethertype) = (self.config.mac, self.config.ethertype);
        let flow = self.flows.get_mut(eid).ok_or(Error::UnknownEid(eid))?;
        if flow.state != FlowState::Allocated {
            return Err(Error::WrongState {
                eid,
                state: flow.state,
                needed: FlowState::Allocated,
            });
        }
        dix::Repr {
            dst_addr: flow.remote_mac,
            src_addr: mac,
            ethertype,
            eid: flow.remote_eid,
            payload_len,
        }
        .emit_header(out);
        flow.stats.tx_packets += 1;
        flow.stats.tx_bytes += sdu_len as u64;
        self.stats.data_tx += 1;
        Ok(())
    }

    fn drop(&mut self, reason: DropReason) -> RxAction {
        self.stats.drops[reason as usize] += 1;
        RxAction::Drop(reason)
    }

    /// Classifies a received frame without allocating: validates the DIX header (size,
    /// length field, EtherType, destination, source) and, for data, the flow. Data frames are
    /// counted on their flow; drops are counted. Management frames are only recognised: pass
    /// them to [`handle_mgmt`](Self::handle_mgmt), or use [`handle_rx`](Self::handle_rx).
    pub fn classify_rx(&mut self, frame: &[u8]) -> RxAction {
        let view = match Frame::new_checked(frame) {
            Ok(view) => view,
            Err(o7s_proto::Error::Truncated { .. }) => return self.drop(DropReason::Runt),
            Err(_) => return self.drop(DropReason::BadLength),
        };
        if view.ethertype() != self.config.ethertype {
            return self.drop(DropReason::WrongEthertype);
        }
        let src = view.src_addr();
        if src.is_multicast() || src == self.config.mac {
            return self.drop(DropReason::BadSource);
        }
        let dst = view.dst_addr();
        let payload = dix::HEADER_LEN..view.frame_len();
        let eid = view.eid();
        if eid == MGMT_EID {
            if dst != self.config.mac && !dst.is_broadcast() {
                return self.drop(DropReason::NotForUs);
            }
            return RxAction::Mgmt { payload };
        }
        if dst != self.config.mac {
            return self.drop(DropReason::NotForUs);
        }
        let Some(flow) = self.flows.get_mut(eid) else {
            return self.drop(DropReason::UnknownEid);
        };
        if flow.state != FlowState::Allocated {
            flow.stats.rx_dropped += 1;
            return self.drop(DropReason::NotAllocated);
        }
        if flow.remote_mac != src {
            flow.stats.rx_dropped += 1;
            return self.drop(DropReason::WrongSource);
        }
        flow.stats.rx_packets += 1;
        flow.stats.rx_bytes += payload.len() as u64;
        self.stats.data_rx += 1;
        RxAction::Data { eid, payload }
    }

    /// Classifies a received frame and, if it is a management frame, handles it
    /// ([`handle_mgmt`](Self::handle_mgmt)). Returns the classification, or the drop reason
    /// of a management message that was refused.
    pub fn handle_rx(&mut self, frame: &[u8], now: Instant) -> RxAction {
        let action = self.classify_rx(frame);
        match action {
            RxAction::Mgmt { .. } => match self.handle_mgmt(frame, now) {
                Some(reason) => RxAction::Drop(reason),
                None => action,
            },
            other => other,
        }
    }

    /// Handles a management frame that [`classify_rx`](Self::classify_rx) returned as
    /// [`RxAction::Mgmt`] (the whole frame, header included). Returns the drop reason if the
    /// message was refused (already counted). `now` is not used yet (no management procedure
    /// starts a timer on receipt) but is part of the contract.
    pub fn handle_mgmt(&mut self, frame: &[u8], _now: Instant) -> Option<DropReason> {
        let Ok(view) = Frame::new_checked(frame) else {
            self.stats.drops[DropReason::BadLength as usize] += 1;
            return Some(DropReason::BadLength);
        };
        if view.eid() != MGMT_EID {
            // Misuse (a frame classify_rx did not call management); refuse it all the same.
            self.stats.drops[DropReason::BadMgmt as usize] += 1;
            return Some(DropReason::BadMgmt);
        }
        let src = view.src_addr();
        let msg = match MgmtMsg::parse_bytes(view.payload_ref(), self.config.hash_len) {
            Ok(msg) => msg,
            Err(o7s_proto::Error::UnknownCode(_)) => {
                self.stats.drops[DropReason::UnknownCode as usize] += 1;
                return Some(DropReason::UnknownCode);
            }
            Err(_) => {
                self.stats.drops[DropReason::BadMgmt as usize] += 1;
                return Some(DropReason::BadMgmt);
            }
        };
        self.stats.mgmt_rx[usize::from(u8::from(msg.code()))] += 1;
        let result = self.handle_msg(src, &msg);
        if let Err(reason) = result {
            self.stats.drops[reason as usize] += 1;
            return Some(reason);
        }
        None
    }

    fn handle_msg(&mut self, src: MacAddr, msg: &MgmtMsg<'_>) -> Result<(), DropReason> {
        match *msg {
            MgmtMsg::NameQueryReq { hash } => {
                if !self.registry.contains(hash) {
                    return Err(DropReason::UnregisteredName);
                }
                self.send_mgmt(src, &MgmtMsg::NameQueryReply { hash })
                    .map_err(|_| DropReason::BadMgmt)
            }
            MgmtMsg::NameQueryReply { hash } => {
                self.directory.add(hash, src);
                for q in self.queries.complete(hash) {
                    self.events.push_back(Event::QueryResolved {
                        id: q.id,
                        hash: q.hash.into_vec(),
                        mac: src,
                    });
                }
                Ok(())
            }
            MgmtMsg::FlowReq {
                seid,
                qos,
                hash,
                oap,
            } => {
                if !self.registry.contains(hash) {
                    return Err(DropReason::UnregisteredName);
                }
                if seid == MGMT_EID {
                    return Err(DropReason::BadEndpoint);
                }
                let flow = Flow {
                    state: FlowState::Arrived,
                    remote_mac: src,
                    remote_eid: seid,
                    qos,
                    stats: FlowStats::default(),
                };
                let Some(eid) = self.flows.insert(flow) else {
                    // Tell the requester now rather than let it time out.
                    let refusal = MgmtMsg::FlowReply {
                        seid: 0,
                        deid: seid,
                        response: ENOMEM,
                        oap: &[],
                    };
                    let _ = self.send_mgmt(src, &refusal);
                    return Err(DropReason::NoEid);
                };
                self.events.push_back(Event::FlowReqArrived {
                    eid,
                    hash: hash.to_vec(),
                    qos,
                    oap: oap.to_vec(),
                    remote: src,
                });
                Ok(())
            }
            MgmtMsg::FlowReply {
                seid,
                deid,
                response,
                oap,
            } => {
                let Some(flow) = self.flows.get_mut(deid) else {
                    return Err(DropReason::UnexpectedReply);
                };
                if flow.state != FlowState::Requested || flow.remote_mac != src {
                    return Err(DropReason::UnexpectedReply);
                }
                if response != 0 {
                    self.flows.remove(deid);
                    self.events.push_back(Event::FlowAllocFailed {
                        eid: deid,
                        response,
                        oap: oap.to_vec(),
                    });
                    return Ok(());
                }
                if seid == MGMT_EID {
                    return Err(DropReason::BadEndpoint);
                }
                flow.state = FlowState::Allocated;
                flow.remote_eid = seid;
                self.events.push_back(Event::FlowAllocated {
                    eid: deid,
                    oap: oap.to_vec(),
                });
                Ok(())
            }
        }
    }

    fn check_mgmt_len(&self, msg: &MgmtMsg<'_>) -> Result<(), Error> {
        let len = msg.buffer_len();
        let max = self.config.max_mgmt_len();
        if len > max {
            Err(Error::MgmtTooLong { len, max })
        } else {
            Ok(())
        }
    }

    fn send_mgmt(&mut self, dst: MacAddr, msg: &MgmtMsg<'_>) -> Result<(), Error> {
        self.check_mgmt_len(msg)?;
        let len = msg.buffer_len();
        let payload_len = u16::try_from(len).map_err(|_| Error::MgmtTooLong {
            len,
            max: self.config.max_mgmt_len(),
        })?;
        let mut frame = vec![0u8; dix::HEADER_LEN + len];
        msg.emit(&mut frame[dix::HEADER_LEN..])?;
        dix::Repr {
            dst_addr: dst,
            src_addr: self.config.mac,
            ethertype: self.config.ethertype,
            eid: MGMT_EID,
            payload_len,
        }
        .emit(&mut frame)?;
        self.stats.mgmt_tx[usize::from(u8::from(msg.code()))] += 1;
        self.transmits.push_back(Transmit { dst, frame });
        Ok(())
    }

    // ---- time and output --------------------------------------------------------------------

    /// Expires the name queries whose 2000 ms are up at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        for q in self.queries.expire(now) {
            self.events.push_back(Event::QueryTimedOut {
                id: q.id,
                hash: q.hash.into_vec(),
            });
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called, if ever. Call again
    /// after every input.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queries.next_deadline()
    }

    /// The next management frame to send, oldest first. Drain after every input.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the upper layer, oldest first. Drain after every input.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}
