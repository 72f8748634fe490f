//! The o7s application library: a connection to the IRMd ([`Client`]), flow allocation and
//! acceptance, and reading and writing SDUs on a [`Flow`] through the shared packet pool.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! let client = o7s::Client::connect()?; // announces this process to the IRMd
//! let flow = client.flow_alloc("oping", None, Some(Duration::from_secs(2)))?;
//! flow.write(b"hello")?; // one call, one SDU: copied once into a pool block
//! let mut buf = [0u8; 2048];
//! flow.set_read_timeout(Some(Duration::from_secs(1)));
//! let n = flow.read(&mut buf)?;
//! println!("{:?}", &buf[..n]);
//! flow.dealloc()?; // dropping the flow does this too
//! # Ok::<(), o7s::Error>(())
//! ```
//!
//! What there is today: flows between processes of this host, direct (handed out by the IRMd
//! without an IPCP) or through the local IPCP (for names registered in its layer; the flow's
//! peer is then the IPCP), blocking and non-blocking reads and writes with timeouts, zero-copy
//! [`Flow::read_packet`] / [`Flow::write_packet`], flow sets and event queues ([`fqueue`]:
//! `fset`/`fqueue`/`fevent`), and an async API on tokio ([`aio`], feature `tokio`). Not yet:
//! FRCT (ordering, retransmission; `in_order` QoS is carried but not acted on), encryption,
//! broadcast joins.
//!
//! **Pools.** The IRMd tells each process at its announce which packet pool it uses
//! ([`Client::pool`]): the shared pool for root and members of group `ouroboros`, otherwise a
//! pool of the process's own uid (mode 0600), so an ordinary user's packets are out of every
//! other user's reach. A direct flow needs both processes in one pool (both privileged, or the
//! same uid); between pools the IRMd refuses with [`ErrorCode::PoolMismatch`], and a flow
//! through an IPCP (which copies between the pools) works instead.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub use o7s_pool::Packet;
use o7s_pool::{Access, Pool, pool_name};
use o7s_proto::irm::{
    BindProcess, FlowAccept, FlowAlloc, FlowDealloc, ListFlows, ProcessAnnounce, ProcessExit,
    Request, ResponseKind, UnbindProcess,
};
pub use o7s_proto::irm::{ErrorCode, FlowInfo, QosSpec};

#[cfg(feature = "tokio")]
pub mod aio;
pub mod fqueue;
pub mod irm;
pub mod qos;
pub mod rundir;

pub use fqueue::{FlowEvent, FlowQueue, FlowSet, FlowSetError};
pub use irm::ClientError;

/// How long the library waits for the IRMd to answer a request that does not wait for
/// anything else (announce, bind, dealloc, lists).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time given to the IRMd to answer a request whose own timeout has passed.
const ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Talking to the IRMd failed, or it refused (see [`Error::code`]).
    #[error(transparent)]
    Irm(#[from] ClientError),
    /// The IRMd answered with something that is not what the request asks for.
    #[error("unexpected answer from the IRMd: {0}")]
    Unexpected(String),
    /// The flow is down: the other end deallocated it (reads fail once the queue is drained).
    #[error("the flow is down (the other end deallocated it)")]
    FlowDown,
    /// The process at the other end died (reads fail once the queue is drained).
    #[error("the peer at the other end of the flow is gone")]
    PeerGone,
    /// The flow does not accept writes.
    #[error("the flow is read-only")]
    ReadOnly,
    /// A blocking call reached its timeout.
    #[error("timed out waiting for {what}")]
    TimedOut {
        /// What was not there in time.
        what: &'static str,
    },
    /// A non-blocking call found nothing to do.
    #[error("no {what} available right now")]
    WouldBlock {
        /// What is missing.
        what: &'static str,
    },
    /// The SDU is larger than the flow carries ([`Flow::max_sdu`]: what its IPCP carries,
    /// e.g. MTU − 4 over Ethernet, or the pool's largest block): nothing was sent.
    #[error(
        "an SDU of {len} bytes is larger than the flow carries ({max} bytes: its layer's or the \
         packet pool's limit)"
    )]
    TooLarge {
        /// The SDU's length.
        len: usize,
        /// The largest SDU.
        max: usize,
    },
    /// The next SDU is larger than the read buffer; it stays queued for the next read.
    #[error(
        "the next SDU has {need} bytes but the buffer only {have}; it is kept for the next read"
    )]
    BufferTooSmall {
        /// The SDU's length.
        need: usize,
        /// The buffer's length.
        have: usize,
    },
    /// A packet from another pool was given to [`Flow::write_packet`].
    #[error("the packet belongs to pool {packet_pool:?}, the flow to {flow_pool:?}")]
    ForeignPacket {
        /// The packet's pool.
        packet_pool: String,
        /// The flow's pool.
        flow_pool: String,
    },
    /// The flow was deallocated already.
    #[error("flow {0} is deallocated")]
    Deallocated(u32),
    /// The shared pool failed otherwise.
    #[error("packet pool: {0}")]
    Pool(o7s_pool::Error),
    /// A flow set refused ([`fqueue`]).
    #[error(transparent)]
    FlowSet(#[from] FlowSetError),
}

