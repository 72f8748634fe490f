//! The Ethernet IPCP's data path: a [`Layer`] driven over a [`Backend`], with the pool's flow
//! rings as the upper side.
//!
//! [`EthIpcp::poll`] is one step of the event loop: receive a batch of frames (data → set the
//! block's window to the SDU and queue its index on the flow ring bound to the eid, no copy;
//! management → [`Layer::handle_mgmt`]), expire timers, send the layer's queued management frames
//! (copied into pool blocks) and flush the backend. [`EthIpcp::send`] is the TX path: the DIX
//! header goes into the packet's headroom and the block goes to the backend as is.
//!
//! Per packet, neither direction allocates: RX batches block indices per eid in a fixed array and
//! hands them to `RingWriter::try_write_batch`; a full ring or an unbound eid drops and counts.
//!
//! Per-user pools: an unprivileged application's flow rings live in its uid's pool, not in the
//! IPCP's (the UMEM). Such a flow is bound with [`EthIpcp::bind_flow_copy`]: each received SDU
//! is copied once into a block of that pool (the frame's block goes straight back to the
//! UMEM), and a copy that finds the pool empty is a counted drop ([`IpcpStats::rx_pool_empty`]),
//! never a wait. The transmit side copies into a frame block before [`EthIpcp::send`].
//!
//! Liveness ([`crate::liveness`]): a bound flow whose QoS timeout is not 0 gets a keepalive (an
//! empty SDU, in a pool block) when nothing was sent on it for more than timeout/4, and its
//! application's receive ring gets PEER_GONE when nothing arrived for more than timeout. Empty
//! SDUs that arrive are signs of life, never delivered. Times are those passed to
//! [`EthIpcp::poll`]; [`EthIpcp::liveness_deadline`] says when the next check is due.

use core::time::Duration;
use std::collections::VecDeque;
use std::sync::Arc;

use o7s_pool::{Packet, Pool, RingFlags, RingWriter};
use o7s_proto::MacAddr;
use o7s_proto::dix::{self, MGMT_EID};

use crate::backend::{
    self, AnyBackend, Backend, BackendConfig, BackendInfo, BackendStats, XskStats,
};
use crate::flows::{EID_END, FlowState, FlowStats};
use crate::layer::{self, Config, DropReason, Layer, RxAction, Transmit};
use crate::liveness::{Action, LivenessTable};
use crate::sys::{self, SysError};
use crate::time::Instant;

/// Frames received per [`EthIpcp::poll`] by default.
pub const DEFAULT_RX_BATCH: usize = 256;

/// Block indices queued to one flow ring at a time.
const RING_BATCH: usize = 64;

/// How an [`EthIpcp`] is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpcpConfig {
    /// The backend (interface, mode, rings…). Its `max_frame` is set from the interface MTU.
    pub backend: BackendConfig,
    /// Name hash length of the layer (default 32).
    pub hash_len: usize,
    /// Frames received per poll.
    pub rx_batch: usize,
}

impl IpcpConfig {
    /// Defaults on `iface`: auto mode, EtherType 0xA000, 32-byte hashes.
    #[must_use]
    pub fn new(iface: &str) -> IpcpConfig {
        IpcpConfig {
            backend: BackendConfig::new(iface),
            hash_len: 32,
            rx_batch: DEFAULT_RX_BATCH,
        }
    }
}