impl Error {
    /// The IRMd's error code, if the IRMd refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Irm(ClientError::Refused { code, .. }) => Some(*code),
            _ => None,
        }
    }

    /// Whether the flow has ended (the other end deallocated it or died).
    pub fn is_flow_end(&self) -> bool {
        matches!(self, Self::FlowDown | Self::PeerGone)
    }
}

impl From<o7s_pool::Error> for Error {
    fn from(e: o7s_pool::Error) -> Self {
        use o7s_pool::Error as P;
        match e {
            P::FlowDown => Self::FlowDown,
            P::PeerGone => Self::PeerGone,
            P::ReadOnly => Self::ReadOnly,
            P::TimedOut { what } => Self::TimedOut { what },
            P::WouldBlock { what } => Self::WouldBlock { what },
            P::TooLarge { len, max } => Self::TooLarge { len, max },
            other => Self::Pool(other),
        }
    }
}

/// The library's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing the library does under these locks leaves them inconsistent on a panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A process announced to one IRMd: how many [`Client`]s share the announce, and the pool
/// the IRMd gave it.
#[derive(Debug)]
struct Announced {
    pid: u32,
    socket: PathBuf,
    clients: usize,
    pool: String,
    uid: u32,
}

/// Processes announced per (pid, IRMd socket), so that several [`Client`]s of one process
/// announce once and say goodbye once, when the last goes.
static ANNOUNCED: Mutex<Vec<Announced>> = Mutex::new(Vec::new());

/// A connection to the IRMd, on behalf of this process. Creating one announces the process;
/// dropping the last one (of this process, for this IRMd) says goodbye. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    rundir: PathBuf,
    socket: PathBuf,
    pid: u32,
    control: Mutex<irm::Client>,
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    /// The pool the IRMd gave this process.
    pool: String,
    /// Its owner: 0 for the shared pool, else this process's uid.
    pool_uid: u32,
}

impl Client {
    /// Connects to the IRMd of the run directory named by `O7S_RUNDIR` (default `/run/o7s`)
    /// and announces this process.
    pub fn connect() -> Result<Self> {
        Self::connect_to(&rundir::default_rundir())
    }

    /// Connects to the IRMd of a run directory and announces this process.
    pub fn connect_to(rundir: &Path) -> Result<Self> {
        let socket = rundir::socket_path(rundir);
        let mut control = irm::Client::connect_socket(&socket)?;
        control.set_timeout(Some(CONTROL_TIMEOUT))?;
        let pid = std::process::id();
        let (pool, pool_uid) = {
            let mut announced = lock(&ANNOUNCED);
            let known = announced
                .iter_mut()
                .find(|a| a.pid == pid && a.socket == socket);
            match known {
                Some(a) => {
                    a.clients += 1;
                    (a.pool.clone(), a.uid)
                }
                None => {
                    let answer = control.call_ok(ProcessAnnounce {
                        pid,
                        program: program_name(),
                    })?;
                    let (pool, uid) = match answer {
                        ResponseKind::Announced(a) => (a.pool, a.uid),
                        // An IRMd without per-user pools: everyone maps its shared pool.
                        ResponseKind::Ok(_) => (
                            pool_name(&rundir::shm_prefix_for(rundir), Access::Shared),
                            0,
                        ),
                        other => return Err(Error::Unexpected(format!("{other:?}"))),
                    };
                    announced.push(Announced {
                        pid,
                        socket: socket.clone(),
                        clients: 1,
                        pool: pool.clone(),
                        uid,
                    });
                    (pool, uid)
                }
            }
        };
        let inner = Inner {
            rundir: rundir.to_owned(),
            socket,
            pid,
            control: Mutex::new(control),
            pools: Mutex::new(HashMap::new()),
            pool,
            pool_uid,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The packet pool the IRMd gave this process (its flows' rings and blocks, its flow
    /// sets): the shared pool, or this uid's per-user pool.
    pub fn pool(&self) -> &str {
        &self.inner.pool
    }

    /// The owner of [`Client::pool`]: 0 for the shared pool, else this process's uid (a
    /// per-user pool, as the reference's `uid` field).
    pub fn pool_uid(&self) -> u32 {
        self.inner.pool_uid
    }

    /// The run directory of the IRMd.
    pub fn rundir(&self) -> &Path {
        &self.inner.rundir
    }

    /// This process's id, as the IRMd knows it.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// Binds this process to a name (creating the name if needed): flows allocated to the
    /// name can then be accepted here.
    pub fn bind(&self, name: &str) -> Result<()> {
        self.inner
            .call(BindProcess {
                pid: self.inner.pid,
                name: name.to_owned(),
            })
            .map(drop)
    }

    /// Unbinds this process from a name.
    pub fn unbind(&self, name: &str) -> Result<()> {
        self.inner
            .call(UnbindProcess {
                pid: self.inner.pid,
                name: Some(name.to_owned()),
            })
            .map(drop)
    }

    /// Allocates a flow to `name`: waits (up to `timeout`; `None`: the IRMd's default of
    /// 20 s) until a process bound to the name accepts. `qos` `None` is [`qos::raw`].
    ///
    /// Fails with the IRMd's [`ErrorCode::NotFound`] at once if the IRMd knows no such name,
    /// and with [`ErrorCode::TimedOut`] if nobody accepted in time.
    pub fn flow_alloc(
        &self,
        name: &str,
        qos: Option<QosSpec>,
        timeout: Option<Duration>,
    ) -> Result<Flow> {
        let request = FlowAlloc {
            dst: name.to_owned(),
            qos: Some(qos.unwrap_or_else(qos::raw)),
            timeout_ms: timeout.map(millis),
        };
        self.wait_for_flow(request.into(), timeout)
    }

    /// Waits for a flow to any name this process is bound to (`timeout` `None`: forever).
    pub fn flow_accept(&self, timeout: Option<Duration>) -> Result<Flow> {
        self.flow_accept_for(None, timeout)
    }

    /// Waits for a flow to `name` (which this process must be bound to), or to any of its
    /// names when `name` is `None`.
    pub fn flow_accept_for(&self, name: Option<&str>, timeout: Option<Duration>) -> Result<Flow> {
        let request = FlowAccept {
            name: name.map(str::to_owned),
            timeout_ms: timeout.map(millis),
        };
        self.wait_for_flow(request.into(), timeout)
    }

    /// Every flow the IRMd knows, with its ends and their states.
    pub fn list_flows(&self) -> Result<Vec<FlowInfo>> {
        match self.inner.call(ListFlows {})? {
            ResponseKind::Flows(list) => Ok(list.flows),
            other => Err(Error::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sends a request that may wait long on a connection of its own, so other threads'
    /// requests are not held up behind it, and turns the answer into a flow.
    fn wait_for_flow(&self, request: Request, timeout: Option<Duration>) -> Result<Flow> {
        let mut conn = irm::Client::connect_socket(&self.inner.socket)?;
        conn.set_timeout(timeout.map(|t| t.saturating_add(ANSWER_MARGIN)))?;
        let info = match conn.call_ok(request)? {
            ResponseKind::Flow(info) => info,
            other => return Err(Error::Unexpected(format!("{other:?}"))),
        };
        drop(conn);
        self.flow_from(info)
    }

    fn flow_from(&self, info: FlowInfo) -> Result<Flow> {
        let id = info.flow_id;
        let checked = self.inner.pool(&info.pool).and_then(|pool| {
            // Both rings must be ours, the right way round.
            pool.ring_writer(info.tx_ring)?;
            pool.ring_reader(info.rx_ring)?;
            Ok(pool)
        });
        match checked {
            Ok(pool) => Ok(Flow {
                client: self.inner.clone(),
                pool,
                info,
                rx: Mutex::new(None),
                tx: Mutex::new(()),
                settings: Mutex::new(Settings::default()),
                deallocated: AtomicBool::new(false),
            }),
            Err(e) => {
                // The IRMd set the flow up; do not leave it behind.
                let _ = self.inner.call(FlowDealloc { flow_id: id });
                Err(e)
            }
        }
    }
}

impl Inner {
    fn call(&self, request: impl Into<Request>) -> Result<ResponseKind> {
        Ok(lock(&self.control).call_ok(request)?)
    }

    /// The pool of that name, opened once per client.
    fn pool(&self, name: &str) -> Result<Arc<Pool>> {
        let mut pools = lock(&self.pools);
        if let Some(p) = pools.get(name) {
            return Ok(p.clone());
        }
        let pool = Arc::new(Pool::open(name)?);
        pools.insert(name.to_owned(), pool.clone());
        Ok(pool)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let mut announced = lock(&ANNOUNCED);
        let Some(i) = announced
            .iter()
            .position(|a| a.pid == self.pid && a.socket == self.socket)
        else {
            return;
        };
        announced[i].clients -= 1;
        if announced[i].clients == 0 {
            announced.swap_remove(i);
            // Best effort: if the IRMd is gone there is nobody to tell, and it notices our
            // death through its pidfd anyway.
            let _ = self.call(ProcessExit { pid: self.pid });
        }
    }
}

/// The name this process announces: its executable's base name.
fn program_name() -> String {
    let name = std::env::args_os()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let clean: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(o7s_proto::irm::MAX_NAME_LEN / 4)
        .collect();
    if clean.is_empty() {
        "unknown".to_owned()
    } else {
        clean
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Per-flow settings, as `fccntl` sets them.
#[derive(Clone, Copy, Debug, Default)]
struct Settings {
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    read_nonblocking: bool,
    write_nonblocking: bool,
}

/// When a blocking call gives up.
#[derive(Clone, Copy)]
enum Wait {
    No,
    Until(Instant),
    Forever,
}

impl Wait {
    fn new(nonblocking: bool, timeout: Option<Duration>) -> Self {
        match (nonblocking, timeout) {
            (true, _) => Self::No,
            (false, Some(t)) => Instant::now()
                .checked_add(t)
                .map_or(Self::Forever, Self::Until),
            (false, None) => Self::Forever,
        }
    }

    /// Time left (`Some(None)`: forever; `None`: do not block).
    fn left(self) -> Option<Option<Duration>> {
        match self {
            Self::No => None,
            Self::Forever => Some(None),
            Self::Until(d) => Some(Some(d.saturating_duration_since(Instant::now()))),
        }
    }
}

/// One end of a flow: a ring to write, a ring to read, in the shared pool. Reads and writes
/// take `&self`, so one thread may read while another writes (share it in an `Arc`); reads
/// are serialised among themselves, as are writes. Dropping it deallocates the flow.
#[derive(Debug)]
pub struct Flow {
    client: Arc<Inner>,
    pool: Arc<Pool>,
    info: FlowInfo,
    /// A block read but not yet handed out (its SDU did not fit the caller's buffer).
    rx: Mutex<Option<u32>>,
    tx: Mutex<()>,
    settings: Mutex<Settings>,
    deallocated: AtomicBool,
}

impl Flow {
    /// The system-wide flow id.
    pub fn id(&self) -> u32 {
        self.info.flow_id
    }

    /// The pid of the process at the other end.
    pub fn peer_pid(&self) -> u32 {
        self.info.n_1_pid
    }

    /// The name the flow was allocated to.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The flow's QoS (for an accepted flow, what the allocating side asked for).
    pub fn qos(&self) -> QosSpec {
        self.info.qos.clone().unwrap_or_else(qos::raw)
    }

    /// Everything the IRMd said about the flow.
    pub fn info(&self) -> &FlowInfo {
        &self.info
    }

    /// The pool the flow's packets live in.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The largest SDU a write takes: the smaller of what the flow's IPCP carries (as the
    /// IRMd said: e.g. MTU − 4 for an Ethernet layer; direct flows and the local IPCP have no
    /// limit of their own) and the pool's largest block. Larger writes fail with
    /// [`Error::TooLarge`] instead of being dropped further down.
    pub fn max_sdu(&self) -> usize {
        let pool = self.pool.layout().max_len();
        self.info.max_sdu.map_or(pool, |layer| {
            pool.min(usize::try_from(layer).unwrap_or(usize::MAX))
        })
    }

    /// Bounds blocking reads (`None`: wait forever, the default).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) {
        lock(&self.settings).read_timeout = timeout;
    }

    /// Bounds blocking writes (waiting for a pool block or ring room).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) {
        lock(&self.settings).write_timeout = timeout;
    }

    /// Bounds both reads and writes.
    pub fn set_timeout(&self, timeout: Option<Duration>) {
        let mut s = lock(&self.settings);
        s.read_timeout = timeout;
        s.write_timeout = timeout;
    }

    /// Non-blocking reads and writes: [`Error::WouldBlock`] instead of waiting.
    pub fn set_nonblocking(&self, nonblocking: bool) {
        let mut s = lock(&self.settings);
        s.read_nonblocking = nonblocking;
        s.write_nonblocking = nonblocking;
    }

    /// Non-blocking reads only.
    pub fn set_read_nonblocking(&self, nonblocking: bool) {
        lock(&self.settings).read_nonblocking = nonblocking;
    }

    /// Non-blocking writes only.
    pub fn set_write_nonblocking(&self, nonblocking: bool) {
        lock(&self.settings).write_nonblocking = nonblocking;
    }

    /// The read timeout.
    pub fn read_timeout(&self) -> Option<Duration> {
        lock(&self.settings).read_timeout
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> Option<Duration> {
        lock(&self.settings).write_timeout
    }

    /// SDUs waiting to be read.
    pub fn rx_queue_len(&self) -> Result<u32> {
        Ok(self.pool.ring_len(self.info.rx_ring)?)
    }

    /// SDUs written but not yet read by the other end.
    pub fn tx_queue_len(&self) -> Result<u32> {
        Ok(self.pool.ring_len(self.info.tx_ring)?)
    }

    fn check_live(&self) -> Result<()> {
        if self.deallocated.load(Ordering::Acquire) {
            Err(Error::Deallocated(self.info.flow_id))
        } else {
            Ok(())
        }
    }

    fn read_wait(&self) -> Wait {
        let s = *lock(&self.settings);
        Wait::new(s.read_nonblocking, s.read_timeout)
    }

    fn write_wait(&self) -> Wait {
        let s = *lock(&self.settings);
        Wait::new(s.write_nonblocking, s.write_timeout)
    }

    /// The next packet, from the stash or the ring; the caller holds the read lock.
    fn next_packet(&self, stash: &mut Option<u32>) -> Result<Packet<'_>> {
        if let Some(index) = stash.take() {
            return Ok(self.pool.packet(index)?);
        }
        let reader = self.pool.ring_reader(self.info.rx_ring)?;
        let packet = match self.read_wait().left() {
            None => reader.try_read()?,
            Some(timeout) => reader.read(timeout)?,
        };
        Ok(packet)
    }

    /// Reads the next SDU into `buf` and returns its length. If it does not fit, nothing is
    /// consumed: [`Error::BufferTooSmall`] says how large it is. [`Error::FlowDown`] or
    /// [`Error::PeerGone`] once the flow ended and everything sent before was read.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize> {
        self.check_live()?;
        let mut stash = lock(&self.rx);
        let packet = self.next_packet(&mut stash)?;
        let n = packet.len();
        if n > buf.len() {
            *stash = Some(packet.into_index());
            return Err(Error::BufferTooSmall {
                need: n,
                have: buf.len(),
            });
        }
        buf[..n].copy_from_slice(packet.data());
        Ok(n)
    }

    /// Takes the next SDU without copying: the pool block itself, which goes back to the
    /// pool when the packet is dropped (or can be written to a flow of the same pool).
    pub fn read_packet(&self) -> Result<Packet<'_>> {
        self.check_live()?;
        let mut stash = lock(&self.rx);
        self.next_packet(&mut stash)
    }

    /// A packet of `len` payload bytes from the flow's pool, to fill and
    /// [`Flow::write_packet`] without a copy. Waits for a free block as writes do.
    pub fn alloc_packet(&self, len: usize) -> Result<Packet<'_>> {
        self.alloc_until(len, self.write_wait())
    }

    fn alloc_until(&self, len: usize, wait: Wait) -> Result<Packet<'_>> {
        let max = self.max_sdu();
        if len > max {
            return Err(Error::TooLarge { len, max });
        }
        let packet = match wait.left() {
            None => self.pool.try_alloc(len)?,
            Some(timeout) => self.pool.alloc(len, timeout)?,
        };
        Ok(packet)
    }

    /// Sends `data` as one SDU: one pool block, one copy. An SDU larger than
    /// [`Flow::max_sdu`] is refused ([`Error::TooLarge`]); a full ring waits (or times out,
    /// or [`Error::WouldBlock`] when non-blocking); nothing is ever dropped silently.
    pub fn write(&self, data: &[u8]) -> Result<()> {
        self.check_live()?;
        let wait = self.write_wait();
        let mut packet = self.alloc_until(data.len(), wait)?;
        packet.data_mut().copy_from_slice(data);
        self.send(packet, wait)
    }

    /// Sends a packet of the flow's pool as one SDU, without a copy. A packet larger than
    /// [`Flow::max_sdu`] is refused ([`Error::TooLarge`]) and released.
    pub fn write_packet(&self, packet: Packet<'_>) -> Result<()> {
        self.check_live()?;
        let (len, max) = (packet.len(), self.max_sdu());
        if len > max {
            return Err(Error::TooLarge { len, max });
        }
        if !std::ptr::eq(packet.pool(), &*self.pool) {
            return Err(Error::ForeignPacket {
                packet_pool: packet.pool().name().to_owned(),
                flow_pool: self.pool.name().to_owned(),
            });
        }
        self.send(packet, self.write_wait())
    }

    fn send(&self, packet: Packet<'_>, wait: Wait) -> Result<()> {
        let _tx = lock(&self.tx);
        let writer = self.pool.ring_writer(self.info.tx_ring)?;
        let sent = match wait.left() {
            None => writer.try_write(packet),
            Some(timeout) => writer.write(packet, timeout),
        };
        // On failure the packet comes back and is released here; the caller hears why.
        sent.map_err(|(_packet, e)| e.into())
    }

    /// Deallocates the flow: both directions go down (the other end reads what is queued,
    /// then [`Error::FlowDown`]) and the IRMd frees the rings once both ends are done.
    pub fn dealloc(self) -> Result<()> {
        self.dealloc_once()
    }

    fn dealloc_once(&self) -> Result<()> {
        if self.deallocated.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(index) = lock(&self.rx).take() {
            let _ = self.pool.release(index);
        }
        self.client
            .call(FlowDealloc {
                flow_id: self.info.flow_id,
            })
            .map(drop)
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        let _ = self.dealloc_once();
    }
}