/// What failed while setting up or running the IPCP.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the interface's MAC or MTU failed.
    #[error("interface {iface:?}: {source}")]
    Interface {
        /// The interface.
        iface: String,
        /// The failed call.
        #[source]
        source: SysError,
    },
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] backend::Error),
    /// The layer refused the configuration.
    #[error(transparent)]
    Layer(#[from] layer::Error),
    /// The pool refused (e.g. a ring this process does not produce).
    #[error("pool: {0}")]
    Pool(#[from] o7s_pool::Error),
    /// `poll` on the backend's fd failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// An eid outside 64..4095.
    #[error("eid {0} is not a flow eid")]
    BadEid(u16),
}

/// Why [`EthIpcp::send`] gave a packet back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The layer refused: SDU too long, unknown eid, flow not allocated.
    #[error(transparent)]
    Layer(#[from] layer::Error),
    /// The packet has less than 18 bytes of headroom for the DIX header.
    #[error("no headroom for the 18-byte DIX header")]
    NoHeadroom,
    /// The backend's TX queue is full ([`backend::Error::WouldBlock`]: poll and retry) or it
    /// failed.
    #[error(transparent)]
    Backend(#[from] backend::Error),
}

impl SendError {
    /// True when retrying after a [`EthIpcp::poll`] may succeed.
    #[must_use]
    pub fn is_would_block(&self) -> bool {
        matches!(self, SendError::Backend(backend::Error::WouldBlock))
    }
}

/// Counters of the data path above the backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpcpStats {
    /// SDUs queued on flow rings.
    pub delivered: u64,
    /// SDUs dropped because their flow ring was full.
    pub ring_full: u64,
    /// SDUs dropped because no ring is bound to their eid (or the ring refused: flow down).
    pub no_ring: u64,
    /// Received frames dropped by the layer (see [`Layer::stats`] for the reasons).
    pub layer_drops: u64,
    /// Management frames handed to the layer.
    pub mgmt_rx: u64,
    /// Management frames sent.
    pub mgmt_tx: u64,
    /// Management frames delayed because the pool had no block or the backend was full.
    pub mgmt_tx_delayed: u64,
    /// SDUs given to the backend by [`EthIpcp::send`].
    pub sent: u64,
    /// Empty SDUs received (keepalives): signs of life, released, never delivered.
    pub keepalives_in: u64,
    /// Keepalives sent on idle flows.
    pub keepalives_out: u64,
    /// Keepalives that could not go out at once (no pool block, backend full); retried 5 ms
    /// later.
    pub keepalives_blocked: u64,
    /// Flows whose peer was silent for longer than their QoS timeout: PEER_GONE was set on
    /// their application's receive ring.
    pub peers_timed_out: u64,
    /// SDUs copied into an application's per-user pool ([`EthIpcp::bind_flow_copy`]).
    pub rx_copied: u64,
    /// SDUs dropped because the application's per-user pool had no free block.
    pub rx_pool_empty: u64,
}

/// One flow's counters in a [`Snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSnapshot {
    /// Our eid of the flow.
    pub eid: u16,
    /// Where the flow stands.
    pub state: FlowState,
    /// The peer's MAC.
    pub remote_mac: MacAddr,
    /// The peer's eid (0 until known).
    pub remote_eid: u16,
    /// Whether a flow ring is bound to it ([`EthIpcp::bind_flow`]).
    pub bound: bool,
    /// Packets, bytes and drops.
    pub stats: FlowStats,
}

/// Every counter of an [`EthIpcp`] at one moment, from [`EthIpcp::snapshot`]: the mode in
/// effect, the kernel's AF_XDP socket counters, the XDP program's counters, the backend's,
/// the layer's (drops by reason, management messages by code) and the data path's, and each
/// flow's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The backend in effect: AF_XDP native or generic, copy or zero-copy; or AF_PACKET.
    pub backend: BackendInfo,
    /// The backend's counters (frames in and out, no buffer, completions, kicks…).
    pub backend_stats: BackendStats,
    /// The kernel's AF_XDP socket counters (RX dropped, RX ring full, fill ring empty, TX
    /// invalid…); `None` for AF_PACKET.
    pub xsk: Option<XskStats>,
    /// The steering program's counters (matched, passed, redirect failed, runt); `None` for
    /// AF_PACKET.
    pub program: Option<o7s_ebpf::Counters>,
    /// The layer's counters: drops by [`DropReason`], management messages by code, data.
    pub layer: layer::Stats,
    /// The data path's counters: delivered, ring full, no ring, management frames in and out.
    pub ipcp: IpcpStats,
    /// Every flow, lowest eid first.
    pub flows: Vec<FlowSnapshot>,
}

impl Snapshot {
    /// The flow `eid`, if it exists.
    #[must_use]
    pub fn flow(&self, eid: u16) -> Option<&FlowSnapshot> {
        self.flows.iter().find(|f| f.eid == eid)
    }

    /// Management frames received (handed to the layer, whether or not it accepted them).
    #[must_use]
    pub fn mgmt_in(&self) -> u64 {
        self.ipcp.mgmt_rx
    }

    /// Management frames sent.
    #[must_use]
    pub fn mgmt_out(&self) -> u64 {
        self.ipcp.mgmt_tx
    }

    /// Frames the layer dropped for `reason`.
    #[must_use]
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.layer.dropped(reason)
    }

    /// Whether the AF_XDP sockets run in zero-copy mode.
    #[must_use]
    pub fn zero_copy(&self) -> bool {
        self.backend.zero_copy
    }
}

/// What one [`EthIpcp::poll`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// Frames received.
    pub rx: usize,
    /// Management frames sent.
    pub mgmt_tx: usize,
    /// Frames still queued in the backend after the flush.
    pub tx_queued: usize,
}

impl Activity {
    /// Nothing happened.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.rx == 0 && self.mgmt_tx == 0 && self.tx_queued == 0
    }
}

/// Where a bound flow's received SDUs go.
enum Sink<'p> {
    /// A ring of the IPCP's own pool: each frame's block is queued by index, no copy.
    Ring(RingWriter<'p>),
    /// A ring of another pool (an application's per-user pool): each SDU is copied into a
    /// block of that pool first.
    Copy {
        /// The pool.
        pool: Arc<Pool>,
        /// The ring, written by this process.
        ring: u32,
    },
}

impl Sink<'_> {
    fn ring(&self) -> u32 {
        match self {
            Sink::Ring(w) => w.ring(),
            Sink::Copy { ring, .. } => *ring,
        }
    }
}

/// A run of received SDUs for one eid, queued to its ring in one go (blocks of the sink's
/// pool).
struct RxRun {
    eid: u16,
    indices: [u32; RING_BATCH],
    len: usize,
}

impl RxRun {
    fn flush(
        &mut self,
        pool: &Pool,
        flows: &[Option<Sink<'_>>],
        stats: &mut IpcpStats,
        layer: &mut Layer,
    ) {
        if self.len == 0 {
            return;
        }
        let run = &self.indices[..self.len];
        let write =
            |writer: &RingWriter<'_>, stats: &mut IpcpStats| match writer.try_write_batch(run) {
                Ok(n) => {
                    stats.ring_full += (run.len() - n) as u64;
                    n
                }
                Err(e) if e.is_would_block() => {
                    stats.ring_full += run.len() as u64;
                    0
                }
                Err(_) => {
                    stats.no_ring += run.len() as u64;
                    0
                }
            };
        let sink = flows.get(usize::from(self.eid)).and_then(Option::as_ref);
        let (written, owner) = match sink {
            Some(Sink::Ring(writer)) => (write(writer, stats), pool),
            Some(Sink::Copy { pool: theirs, ring }) => match theirs.ring_writer(*ring) {
                Ok(writer) => (write(&writer, stats), &**theirs),
                Err(_) => {
                    stats.no_ring += run.len() as u64;
                    (0, &**theirs)
                }
            },
            None => {
                stats.no_ring += run.len() as u64;
                (0, pool)
            }
        };
        stats.delivered += written as u64;
        if written < run.len() {
            layer.count_flow_drops(self.eid, (run.len() - written) as u64);
        }
        for &index in &run[written..] {
            let _ = owner.release(index);
        }
        self.len = 0;
    }
}

/// The flows whose peer timed out, oldest first, until the loop drains them: a FIFO with room
/// for every eid, made at open, and a flag per eid so each is queued at most once. A push
/// therefore never allocates (the queue cannot outgrow its capacity) and never drops a notice
/// (an eid already queued is still to be reported).
struct GoneQueue {
    order: VecDeque<u16>,
    queued: Vec<bool>,
}

impl GoneQueue {
    fn new() -> Self {
        Self {
            order: VecDeque::with_capacity(usize::from(EID_END)),
            queued: vec![false; usize::from(EID_END)],
        }
    }

    /// Queues `eid` unless it is queued already (or out of range: no flow has it).
    fn push(&mut self, eid: u16) {
        let Some(queued) = self.queued.get_mut(usize::from(eid)) else {
            return;
        };
        if !*queued {
            *queued = true;
            // At most EID_END distinct eids are queued: within the capacity made at open.
            self.order.push_back(eid);
        }
    }

    fn pop(&mut self) -> Option<u16> {
        let eid = self.order.pop_front()?;
        if let Some(queued) = self.queued.get_mut(usize::from(eid)) {
            *queued = false;
        }
        Some(eid)
    }
}

/// One eth-dix IPCP on one interface: layer, backend, pool and the flows' rings.
pub struct EthIpcp<'p> {
    pool: &'p Pool,
    layer: Layer,
    backend: AnyBackend<'p>,
    /// Indexed by eid.
    flows: Vec<Option<Sink<'p>>>,
    pending_mgmt: Option<Transmit>,
    rx_batch: usize,
    stats: IpcpStats,
    /// Keepalives and peer timeouts of the bound flows.
    liveness: LivenessTable,
    /// Flows whose peer just timed out, for [`EthIpcp::poll_peer_gone`].
    peers_gone: GoneQueue,
    /// The `now` of the last [`EthIpcp::poll`]: the time of binds and sends between polls.
    now: Instant,
}

impl std::fmt::Debug for EthIpcp<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EthIpcp")
            .field("backend", &self.backend)
            .field("mac", &self.layer.config().mac)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<'p> EthIpcp<'p> {
    /// Reads the interface's MAC and MTU, builds the layer and opens the backend. Must run on
    /// a thread inside the interface's network namespace.
    ///
    /// # Errors
    /// [`Error::Interface`], [`Error::Layer`] (e.g. an MTU too small), [`Error::Backend`].
    pub fn open(pool: &'p Pool, config: &IpcpConfig) -> Result<Self, Error> {
        let iface = &config.backend.iface;
        let interface = |source| Error::Interface {
            iface: iface.clone(),
            source,
        };
        let mac = sys::if_hwaddr(iface).map_err(interface)?;
        let mtu = sys::if_mtu(iface).map_err(interface)? as usize;
        let layer = Layer::new(Config {
            mac: MacAddr(mac),
            ethertype: config.backend.ethertype,
            mtu: mtu.min(layer::MAX_MTU),
            hash_len: config.hash_len,
        })?;
        let mut backend_config = config.backend.clone();
        backend_config.max_frame = mtu + 14;
        let backend = backend::open(pool, &backend_config)?;
        let mut flows = Vec::with_capacity(usize::from(EID_END));
        flows.resize_with(usize::from(EID_END), || None);
        Ok(EthIpcp {
            pool,
            layer,
            backend,
            flows,
            pending_mgmt: None,
            rx_batch: config.rx_batch.max(1),
            stats: IpcpStats::default(),
            liveness: LivenessTable::default(),
            peers_gone: GoneQueue::new(),
            now: Instant::ZERO,
        })
    }

    /// The layer (registry, directory, flows, counters).
    #[must_use]
    pub fn layer(&self) -> &Layer {
        &self.layer
    }

    /// The layer, to register names, query, allocate flows and read events.
    pub fn layer_mut(&mut self) -> &mut Layer {
        &mut self.layer
    }

    /// The backend in effect (AF_XDP native/generic with copy or zero-copy, or AF_PACKET).
    #[must_use]
    pub fn backend_info(&self) -> BackendInfo {
        self.backend.info()
    }

    /// The backend itself (for its counters, or AF_XDP kernel statistics).
    #[must_use]
    pub fn backend(&self) -> &AnyBackend<'p> {
        &self.backend
    }

    /// The backend's counters.
    #[must_use]
    pub fn backend_stats(&self) -> BackendStats {
        self.backend.stats()
    }

    /// The data-path counters.
    #[must_use]
    pub fn stats(&self) -> IpcpStats {
        self.stats
    }

    /// Every counter at once (see [`Snapshot`]): reads the kernel's AF_XDP socket statistics
    /// and the XDP program's map (a few system calls) and copies the flow table, so call it
    /// from the control path, not per packet. The data path itself only increments counters.
    ///
    /// # Errors
    /// [`Error::Backend`] if the socket statistics or the program's map cannot be read.
    pub fn snapshot(&self) -> Result<Snapshot, Error> {
        let flows = self
            .layer
            .flows()
            .map(|(eid, flow)| FlowSnapshot {
                eid,
                state: flow.state,
                remote_mac: flow.remote_mac,
                remote_eid: flow.remote_eid,
                bound: self
                    .flows
                    .get(usize::from(eid))
                    .is_some_and(Option::is_some),
                stats: flow.stats,
            })
            .collect();
        Ok(Snapshot {
            backend: self.backend.info(),
            backend_stats: self.backend.stats(),
            xsk: self.backend.xsk_stats()?,
            program: self.backend.program_counters()?,
            layer: *self.layer.stats(),
            ipcp: self.stats,
            flows,
        })
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &'p Pool {
        self.pool
    }

    /// Delivers the SDUs of flow `eid` to `ring` from now on (this process must be the ring's
    /// producer), and watches the flow's liveness with the timeout of its QoS (as of the last
    /// [`poll`](Self::poll)'s `now`).
    ///
    /// # Errors
    /// [`Error::BadEid`], [`Error::Pool`] if the ring is not live or not ours to write.
    pub fn bind_flow(&mut self, eid: u16, ring: u32) -> Result<(), Error> {
        if eid == MGMT_EID || eid >= EID_END {
            return Err(Error::BadEid(eid));
        }
        let writer = self.pool.ring_writer(ring)?;
        self.bind(eid, Sink::Ring(writer));
        Ok(())
    }

    /// Like [`bind_flow`](Self::bind_flow) for a ring of another pool (an unprivileged
    /// application's per-user pool, opened by this process): each SDU is copied into a block
    /// of `pool` and queued on `ring`; when `pool` has no free block the SDU is dropped and
    /// counted ([`IpcpStats::rx_pool_empty`]).
    ///
    /// # Errors
    /// [`Error::BadEid`], [`Error::Pool`] if the ring is not live or not ours to write.
    pub fn bind_flow_copy(&mut self, eid: u16, pool: Arc<Pool>, ring: u32) -> Result<(), Error> {
        if eid == MGMT_EID || eid >= EID_END {
            return Err(Error::BadEid(eid));
        }
        pool.ring_writer(ring)?;
        self.bind(eid, Sink::Copy { pool, ring });
        Ok(())
    }

    fn bind(&mut self, eid: u16, sink: Sink<'p>) {
        self.flows[usize::from(eid)] = Some(sink);
        let timeout = self.layer.flow(eid).map_or(0, |f| f.qos.timeout);
        self.liveness.insert(eid, timeout, self.now);
    }

    /// When [`poll`](Self::poll) next has a keepalive to send or a peer timeout to check, at
    /// the latest; `None` if no bound flow has a QoS timeout.
    #[must_use]
    pub fn liveness_deadline(&self) -> Option<Instant> {
        self.liveness.next_deadline()
    }

    /// The next flow whose peer timed out (its application's ring now has PEER_GONE), oldest
    /// first; each is reported once. Drain after [`poll`](Self::poll).
    pub fn poll_peer_gone(&mut self) -> Option<u16> {
        self.peers_gone.pop()
    }

    /// Stops delivering `eid`'s SDUs (they are dropped and counted from now on); returns the
    /// ring it was bound to.
    pub fn unbind_flow(&mut self, eid: u16) -> Option<u32> {
        self.liveness.remove(eid);
        self.flows
            .get_mut(usize::from(eid))
            .and_then(Option::take)
            .map(|sink| sink.ring())
    }

    /// Sends `packet`'s window as an SDU on flow `eid`: the DIX header goes into its headroom
    /// and the block to the backend (queued until the next [`poll`](Self::poll) or
    /// [`flush`](Self::flush)). On error the packet comes back unchanged.
    ///
    /// # Errors
    /// [`SendError::Layer`] (too long, unknown or unallocated eid), [`SendError::NoHeadroom`],
    /// [`SendError::Backend`] (`WouldBlock`: poll and retry).
    #[expect(
        clippy::result_large_err,
        reason = "the packet must come back; only the rare error path moves the bytes"
    )]
    pub fn send(&mut self, eid: u16, packet: Packet<'p>) -> Result<(), (Packet<'p>, SendError)> {
        self.send_frame(eid, packet)?;
        self.stats.sent += 1;
        Ok(())
    }

    /// [`send`](Self::send) without counting an SDU (keepalives are counted apart); a sent
    /// frame is activity on the flow.
    #[expect(
        clippy::result_large_err,
        reason = "the packet must come back; only the rare error path moves the bytes"
    )]
    fn send_frame(
        &mut self,
        eid: u16,
        mut packet: Packet<'p>,
    ) -> Result<(), (Packet<'p>, SendError)> {
        let len = packet.len();
        if let Err(e) = self.layer.check_sdu_len(len) {
            return Err((packet, e.into()));
        }
        let written = match packet.push_head(dix::HEADER_LEN) {
            Ok(head) => match <&mut [u8; dix::HEADER_LEN]>::try_from(head) {
                Ok(header) => self
                    .layer
                    .write_header(eid, len, header)
                    .map_err(SendError::from),
                Err(_) => Err(SendError::NoHeadroom),
            },
            Err(_) => return Err((packet, SendError::NoHeadroom)),
        };
        if let Err(e) = written {
            let _ = packet.pull_head(dix::HEADER_LEN);
            return Err((packet, e));
        }
        match self.backend.send(packet) {
            Ok(()) => {
                self.liveness.on_tx(eid, self.now);
                Ok(())
            }
            Err((mut packet, e)) => {
                let _ = packet.pull_head(dix::HEADER_LEN);
                Err((packet, e.into()))
            }
        }
    }

    /// Pushes queued frames to the kernel; returns how many are still queued.
    ///
    /// # Errors
    /// [`Error::Backend`].
    pub fn flush(&mut self) -> Result<usize, Error> {
        Ok(self.backend.flush()?)
    }

    /// One step of the event loop at time `now`: receive, handle timers (name queries,
    /// keepalives, peer timeouts), send management frames, flush. Never blocks. Timers run
    /// even when receiving fails (e.g. `ENETDOWN` while the link is down).
    ///
    /// # Errors
    /// [`Error::Backend`] when a socket call fails.
    pub fn poll(&mut self, now: Instant) -> Result<Activity, Error> {
        self.now = self.now.max(now);
        let received = self.receive(now);
        if self.layer.poll_timeout().is_some_and(|t| t <= now) {
            self.layer.handle_timeout(now);
        }
        self.check_liveness(now);
        let mgmt_tx = self.send_mgmt();
        let tx_queued = self.backend.flush()?;
        Ok(Activity {
            rx: received?,
            mgmt_tx,
            tx_queued,
        })
    }

    /// Waits until frames arrive or `timeout` passes; returns whether frames are ready.
    ///
    /// # Errors
    /// [`Error::Sys`] if `poll` fails.
    pub fn wait(&self, timeout: Duration) -> Result<bool, Error> {
        Ok(sys::poll_readable_set(self.backend.rx_fds(), -1, timeout)?.0)
    }

    fn receive(&mut self, now: Instant) -> Result<usize, Error> {
        let EthIpcp {
            pool,
            layer,
            backend,
            flows,
            stats,
            rx_batch,
            liveness,
            ..
        } = self;
        let pool: &Pool = pool;
        let mut run = RxRun {
            eid: 0,
            indices: [0; RING_BATCH],
            len: 0,
        };
        let received = backend.recv(*rx_batch, &mut |mut packet| match layer
            .classify_rx(packet.data())
        {
            RxAction::Data { eid, payload } => {
                liveness.on_rx(eid, now);
                if payload.is_empty() {
                    // A keepalive: the block goes back to the pool.
                    stats.keepalives_in += 1;
                    return;
                }
                let index = match flows.get(usize::from(eid)).and_then(Option::as_ref) {
                    // Into the application's pool; the frame's block goes back to ours as
                    // `packet` drops. An empty pool, or a shard lock its user holds, is a drop:
                    // the receive path never waits.
                    Some(Sink::Copy { pool: theirs, .. }) => {
                        let Some(sdu) = packet.data().get(payload) else {
                            stats.layer_drops += 1;
                            return;
                        };
                        let Ok(mut copy) = theirs.try_alloc_nowait(sdu.len()) else {
                            stats.rx_pool_empty += 1;
                            layer.count_flow_drops(eid, 1);
                            return;
                        };
                        copy.data_mut().copy_from_slice(sdu);
                        stats.rx_copied += 1;
                        copy.into_index()
                    }
                    _ => {
                        let head = packet.head() as usize;
                        if packet
                            .set_bounds(head + payload.start, head + payload.end)
                            .is_err()
                        {
                            stats.layer_drops += 1;
                            return;
                        }
                        packet.into_index()
                    }
                };
                if run.len == RING_BATCH || (run.len > 0 && run.eid != eid) {
                    run.flush(pool, flows, stats, layer);
                }
                run.eid = eid;
                run.indices[run.len] = index;
                run.len += 1;
            }
            RxAction::Mgmt { .. } => {
                stats.mgmt_rx += 1;
                let _ = layer.handle_mgmt(packet.data(), now);
            }
            RxAction::Drop(_) => stats.layer_drops += 1,
        });
        run.flush(pool, flows, stats, layer);
        Ok(received?)
    }

    /// Sends the keepalives that are due and flags the flows whose peer timed out.
    fn check_liveness(&mut self, now: Instant) {
        while let Some((eid, action)) = self.liveness.next_due(now) {
            match action {
                Action::Keepalive => {
                    let sent = match self.pool.try_alloc(0) {
                        Ok(packet) => self.send_frame(eid, packet).is_ok(),
                        Err(_) => false,
                    };
                    if sent {
                        self.stats.keepalives_out += 1;
                    } else {
                        self.stats.keepalives_blocked += 1;
                        self.liveness.keepalive_blocked(eid, now);
                    }
                }
                Action::PeerGone => {
                    self.stats.peers_timed_out += 1;
                    match self.flows.get(usize::from(eid)).and_then(Option::as_ref) {
                        Some(Sink::Ring(writer)) => {
                            let _ = self
                                .pool
                                .ring_set_flags(writer.ring(), RingFlags::PEER_GONE);
                        }
                        Some(Sink::Copy { pool, ring }) => {
                            let _ = pool.ring_set_flags(*ring, RingFlags::PEER_GONE);
                        }
                        None => {}
                    }
                    self.peers_gone.push(eid);
                }
            }
        }
    }

    /// Copies the layer's management frames into pool blocks and hands them to the backend.
    fn send_mgmt(&mut self) -> usize {
        let mut sent = 0;
        while let Some(t) = self
            .pending_mgmt
            .take()
            .or_else(|| self.layer.poll_transmit())
        {
            let Ok(mut packet) = self.pool.try_alloc(t.frame.len()) else {
                self.stats.mgmt_tx_delayed += 1;
                self.pending_mgmt = Some(t);
                break;
            };
            packet.data_mut().copy_from_slice(&t.frame);
            if self.backend.send(packet).is_err() {
                self.stats.mgmt_tx_delayed += 1;
                self.pending_mgmt = Some(t);
                break;
            }
            self.stats.mgmt_tx += 1;
            sent += 1;
        }
        sent
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn gone_queue_keeps_every_eid_once_in_order_without_growing() {
        let mut q = GoneQueue::new();
        let capacity = q.order.capacity();
        assert!(capacity >= usize::from(EID_END));
        // Every eid, twice, and one out of range: each queued once, none lost.
        for _ in 0..2 {
            for eid in (0..EID_END).rev() {
                q.push(eid);
            }
        }
        q.push(EID_END);
        assert_eq!(q.order.capacity(), capacity, "no reallocation");
        let drained: Vec<u16> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(drained, (0..EID_END).rev().collect::<Vec<_>>());
        // Drained: an eid may be reported again (a new flow on it).
        q.push(7);
        q.push(7);
        assert_eq!((q.pop(), q.pop()), (Some(7), None));
        assert_eq!(q.order.capacity(), capacity);
    }
}
