//! `ipcpd-eth-dix`: the Ethernet DIX IPC process, spawned by the IRMd
//! (`irm ipcp create name <n> type eth-dix`).
//!
//! On `IpcpBootstrap` with an Ethernet configuration (device, EtherType, mode) it maps the
//! IRMd's shared pool (its name comes in `O7S_POOL`, else it is derived from the run
//! directory), opens an [`EthIpcp`] on the device with the pool as AF_XDP UMEM, and starts the
//! event loop on a thread of its own. The IRMd's requests reach that loop as commands:
//!
//! * `IpcpRegister`/`IpcpUnregister`: the hash goes into (out of) the layer's registry.
//! * `IpcpQuery`: a name query in the layer (answered from the directory cache when it has the
//!   name, else a broadcast NAME_QUERY_REQ waits up to 2 s for a reply).
//! * `IpcpFlowAlloc`: resolve the name if needed, FLOW_REQ to its MAC; the response is sent when
//!   the peer answers (or the allocation's timeout passes).
//! * A FLOW_REQ from the network raises `FlowReqArrived` at the IRMd; its answer (a flow to
//!   the accepting application) accepts the flow, an error refuses it.
//! * `IpcpStats`: the counters of [`EthIpcp::snapshot`].
//!
//! Data: the SDUs an application writes on its ring are read by the loop and sent as they are
//! (the DIX header goes into the block's headroom); received SDUs are queued on the
//! application's ring by block index ([`EthIpcp::bind_flow`]). Neither direction copies.
//!
//! Per-user pools: an unprivileged application's rings live in its uid's pool
//! (`IpcpFlowAlloc.pool`, or the pool of the IRMd's answer to a flow request), which the loop
//! maps while a flow uses it. Each SDU is then copied once per direction: the application's
//! block into a frame block of the UMEM before it is sent, and a received frame into a block of
//! the application's pool ([`EthIpcp::bind_flow_copy`]; no block there is a counted drop, the
//! receive path never waits). The ring watcher sleeps on such rings too: it holds the pool
//! mapped while it does, arms the rings itself and wakes the loop at once if one already has
//! something (so nothing written between the loop's last look and its arming is missed).
//! When an application's ring goes down, or the IRMd says the flow ended, the flow is
//! deallocated in the layer and the IPCP deallocates its own end at the IRMd.
//!
//! Liveness, as the reference's application library does it (here for every flow of the
//! layer): a flow whose QoS timeout is not 0 gets an empty SDU (a keepalive) when nothing was
//! sent on it for more than timeout/4; received empty SDUs are never delivered; when nothing
//! arrived for more than timeout, the application's receive ring gets PEER_GONE (it reads what
//! is queued, then `PeerGone`) and the flow ends as usual when the application deallocates.
//!
//! Waking: the loop spins for a while after activity, then sleeps in `poll` on the backend's
//! socket and a wake-up socket. Whoever gives the loop work writes a byte to the wake-up
//! socket: the request handler after each command, and a ring-watch thread that sleeps on
//! every flow ring the loop reads (armed before the loop sleeps, [`o7s_pool::wait_any`]) and
//! so sees an application's SDU at once. A frame, an SDU or a command therefore ends the sleep
//! immediately; the sleep's timeout is only the next layer timer or allocation deadline.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant as StdInstant};

use clap::Parser;
use o7s_ipcpd::pools::PoolMap;
use o7s_ipcpd::runtime::{Error as RuntimeError, Handler, Irm};
use o7s_pool::{
    Access, Bell, Error as PoolError, Packet, Pool, RingArm, RingReader, WAIT_ANY_MAX, WakeWord,
    pool_name, wait_any,
};
use o7s_proto::eth_mgmt::QosSpec as EthQos;
use o7s_proto::irm::{
    Counter, ErrorCode, EthConfig, EthMode, FlowDealloc, FlowReqArrived, HashAlgo,
    IpcpConfig as IrmIpcpConfig, IpcpFlowAlloc, IpcpFlowReply, IpcpInfo, IpcpStatsReply, IpcpType,
    IpcpTypeConfig, QosSpec, RequestKind, Response, ResponseKind,
};
use o7s_xdp_ipcp::{
    Backend as _, DropReason, EthIpcp, Event, Instant, IpcpConfig, ModeChoice, QueryId, QueryStart,
    sys,
};

/// How long a bootstrap may take (opening the backend, attaching XDP).
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the handler waits for the loop on a quick command (register, stats).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a query may take: the layer gives up after 2 s.
const QUERY_WAIT: Duration = Duration::from_millis(2500);
/// How long the IRMd may take to answer a flow request (its default allocation timeout is
/// 20 s).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(25);
/// How long a deallocation may take the IRMd.
/// How many flow requests from the network may wait for the IRMd's answer at once (one
/// helper thread each); more are refused at once (FLOW_REPLY −1, counted), so a peer flooding
/// FLOW_REQs cannot make the IPCP start thousands of threads.
const MAX_PENDING_ARRIVALS: usize = 64;
/// `response` of a FLOW_REPLY refusing a flow whose OAP header failed authentication: the
/// reference's `EAUTH` (its own errno value, `include/ouroboros/errno.h`), negated.
const RESPONSE_EAUTH: i32 = -1009;
/// `response` of a FLOW_REPLY refusing what the IRMd does not support (certificates, key
/// exchange, ciphers): Linux `ENOTSUP`, negated, as the reference's OAP server returns.
const RESPONSE_ENOTSUP: i32 = -95;
/// `response` of any other refusal.
const RESPONSE_REFUSED: i32 = -1;
const DEALLOC_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the loop keeps spinning after the last activity before it sleeps in `poll`.
const SPIN: Duration = Duration::from_micros(300);
/// The longest idle sleep. Frames, application SDUs and commands end a sleep at once, and
/// timers are waited for exactly; this is only a safety net (e.g. for the backend to top up
/// its fill ring once the pool has blocks again).
const IDLE_WAIT_MAX: Duration = Duration::from_millis(20);
/// The idle sleep when the flow rings cannot be watched (more flows than one `futex_waitv`
/// takes, a kernel before 5.16, an SDU waiting for room in the backend), and the pause after
/// a failing `poll`: application SDUs wait this long at most.
const FALLBACK_WAIT: Duration = Duration::from_millis(1);
/// SDUs read from one application ring per loop turn.
const TX_BUDGET: usize = 256;

/// The Ethernet DIX IPC process. The IRMd starts it; it serves until the IRMd closes its
/// connection.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Run directory of the IRMd.
    #[arg(long, env = "O7S_RUNDIR", default_value = o7s::rundir::DEFAULT_RUNDIR)]
    rundir: PathBuf,
    /// The IPCP's name, as the IRMd created it.
    #[arg(long)]
    name: String,
    /// The IRMd's shared pool (default: the one of the run directory).
    #[arg(long, env = "O7S_POOL")]
    pool: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type Refusal = (ErrorCode, String);
type Reply<T> = mpsc::Sender<T>;

/// The writing end of the loop's wake-up socket: a byte written ends the loop's idle `poll`.
#[derive(Debug, Clone)]
struct Wake(Arc<UnixStream>);

impl Wake {
    fn wake(&self) {
        // Non-blocking: a full socket means the loop has wake-ups pending anyway.
        let _ = (&*self.0).write(&[1]);
    }
}

/// The wake-up socket pair: (the loop's reading end, the writing end), both non-blocking.
fn wake_pair() -> std::io::Result<(UnixStream, Wake)> {
    let (rx, tx) = UnixStream::pair()?;
    rx.set_nonblocking(true)?;
    tx.set_nonblocking(true)?;
    Ok((rx, Wake(Arc::new(tx))))
}

/// Reads every pending wake-up byte.
fn drain(rx: &UnixStream) {
    let mut buf = [0u8; 64];
    while let Ok(n) = (&*rx).read(&mut buf) {
        if n < buf.len() {
            break;
        }
    }
}

/// The loop's command channel: sending a command also wakes the loop.
#[derive(Debug, Clone)]
struct Commands {
    tx: mpsc::Sender<Cmd>,
    wake: Wake,
}

/// The event loop has stopped (its receiver is gone).
#[derive(Debug)]
struct LoopGone;

impl Commands {
    fn send(&self, cmd: Cmd) -> Result<(), LoopGone> {
        self.tx.send(cmd).map_err(|_| LoopGone)?;
        self.wake.wake();
        Ok(())
    }
}

/// A flow allocation waiting for the name's MAC or the peer's answer.
#[derive(Debug)]
struct AllocReq {
    flow_id: u32,
    hash: Vec<u8>,
    qos: EthQos,
    tx_ring: u32,
    rx_ring: u32,
    /// The pool of the rings (the UMEM pool, or the application's per-user pool).
    pool: String,
    deadline: StdInstant,
    /// The IRMd's OAP request, for the FLOW_REQ.
    oap: Vec<u8>,
    /// The peer's OAP response and the layer's largest SDU, once allocated.
    reply: Reply<Result<(Vec<u8>, u32), Refusal>>,
}

/// What the handler (or a helper thread) asks of the event loop.
#[derive(Debug)]
enum Cmd {
    Register(Vec<u8>, Reply<Result<(), Refusal>>),
    Unregister(Vec<u8>, Reply<bool>),
    Query(Vec<u8>, Reply<Result<(), Refusal>>),
    Alloc(AllocReq),
    /// The IRMd says the flow (its id) ended.
    Dealloc(u32),
    /// The IRMd's answer to a flow request that arrived on `eid`: the flow as the IPCP sees
    /// it, or a refusal.
    Answer {
        eid: u16,
        flow: Result<Accepted, i32>,
    },
    Stats(Reply<Vec<Counter>>),
}

/// The flow the IRMd set up for a flow request, from the IPCP's side.
#[derive(Debug)]
struct Accepted {
    flow_id: u32,
    tx_ring: u32,
    rx_ring: u32,
    /// The pool of the rings (the accepting application's).
    pool: String,
    /// The OAP response for the FLOW_REPLY.
    oap: Vec<u8>,
}

/// The running layer.
#[derive(Debug)]
struct Running {
    layer: String,
    cmds: Commands,
}

/// The request handler.
#[derive(Debug)]
struct EthDix {
    name: String,
    pool: String,
    running: Mutex<Option<Running>>,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::error(code, message)
}

/// The `response` of the FLOW_REPLY refusing a flow request the IRMd refused. The reference
/// (`src/irmd/main.c` `flow_accept`) has its IPCP put the IRMd's error in the reply when OAP
/// processing fails: `-EAUTH` (its errno 1009) for a header that fails authentication,
/// `-ENOTSUP` for an unsupported certificate / key exchange / cipher, `-ECRYPT` (1008) for a
/// failed key exchange or decryption (o7s refuses those as not supported). When the IRMd
/// cannot even take the request (`ipcp_wait_flow_req_arr` fails), the reference sends no reply
/// at all and the peer times out; o7s refuses with −1 then, as for every other reason.
fn refusal_response(e: &RuntimeError) -> i32 {
    match e {
        RuntimeError::Refused {
            code: ErrorCode::Auth,
            ..
        } => RESPONSE_EAUTH,
        RuntimeError::Refused {
            code: ErrorCode::NotSupported,
            ..
        } => RESPONSE_ENOTSUP,
        _ => RESPONSE_REFUSED,
    }
}

fn hash_len(algo: HashAlgo) -> usize {
    match algo {
        HashAlgo::Sha3_224 => 28,
        HashAlgo::Sha3_256 => 32,
        HashAlgo::Sha3_384 => 48,
        HashAlgo::Sha3_512 => 64,
        HashAlgo::Md5 => 16,
    }
}

fn eth_qos(q: Option<&QosSpec>) -> EthQos {
    let q = q.cloned().unwrap_or_default();
    EthQos {
        loss: q.loss,
        bandwidth: q.bandwidth,
        ber: q.ber,
        max_gap: q.max_gap,
        delay: q.delay,
        timeout: q.timeout,
        in_order: u8::try_from(q.in_order).unwrap_or(u8::MAX),
        availability: u8::try_from(q.availability).unwrap_or(u8::MAX),
    }
}

fn irm_qos(q: &EthQos) -> QosSpec {
    QosSpec {
        delay: q.delay,
        bandwidth: q.bandwidth,
        availability: q.availability.into(),
        loss: q.loss,
        ber: q.ber,
        in_order: q.in_order.into(),
        max_gap: q.max_gap,
        timeout: q.timeout,
    }
}

/// The modes to try for an IRM mode, in order.
fn modes(mode: EthMode) -> &'static [ModeChoice] {
    match mode {
        EthMode::Auto => &[ModeChoice::Auto],
        EthMode::Xdp => &[ModeChoice::Native, ModeChoice::Generic],
        EthMode::Native => &[ModeChoice::Native],
        EthMode::Generic => &[ModeChoice::Generic],
        EthMode::Packet => &[ModeChoice::Packet],
    }
}

/// What the loop thread needs to open the layer.
struct Setup {
    pool: String,
    eth: EthConfig,
    mode: EthMode,
    hash_len: usize,
    irm: Arc<Irm>,
    cmds: Commands,
    /// The reading end of the wake-up socket of `cmds`.
    wake_rx: UnixStream,
}

impl EthDix {
    fn bootstrap(&self, irm: &Arc<Irm>, config: Option<IrmIpcpConfig>) -> Response {
        let Some(config) = config else {
            return refuse(ErrorCode::InvalidArgument, "no configuration");
        };
        let Some(IpcpTypeConfig::Eth(eth)) = config.type_config.clone() else {
            return refuse(
                ErrorCode::InvalidArgument,
                "an eth-dix IPCP needs an Ethernet configuration (dev, ethertype, mode)",
            );
        };
        if eth.dev.is_empty() {
            return refuse(ErrorCode::InvalidArgument, "no network device given");
        }
        let Ok(algo) = HashAlgo::try_from(config.hash) else {
            return refuse(ErrorCode::InvalidArgument, "unknown hash algorithm");
        };
        let Ok(mode) = EthMode::try_from(eth.mode) else {
            return refuse(
                ErrorCode::InvalidArgument,
                format!("unknown Ethernet mode {}", eth.mode),
            );
        };
        let mut running = lock(&self.running);
        if let Some(r) = running.as_ref() {
            return refuse(
                ErrorCode::InvalidArgument,
                format!("already bootstrapped in layer {:?}", r.layer),
            );
        }
        let (wake_rx, wake) = match wake_pair() {
            Ok(pair) => pair,
            Err(e) => return refuse(ErrorCode::Internal, format!("no wake-up socket: {e}")),
        };
        let (tx, rx) = mpsc::channel();
        let cmds = Commands { tx, wake };
        let (ready_tx, ready_rx) = mpsc::channel();
        let setup = Setup {
            pool: self.pool.clone(),
            eth,
            mode,
            hash_len: hash_len(algo),
            irm: irm.clone(),
            cmds: cmds.clone(),
            wake_rx,
        };
        let spawned = std::thread::Builder::new()
            .name("eth-loop".into())
            .spawn(move || event_loop(setup, &rx, &ready_tx));
        if let Err(e) = spawned {
            return refuse(ErrorCode::Busy, format!("no thread for the layer: {e}"));
        }
        let backend = match ready_rx.recv_timeout(BOOTSTRAP_TIMEOUT) {
            Ok(Ok(backend)) => backend,
            Ok(Err(message)) => return refuse(ErrorCode::Internal, message),
            Err(_) => {
                return refuse(
                    ErrorCode::Internal,
                    "the layer did not start in time (or its thread failed)",
                );
            }
        };
        eprintln!(
            "ipcpd-eth-dix: {} bootstrapped in layer {:?}: {backend}",
            self.name, config.layer
        );
        *running = Some(Running {
            layer: config.layer.clone(),
            cmds,
        });
        ResponseKind::Ipcp(IpcpInfo {
            pid: irm.pid(),
            ipcp_type: IpcpType::EthDix.into(),
            name: self.name.clone(),
            layer: Some(config.layer),
            hash: config.hash,
            state: 0,
            backend: Some(backend),
        })
        .into()
    }

    /// Sends `cmd` to the loop; the loop's answer comes on the channel `cmd` holds.
    fn command(&self, cmd: Cmd) -> Result<(), Refusal> {
        let cmds = lock(&self.running).as_ref().map(|r| r.cmds.clone());
        let Some(cmds) = cmds else {
            return Err((ErrorCode::InvalidArgument, "not bootstrapped".to_owned()));
        };
        cmds.send(cmd).map_err(|_| {
            (
                ErrorCode::Internal,
                "the layer's event loop has stopped".to_owned(),
            )
        })
    }
}

fn wait<T>(rx: &mpsc::Receiver<T>, timeout: Duration, what: &str) -> Result<T, Refusal> {
    rx.recv_timeout(timeout).map_err(|_| {
        (
            ErrorCode::TimedOut,
            format!("the layer did not answer the {what} in time"),
        )
    })
}

fn answer(result: Result<(), Refusal>) -> Response {
    match result {
        Ok(()) => Response::ok(),
        Err((code, message)) => refuse(code, message),
    }
}

impl Handler for EthDix {
    fn handle(&self, irm: &Arc<Irm>, request: RequestKind) -> Response {
        let result = match request {
            RequestKind::IpcpBootstrap(r) => return self.bootstrap(irm, r.config),
            RequestKind::IpcpRegister(r) => {
                let (tx, rx) = mpsc::channel();
                self.command(Cmd::Register(r.hash, tx))
                    .and_then(|()| wait(&rx, COMMAND_TIMEOUT, "registration"))
                    .map(answer)
            }
            RequestKind::IpcpUnregister(r) => {
                let (tx, rx) = mpsc::channel();
                self.command(Cmd::Unregister(r.hash, tx))
                    .and_then(|()| wait(&rx, COMMAND_TIMEOUT, "unregistration"))
                    .map(|was| {
                        if was {
                            Response::ok()
                        } else {
                            refuse(ErrorCode::NotFound, "hash not registered")
                        }
                    })
            }
            RequestKind::IpcpQuery(r) => {
                let (tx, rx) = mpsc::channel();
                self.command(Cmd::Query(r.hash, tx))
                    .and_then(|()| wait(&rx, QUERY_WAIT, "name query"))
                    .map(answer)
            }
            RequestKind::IpcpFlowAlloc(r) => self.flow_alloc(r),
            RequestKind::IpcpFlowDealloc(r) => self
                .command(Cmd::Dealloc(r.flow_id))
                .map(|()| Response::ok()),
            RequestKind::IpcpStats(_) => {
                let (tx, rx) = mpsc::channel();
                self.command(Cmd::Stats(tx))
                    .and_then(|()| wait(&rx, COMMAND_TIMEOUT, "statistics request"))
                    .map(|counters| {
                        ResponseKind::Stats(IpcpStatsReply {
                            name: self.name.clone(),
                            counters,
                        })
                        .into()
                    })
            }
            other => Ok(refuse(
                ErrorCode::NotSupported,
                format!("the eth-dix IPCP does not serve {}", other.name()),
            )),
        };
        result.unwrap_or_else(|(code, message)| refuse(code, message))
    }
}

impl EthDix {
    fn flow_alloc(&self, r: IpcpFlowAlloc) -> Result<Response, Refusal> {
        let timeout = Duration::from_millis(r.timeout_ms.into());
        let (tx, rx) = mpsc::channel();
        self.command(Cmd::Alloc(AllocReq {
            flow_id: r.flow_id,
            hash: r.hash,
            qos: eth_qos(r.qos.as_ref()),
            tx_ring: r.tx_ring,
            rx_ring: r.rx_ring,
            pool: r.pool,
            deadline: StdInstant::now() + timeout,
            oap: r.piggyback,
            reply: tx,
        }))?;
        let allocated = wait(&rx, timeout + Duration::from_secs(1), "flow allocation")?;
        Ok(match allocated {
            Ok((piggyback, max_sdu)) => ResponseKind::IpcpFlow(IpcpFlowReply {
                piggyback,
                max_sdu: Some(max_sdu),
            })
            .into(),
            Err((code, message)) => refuse(code, message),
        })
    }
}

/// Where the loop reads an application's SDUs.
enum Source<'p> {
    /// A ring of the UMEM pool: its blocks are sent as they are.
    Ring(RingReader<'p>),
    /// A ring of the application's per-user pool: each SDU is copied into a frame block.
    Copy { pool: Arc<Pool>, ring: u32 },
}

/// One allocated flow: the application's ring the loop reads, an SDU the backend had no room
/// for yet, and (per-user pool) an SDU read that waits for a free frame block.
struct FlowEnd<'p> {
    flow_id: u32,
    source: Source<'p>,
    pending: Option<Packet<'p>>,
    /// A block of the per-user pool, read from its ring, not yet copied (the UMEM had no
    /// free block).
    held: Option<u32>,
}

impl FlowEnd<'_> {
    fn new(flow_id: u32, source: Source<'_>) -> FlowEnd<'_> {
        FlowEnd {
            flow_id,
            source,
            pending: None,
            held: None,
        }
    }

    /// Nothing of the application's is left to send.
    fn drained(&self) -> bool {
        let ring_empty = match &self.source {
            Source::Ring(reader) => reader.is_empty(),
            Source::Copy { pool, ring } => pool.ring_len(*ring).is_ok_and(|n| n == 0),
        };
        self.pending.is_none() && self.held.is_none() && ring_empty
    }
}

/// What waits for a name query.
enum QueryWaiter {
    Query(Reply<Result<(), Refusal>>),
    Alloc(AllocReq),
}

/// The event loop's state besides the IPCP itself.
struct Loop<'p> {
    pool: &'p Pool,
    irm: Arc<Irm>,
    cmds: Commands,
    start: StdInstant,
    flows: HashMap<u16, FlowEnd<'p>>,
    by_id: HashMap<u32, u16>,
    queries: Vec<(QueryId, QueryWaiter)>,
    allocs: HashMap<u16, AllocReq>,
    /// SDUs the layer refused to send (too long for the MTU…).
    tx_refused: u64,
    /// Flow requests from the network waiting for the IRMd's answer (one thread each).
    arrivals: usize,
    /// Flow requests refused because [`MAX_PENDING_ARRIVALS`] were waiting already.
    arrivals_refused: u64,
    /// SDUs copied from a per-user pool into frame blocks.
    tx_copied: u64,
    /// Times a per-user pool's SDU waited for a free frame block.
    tx_pool_empty: u64,
    /// Per-user pools mapped, by name, with how many flows use each.
    pups: PoolMap,
    /// The flow rings armed while the loop sleeps (empty while it is awake).
    arms: Vec<RingArm<'p>>,
    /// The per-user pools' rings handed to the watcher while the loop sleeps.
    foreign: Vec<(Arc<Pool>, u32)>,
}

/// The flow rings the loop sleeps on, as handed to the ring watcher.
struct Armed<'p> {
    /// Bumped for every new set of words.
    generation: u64,
    /// The watcher has woken the loop for this generation, or the loop is awake: the watcher
    /// waits for the next.
    fired: bool,
    /// Rings of the UMEM pool, armed by the loop.
    words: Vec<WakeWord<'p>>,
    /// Rings of per-user pools (pool, ring), armed by the watcher itself.
    foreign: Vec<(Arc<Pool>, u32)>,
}

/// The ring watcher: a thread that sleeps on the rings the loop reads while the loop sleeps,
/// and wakes the loop's `poll` (through the wake-up socket) when an application writes or a
/// ring goes down. A [`Bell`] hands it new rings or stops it.
struct RingWatch<'p> {
    bell: Bell,
    stop: AtomicBool,
    /// Cleared when the watcher cannot run (no thread, no `futex_waitv`): the loop then
    /// sleeps at most [`FALLBACK_WAIT`].
    usable: AtomicBool,
    armed: Mutex<Armed<'p>>,
}

impl<'p> RingWatch<'p> {
    fn new() -> Self {
        Self {
            bell: Bell::new(),
            stop: AtomicBool::new(false),
            usable: AtomicBool::new(true),
            armed: Mutex::new(Armed {
                generation: 0,
                fired: false,
                words: Vec::with_capacity(WAIT_ANY_MAX),
                foreign: Vec::with_capacity(WAIT_ANY_MAX),
            }),
        }
    }

    /// The watcher thread's body. Allocates nothing.
    fn run(&self, wake: &Wake) {
        let mut words = Vec::with_capacity(WAIT_ANY_MAX);
        // Clones of the per-user pools watched: mapped for as long as their words are used.
        let mut foreign: Vec<(Arc<Pool>, u32)> = Vec::with_capacity(WAIT_ANY_MAX);
        loop {
            // Taken before the rings: a later hand-over rings the bell and ends the wait.
            let bell = self.bell.word();
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            words.clear();
            foreign.clear();
            let generation = {
                let armed = lock(&self.armed);
                if !armed.fired {
                    words.extend_from_slice(&armed.words);
                    foreign.extend(armed.foreign.iter().cloned());
                }
                armed.generation
            };
            // Every word on the stack: the bell, the loop's rings, then the per-user pools'
            // rings armed here (their arms live until the end of this turn).
            let mut all = [bell; WAIT_ANY_MAX];
            let mut n = 1;
            for w in words.iter().take(WAIT_ANY_MAX - n) {
                all[n] = *w;
                n += 1;
            }
            let mut arms: [Option<RingArm<'_>>; WAIT_ANY_MAX] = std::array::from_fn(|_| None);
            let mut ready = false;
            for (slot, (pool, ring)) in arms.iter_mut().zip(&foreign) {
                if n == WAIT_ANY_MAX {
                    break;
                }
                let Ok(reader) = pool.ring_reader(*ring) else {
                    // Gone meanwhile: the loop finds out itself.
                    ready = true;
                    continue;
                };
                let arm = reader.arm();
                ready |= arm.is_ready();
                all[n] = arm.word();
                n += 1;
                *slot = Some(arm);
            }
            let fired = if ready {
                true
            } else {
                match wait_any(&all[..n], None) {
                    Ok(Some(i)) => i > 0,
                    // A signal.
                    Ok(None) => false,
                    Err(e) => {
                        eprintln!(
                            "ipcpd-eth-dix: cannot sleep on the flow rings ({e}); \
                             the loop polls them every {FALLBACK_WAIT:?}"
                        );
                        self.usable.store(false, Ordering::SeqCst);
                        wake.wake();
                        return;
                    }
                }
            };
            // Disarmed before anything else: writers stop paying for wake-ups.
            drop(arms);
            if fired {
                let mut armed = lock(&self.armed);
                if armed.generation == generation {
                    armed.fired = true;
                }
                drop(armed);
                wake.wake();
            }
        }
    }

    /// Hands the watcher the rings the loop is about to sleep on: `arms` of the UMEM pool and
    /// `foreign` rings of per-user pools (nothing to do if it already waits on exactly these).
    fn watch(&self, arms: &[RingArm<'p>], foreign: &[(Arc<Pool>, u32)]) {
        let mut armed = lock(&self.armed);
        let same = !armed.fired
            && armed.words.len() == arms.len()
            && armed.words.iter().zip(arms).all(|(w, a)| *w == a.word())
            && armed.foreign.len() == foreign.len()
            && armed
                .foreign
                .iter()
                .zip(foreign)
                .all(|(a, b)| Arc::ptr_eq(&a.0, &b.0) && a.1 == b.1);
        if same {
            return;
        }
        armed.words.clear();
        armed.words.extend(arms.iter().map(RingArm::word));
        armed.foreign.clear();
        armed.foreign.extend(foreign.iter().cloned());
        armed.generation += 1;
        armed.fired = false;
        drop(armed);
        self.bell.ring();
    }

    /// The loop is awake: the watcher drops the per-user pools' arms it holds (their writers
    /// would pay a wake-up per write) and waits for the next hand-over.
    fn disarm(&self) {
        let mut armed = lock(&self.armed);
        if armed.foreign.is_empty() || armed.fired {
            return;
        }
        armed.fired = true;
        armed.generation += 1;
        drop(armed);
        self.bell.ring();
    }
}

/// Stops the ring watcher when the loop ends (also on a panic).
struct StopWatch<'a, 'p>(&'a RingWatch<'p>);

impl Drop for StopWatch<'_, '_> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
        self.0.bell.ring();
    }
}

fn open<'p>(pool: &'p Pool, setup: &Setup) -> Result<EthIpcp<'p>, String> {
    let mut errors = Vec::new();
    for &mode in modes(setup.mode) {
        let mut config = IpcpConfig::new(&setup.eth.dev);
        config.hash_len = setup.hash_len;
        config.backend.mode = mode;
        if setup.eth.ethertype != 0 {
            config.backend.ethertype = u16::try_from(setup.eth.ethertype)
                .map_err(|_| format!("EtherType {:#x} is not 16 bits", setup.eth.ethertype))?;
        }
        match EthIpcp::open(pool, &config) {
            Ok(ipcp) => return Ok(ipcp),
            Err(e) => errors.push(format!("{mode:?}: {e}")),
        }
    }
    Err(format!(
        "cannot open the layer on {:?}: {}",
        setup.eth.dev,
        errors.join("; ")
    ))
}

fn event_loop(
    setup: Setup,
    cmds: &mpsc::Receiver<Cmd>,
    ready: &mpsc::Sender<Result<String, String>>,
) {
    let pool = match Pool::open(&setup.pool) {
        Ok(p) => p,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot open pool {:?}: {e}", setup.pool)));
            return;
        }
    };
    let mut ipcp = match open(&pool, &setup) {
        Ok(i) => i,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(ipcp.backend_info().to_string()));
    let mut state = Loop {
        pool: &pool,
        irm: setup.irm.clone(),
        cmds: setup.cmds.clone(),
        start: StdInstant::now(),
        flows: HashMap::new(),
        by_id: HashMap::new(),
        queries: Vec::new(),
        allocs: HashMap::new(),
        tx_refused: 0,
        arrivals: 0,
        arrivals_refused: 0,
        tx_copied: 0,
        tx_pool_empty: 0,
        pups: PoolMap::new(),
        arms: Vec::with_capacity(WAIT_ANY_MAX),
        foreign: Vec::with_capacity(WAIT_ANY_MAX),
    };
    let Setup {
        cmds: commands,
        wake_rx,
        ..
    } = setup;
    let wake = commands.wake.clone();
    drop(commands);
    let watch = RingWatch::new();
    std::thread::scope(|s| {
        let watcher = std::thread::Builder::new()
            .name("ring-watch".into())
            .spawn_scoped(s, || watch.run(&wake));
        if let Err(e) = watcher {
            eprintln!(
                "ipcpd-eth-dix: no ring-watch thread ({e}); SDUs wait up to {FALLBACK_WAIT:?}"
            );
            watch.usable.store(false, Ordering::SeqCst);
        }
        let _stop = StopWatch(&watch);
        let mut last_busy = StdInstant::now();
        loop {
            let mut busy = false;
            loop {
                match cmds.try_recv() {
                    Ok(cmd) => {
                        busy = true;
                        state.command(&mut ipcp, cmd);
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    // Every sender is gone: the handler (and so the process) is ending.
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            let now = state.now();
            match ipcp.poll(now) {
                Ok(activity) => busy |= !activity.is_idle(),
                Err(e) => {
                    eprintln!("ipcpd-eth-dix: poll: {e}");
                    std::thread::sleep(FALLBACK_WAIT);
                }
            }
            while let Some(event) = ipcp.layer_mut().poll_event() {
                busy = true;
                state.event(&mut ipcp, event);
            }
            while let Some(eid) = ipcp.poll_peer_gone() {
                state.peer_gone(&ipcp, eid);
            }
            busy |= state.transmit(&mut ipcp);
            state.expire(&mut ipcp);
            if busy {
                last_busy = StdInstant::now();
            } else if last_busy.elapsed() > SPIN {
                state.sleep(&ipcp, &watch, &wake_rx);
            } else {
                std::thread::yield_now();
            }
        }
    });
}

impl<'p> Loop<'p> {
    fn now(&self) -> Instant {
        Instant::from_millis(u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Sleeps until a frame arrives, an application writes to (or takes down) one of the flow
    /// rings, a command comes, or the next timer is due. Allocates nothing.
    fn sleep(&mut self, ipcp: &EthIpcp<'p>, watch: &RingWatch<'p>, wake_rx: &UnixStream) {
        let mut timeout = self.next_timer(ipcp).min(IDLE_WAIT_MAX);
        let watchable = watch.usable.load(Ordering::SeqCst)
            && self.flows.len() < WAIT_ANY_MAX
            && self
                .flows
                .values()
                .all(|end| end.pending.is_none() && end.held.is_none());
        if watchable {
            // Armed before the last look: an SDU written after it moves a word the watcher
            // sleeps on (or is about to, and then does not sleep). Per-user pools' rings are
            // armed by the watcher, which looks at them again once armed.
            for end in self.flows.values() {
                match &end.source {
                    Source::Ring(reader) => self.arms.push(reader.arm()),
                    Source::Copy { pool, ring } => self.foreign.push((pool.clone(), *ring)),
                }
            }
            let foreign_ready = self
                .foreign
                .iter()
                .any(|(pool, ring)| pool.ring_len(*ring).is_ok_and(|n| n > 0));
            if foreign_ready || self.arms.iter().any(RingArm::is_ready) {
                self.arms.clear();
                self.foreign.clear();
                return;
            }
            watch.watch(&self.arms, &self.foreign);
        } else {
            timeout = timeout.min(FALLBACK_WAIT);
        }
        match sys::poll_readable_set(ipcp.backend().rx_fds(), wake_rx.as_raw_fd(), timeout) {
            Ok((_, true)) => drain(wake_rx),
            Ok(_) => {}
            Err(e) => {
                eprintln!("ipcpd-eth-dix: wait: {e}");
                std::thread::sleep(FALLBACK_WAIT);
            }
        }
        // Awake: the applications' writes stop paying for wake-ups.
        self.arms.clear();
        if !self.foreign.is_empty() {
            self.foreign.clear();
            watch.disarm();
        }
    }

    /// How long until the layer's next timer, the next keepalive or peer timeout, or the next
    /// allocation deadline.
    fn next_timer(&self, ipcp: &EthIpcp<'p>) -> Duration {
        // `now` counts whole milliseconds: one more so the timer is due on waking.
        let layer = match (ipcp.layer().poll_timeout(), ipcp.liveness_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(|t| t.saturating_duration_since(self.now()) + Duration::from_millis(1));
        let now = StdInstant::now();
        let alloc = self
            .allocs
            .values()
            .map(|r| r.deadline.saturating_duration_since(now))
            .min();
        match (layer, alloc) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(IDLE_WAIT_MAX),
        }
    }

    fn command(&mut self, ipcp: &mut EthIpcp<'p>, cmd: Cmd) {
        match cmd {
            Cmd::Register(hash, reply) => {
                let r = ipcp
                    .layer_mut()
                    .register(&hash)
                    .map(drop)
                    .map_err(|e| (ErrorCode::InvalidArgument, e.to_string()));
                let _ = reply.send(r);
            }
            Cmd::Unregister(hash, reply) => {
                let _ = reply.send(ipcp.layer_mut().unregister(&hash));
            }
            Cmd::Query(hash, reply) => {
                let now = self.now();
                match ipcp.layer_mut().query(&hash, now) {
                    Ok(QueryStart::Resolved(_)) => {
                        let _ = reply.send(Ok(()));
                    }
                    Ok(QueryStart::Pending(id)) => {
                        self.queries.push((id, QueryWaiter::Query(reply)));
                    }
                    Err(e) => {
                        let _ = reply.send(Err((ErrorCode::InvalidArgument, e.to_string())));
                    }
                }
            }
            Cmd::Alloc(req) => {
                let now = self.now();
                match ipcp.layer_mut().query(&req.hash, now) {
                    Ok(QueryStart::Resolved(_)) => self.alloc(ipcp, req),
                    Ok(QueryStart::Pending(id)) => {
                        self.queries.push((id, QueryWaiter::Alloc(req)));
                    }
                    Err(e) => {
                        let _ = req
                            .reply
                            .send(Err((ErrorCode::InvalidArgument, e.to_string())));
                    }
                }
            }
            Cmd::Dealloc(flow_id) => {
                // The IRMd flags the application's ring down before it says so: what is still
                // queued on it goes out first (`transmit` ends the flow once it is drained).
                let eid = self.by_id.get(&flow_id).copied();
                let drained = eid
                    .and_then(|eid| self.flows.get(&eid))
                    .is_some_and(FlowEnd::drained);
                if let (Some(eid), true) = (eid, drained) {
                    self.end_flow(ipcp, eid, "the irmd ended it");
                }
            }
            Cmd::Answer { eid, flow } => {
                self.arrivals = self.arrivals.saturating_sub(1);
                self.answer(ipcp, eid, flow);
            }
            Cmd::Stats(reply) => {
                let _ = reply.send(self.counters(ipcp));
            }
        }
    }

    /// Sends the FLOW_REQ of a resolved allocation.
    fn alloc(&mut self, ipcp: &mut EthIpcp<'p>, req: AllocReq) {
        match ipcp.layer_mut().flow_alloc(&req.hash, req.qos, &req.oap) {
            Ok(eid) => {
                self.allocs.insert(eid, req);
            }
            Err(e) => {
                let _ = req.reply.send(Err((ErrorCode::Busy, e.to_string())));
            }
        }
    }

    /// A per-user pool mapped for one more flow (see [`Loop::release`]).
    fn acquire(&mut self, name: &str) -> Result<Arc<Pool>, String> {
        self.pups
            .acquire(name)
            .map_err(|e| format!("cannot open pool {name:?}: {e}"))
    }

    /// One flow less uses per-user pool `name`; the last unmaps it (the IRMd destroys it
    /// once nobody uses it, and a later pool of that name is a new object).
    fn release(&mut self, name: &str) {
        self.pups.release(name);
    }

    /// Binds flow `eid` to the application's rings in pool `pool`: received SDUs go to `tx`,
    /// the application's are read from `rx`. The UMEM pool's rings are used as they are;
    /// another pool (a per-user pool) is mapped and its SDUs copied. On error nothing stays
    /// bound.
    fn bind(
        &mut self,
        ipcp: &mut EthIpcp<'p>,
        eid: u16,
        pool: &str,
        (tx, rx): (u32, u32),
    ) -> Result<Source<'p>, String> {
        if pool == self.pool.name() {
            ipcp.bind_flow(eid, tx).map_err(|e| e.to_string())?;
            return match self.pool.ring_reader(rx) {
                Ok(reader) => Ok(Source::Ring(reader)),
                Err(e) => {
                    ipcp.unbind_flow(eid);
                    Err(e.to_string())
                }
            };
        }
        let theirs = self.acquire(pool)?;
        let bound = theirs
            .ring_reader(rx)
            .map(drop)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                ipcp.bind_flow_copy(eid, theirs.clone(), tx)
                    .map_err(|e| e.to_string())
            });
        match bound {
            Ok(()) => Ok(Source::Copy {
                pool: theirs,
                ring: rx,
            }),
            Err(e) => {
                self.release(pool);
                Err(e)
            }
        }
    }

    /// Undoes [`Loop::bind`] for a flow that did not come to be.
    fn unbind(&mut self, ipcp: &mut EthIpcp<'p>, eid: u16, source: &Source<'p>) {
        ipcp.unbind_flow(eid);
        if let Source::Copy { pool, .. } = source {
            self.release(pool.name());
        }
    }

    /// The IRMd answered a flow request that arrived on `eid`.
    fn answer(&mut self, ipcp: &mut EthIpcp<'p>, eid: u16, flow: Result<Accepted, i32>) {
        let flow = match flow {
            Ok(flow) => flow,
            Err(response) => {
                let _ = ipcp.layer_mut().flow_refuse(eid, response, b"");
                return;
            }
        };
        let flow_id = flow.flow_id;
        match self.bind(ipcp, eid, &flow.pool, (flow.tx_ring, flow.rx_ring)) {
            Ok(source) => {
                if let Err(e) = ipcp.layer_mut().flow_accept(eid, &flow.oap) {
                    eprintln!("ipcpd-eth-dix: cannot accept flow eid {eid}: {e}");
                    self.unbind(ipcp, eid, &source);
                    let _ = ipcp.layer_mut().flow_dealloc(eid);
                    self.dealloc_at_irmd(flow_id);
                    return;
                }
                let copy = matches!(source, Source::Copy { .. });
                self.flows.insert(eid, FlowEnd::new(flow_id, source));
                self.by_id.insert(flow_id, eid);
                eprintln!(
                    "ipcpd-eth-dix: flow {flow_id} accepted on eid {eid}{}",
                    if copy {
                        " (copied to and from its pool)"
                    } else {
                        ""
                    }
                );
            }
            Err(e) => {
                eprintln!("ipcpd-eth-dix: flow {flow_id}: rings not usable: {e}");
                let _ = ipcp.layer_mut().flow_refuse(eid, RESPONSE_REFUSED, b"");
                self.dealloc_at_irmd(flow_id);
            }
        }
    }

    fn event(&mut self, ipcp: &mut EthIpcp<'p>, event: Event) {
        match event {
            Event::QueryResolved { id, .. } | Event::QueryTimedOut { id, .. } => {
                let resolved = matches!(event, Event::QueryResolved { .. });
                let mut i = 0;
                while i < self.queries.len() {
                    if self.queries[i].0 != id {
                        i += 1;
                        continue;
                    }
                    let (_, waiter) = self.queries.swap_remove(i);
                    match waiter {
                        QueryWaiter::Query(reply) => {
                            let _ = reply.send(if resolved {
                                Ok(())
                            } else {
                                Err((ErrorCode::NotFound, "no answer in the layer".to_owned()))
                            });
                        }
                        QueryWaiter::Alloc(req) if resolved => self.alloc(ipcp, req),
                        QueryWaiter::Alloc(req) => {
                            let _ = req.reply.send(Err((
                                ErrorCode::NotFound,
                                "the name is not reachable in the layer".to_owned(),
                            )));
                        }
                    }
                }
            }
            Event::FlowReqArrived {
                eid,
                hash,
                qos,
                oap,
                ..
            } => {
                if self.arrivals >= MAX_PENDING_ARRIVALS {
                    self.arrivals_refused += 1;
                    if self.arrivals_refused.is_power_of_two() {
                        eprintln!(
                            "ipcpd-eth-dix: {MAX_PENDING_ARRIVALS} flow requests wait for the \
                             irmd: refused the one on eid {eid} ({} so far)",
                            self.arrivals_refused
                        );
                    }
                    let _ = ipcp.layer_mut().flow_refuse(eid, RESPONSE_REFUSED, b"");
                    return;
                }
                let (irm, cmds) = (self.irm.clone(), self.cmds.clone());
                let max_sdu = u32::try_from(ipcp.layer().config().max_sdu()).ok();
                let spawned = std::thread::Builder::new().name("flow-req".into()).spawn(
                    move || {
                        let request = FlowReqArrived {
                            hash,
                            qos: Some(irm_qos(&qos)),
                            timeout_ms: 0,
                            piggyback: oap,
                            max_sdu,
                        };
                        let flow = match irm.call_ok(request, ANSWER_TIMEOUT) {
                            Ok(Some(ResponseKind::Flow(info))) => Ok(Accepted {
                                flow_id: info.flow_id,
                                tx_ring: info.tx_ring,
                                rx_ring: info.rx_ring,
                                pool: info.pool,
                                oap: info.piggyback,
                            }),
                            Ok(other) => {
                                eprintln!(
                                    "ipcpd-eth-dix: unexpected answer to FlowReqArrived: {other:?}"
                                );
                                Err(RESPONSE_REFUSED)
                            }
                            Err(e) => {
                                eprintln!("ipcpd-eth-dix: flow request on eid {eid} refused: {e}");
                                Err(refusal_response(&e))
                            }
                        };
                        let _ = cmds.send(Cmd::Answer { eid, flow });
                    },
                );
                match spawned {
                    Ok(_) => self.arrivals += 1,
                    Err(e) => {
                        eprintln!("ipcpd-eth-dix: no thread for a flow request: {e}");
                        let _ = ipcp.layer_mut().flow_refuse(eid, RESPONSE_REFUSED, b"");
                    }
                }
            }
            Event::FlowAllocated { eid, oap } => {
                let Some(req) = self.allocs.remove(&eid) else {
                    // Given up on meanwhile.
                    let _ = ipcp.layer_mut().flow_dealloc(eid);
                    return;
                };
                match self.bind(ipcp, eid, &req.pool, (req.tx_ring, req.rx_ring)) {
                    Ok(source) => {
                        self.flows.insert(eid, FlowEnd::new(req.flow_id, source));
                        self.by_id.insert(req.flow_id, eid);
                        let max_sdu = ipcp.layer().config().max_sdu();
                        let max_sdu = u32::try_from(max_sdu).unwrap_or(u32::MAX);
                        if req.reply.send(Ok((oap, max_sdu))).is_err() {
                            // The handler gave up: the IRMd undoes the flow.
                            self.end_flow(ipcp, eid, "the allocation was given up");
                        } else {
                            eprintln!("ipcpd-eth-dix: flow {} allocated on eid {eid}", req.flow_id);
                        }
                    }
                    Err(e) => {
                        let _ = ipcp.layer_mut().flow_dealloc(eid);
                        let _ = req.reply.send(Err((
                            ErrorCode::InvalidArgument,
                            format!("flow {}: rings not usable: {e}", req.flow_id),
                        )));
                    }
                }
            }
            Event::FlowAllocFailed { eid, response, .. } => {
                if let Some(req) = self.allocs.remove(&eid) {
                    let _ = req.reply.send(Err((
                        ErrorCode::PermissionDenied,
                        format!("the peer refused the flow (response {response})"),
                    )));
                }
            }
        }
    }

    /// Moves the applications' SDUs to the backend; returns whether it sent any.
    fn transmit(&mut self, ipcp: &mut EthIpcp<'p>) -> bool {
        let mut sent = false;
        let mut ended: Vec<(u16, String)> = Vec::new();
        let umem = self.pool;
        for (&eid, end) in &mut self.flows {
            let FlowEnd {
                source,
                pending,
                held,
                ..
            } = end;
            let source = &*source;
            // Per-user pool: its reader for this turn.
            let copy_reader = match source {
                Source::Ring(_) => None,
                Source::Copy { pool, ring } => match pool.ring_reader(*ring) {
                    Ok(r) => Some((&**pool, r)),
                    Err(e) => {
                        ended.push((eid, e.to_string()));
                        continue;
                    }
                },
            };
            for _ in 0..TX_BUDGET {
                let packet = match (pending.take(), source, &copy_reader) {
                    (Some(p), ..) => p,
                    (None, Source::Ring(reader), _) => match reader.try_read() {
                        Ok(p) => p,
                        Err(e) if e.is_would_block() => break,
                        Err(e) => {
                            ended.push((eid, e.to_string()));
                            break;
                        }
                    },
                    (None, Source::Copy { .. }, Some((theirs, reader))) => {
                        let sdu = match held.take() {
                            Some(index) => theirs.packet(index),
                            None => reader.try_read(),
                        };
                        let sdu = match sdu {
                            Ok(p) => p,
                            Err(e) if e.is_would_block() => break,
                            Err(e) => {
                                ended.push((eid, e.to_string()));
                                break;
                            }
                        };
                        match umem.try_alloc(sdu.len()) {
                            Ok(mut frame) => {
                                frame.data_mut().copy_from_slice(sdu.data());
                                self.tx_copied += 1;
                                // `sdu` goes back to the application's pool.
                                frame
                            }
                            Err(PoolError::TooLarge { .. }) => {
                                self.tx_refused += 1;
                                continue;
                            }
                            Err(_) => {
                                // Kept: sent once the UMEM has a block again.
                                *held = Some(sdu.into_index());
                                self.tx_pool_empty += 1;
                                break;
                            }
                        }
                    }
                    (None, Source::Copy { .. }, None) => break,
                };
                match ipcp.send(eid, packet) {
                    Ok(()) => sent = true,
                    Err((packet, e)) if e.is_would_block() => {
                        *pending = Some(packet);
                        break;
                    }
                    // The block goes back to the pool; counted.
                    Err((_packet, _e)) => self.tx_refused += 1,
                }
            }
        }
        for (eid, why) in ended {
            self.end_flow(ipcp, eid, &why);
        }
        sent
    }

    /// Gives up on allocations whose deadline passed.
    fn expire(&mut self, ipcp: &mut EthIpcp<'p>) {
        if self.allocs.is_empty() && self.queries.is_empty() {
            return;
        }
        let now = StdInstant::now();
        let expired: Vec<u16> = self
            .allocs
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(&eid, _)| eid)
            .collect();
        for eid in expired {
            if let Some(req) = self.allocs.remove(&eid) {
                let _ = ipcp.layer_mut().flow_dealloc(eid);
                let _ = req.reply.send(Err((
                    ErrorCode::TimedOut,
                    "the peer did not answer the flow request in time".to_owned(),
                )));
            }
        }
    }

    /// The peer of flow `eid` was silent for longer than the flow's QoS timeout (the IPCP has
    /// set PEER_GONE on the application's ring): said once.
    fn peer_gone(&self, ipcp: &EthIpcp<'p>, eid: u16) {
        let timeout = ipcp.layer().flow(eid).map_or(0, |f| f.qos.timeout);
        let flow = self
            .flows
            .get(&eid)
            .map_or_else(|| "?".to_owned(), |end| end.flow_id.to_string());
        eprintln!(
            "ipcpd-eth-dix: flow {flow} (eid {eid}): nothing from the peer for more than \
             {timeout} ms; the application sees the peer gone"
        );
    }

    /// Ends flow `eid`: unbinds it, frees it in the layer, deallocates the IPCP's end.
    fn end_flow(&mut self, ipcp: &mut EthIpcp<'p>, eid: u16, why: &str) {
        let Some(end) = self.flows.remove(&eid) else {
            return;
        };
        self.by_id.remove(&end.flow_id);
        ipcp.unbind_flow(eid);
        if let Source::Copy { pool, .. } = &end.source {
            if let Some(index) = end.held {
                let _ = pool.release(index);
            }
            self.release(pool.name());
        }
        let _ = ipcp.layer_mut().flow_dealloc(eid);
        eprintln!(
            "ipcpd-eth-dix: flow {} (eid {eid}) ends: {why}",
            end.flow_id
        );
        self.dealloc_at_irmd(end.flow_id);
    }

    fn dealloc_at_irmd(&self, flow_id: u32) {
        let irm = self.irm.clone();
        let spawned = std::thread::Builder::new()
            .name("dealloc".into())
            .spawn(move || {
                if let Err(e) = irm.call_ok(FlowDealloc { flow_id }, DEALLOC_TIMEOUT) {
                    eprintln!("ipcpd-eth-dix: cannot deallocate flow {flow_id}: {e}");
                }
            });
        if let Err(e) = spawned {
            eprintln!("ipcpd-eth-dix: no thread to deallocate flow {flow_id}: {e}");
        }
    }

    fn counters(&self, ipcp: &EthIpcp<'p>) -> Vec<Counter> {
        let mut c: Vec<(String, u64)> = Vec::new();
        let info = ipcp.backend_info();
        c.push((format!("backend: {info}"), 1));
        c.push(("zero copy".into(), u64::from(info.zero_copy)));
        match ipcp.snapshot() {
            Ok(s) => {
                let b = s.backend_stats;
                c.extend([
                    ("rx frames".into(), b.rx_frames),
                    ("tx frames".into(), b.tx_frames),
                    ("rx no buffer".into(), b.rx_no_buffer),
                    ("rx truncated".into(), b.rx_truncated),
                    ("tx copied".into(), b.tx_copied),
                    ("tx completed".into(), b.tx_completed),
                    ("sdus delivered".into(), s.ipcp.delivered),
                    ("sdus sent".into(), s.ipcp.sent),
                    ("drops ring full".into(), s.ipcp.ring_full),
                    ("drops no ring".into(), s.ipcp.no_ring),
                    ("drops layer".into(), s.layer.dropped_total()),
                    (
                        "drops unknown eid".into(),
                        s.dropped(DropReason::UnknownEid),
                    ),
                    ("tx refused".into(), self.tx_refused),
                    ("flow requests waiting".into(), self.arrivals as u64),
                    ("flow requests refused busy".into(), self.arrivals_refused),
                    ("sdus copied out of user pools".into(), self.tx_copied),
                    ("sdus copied into user pools".into(), s.ipcp.rx_copied),
                    (
                        "user pool sdus waiting for a frame".into(),
                        self.tx_pool_empty,
                    ),
                    ("drops user pool empty".into(), s.ipcp.rx_pool_empty),
                    ("keepalives in".into(), s.ipcp.keepalives_in),
                    ("keepalives out".into(), s.ipcp.keepalives_out),
                    ("keepalives blocked".into(), s.ipcp.keepalives_blocked),
                    ("peers timed out".into(), s.ipcp.peers_timed_out),
                    ("mgmt in".into(), s.mgmt_in()),
                    ("mgmt out".into(), s.mgmt_out()),
                    ("flows".into(), s.flows.len() as u64),
                ]);
                if let Some(x) = s.xsk {
                    c.extend([
                        ("xsk rx dropped".into(), x.rx_dropped),
                        ("xsk rx ring full".into(), x.rx_ring_full),
                        ("xsk fill ring empty".into(), x.fill_ring_empty),
                        ("xsk tx invalid".into(), x.tx_invalid),
                    ]);
                }
                if let Some(p) = s.program {
                    c.extend([
                        ("xdp matched".into(), p.matched),
                        ("xdp passed".into(), p.passed),
                        ("xdp redirect failed".into(), p.redirect_failed),
                    ]);
                }
            }
            Err(e) => eprintln!("ipcpd-eth-dix: snapshot: {e}"),
        }
        c.into_iter()
            .map(|(name, value)| Counter { name, value })
            .collect()
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let pool = args
        .pool
        .clone()
        .unwrap_or_else(|| pool_name(&o7s::rundir::shm_prefix_for(&args.rundir), Access::Shared));
    let handler = Arc::new(EthDix {
        name: args.name.clone(),
        pool,
        running: Mutex::new(None),
    });
    match Irm::start(&args.rundir, &args.name, IpcpType::EthDix, handler) {
        Ok((_irm, reader)) => {
            eprintln!(
                "ipcpd-eth-dix: {} (pid {}) up",
                args.name,
                std::process::id()
            );
            let _ = reader.join();
            eprintln!(
                "ipcpd-eth-dix: {}: the irmd closed the connection",
                args.name
            );
            ExitCode::SUCCESS
        }
        Err(RuntimeError::Refused { message, .. }) => {
            eprintln!("ipcpd-eth-dix: {}: the irmd refused: {message}", args.name);
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("ipcpd-eth-dix: {}: {e}", args.name);
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn refused(code: ErrorCode) -> RuntimeError {
        RuntimeError::Refused {
            what: "FlowReqArrived",
            code,
            message: String::new(),
        }
    }

    #[test]
    fn a_refusal_carries_the_reference_response_where_there_is_one() {
        assert_eq!(refusal_response(&refused(ErrorCode::Auth)), -1009);
        assert_eq!(refusal_response(&refused(ErrorCode::NotSupported)), -95);
        for code in [
            ErrorCode::NotFound,
            ErrorCode::TimedOut,
            ErrorCode::Busy,
            ErrorCode::PermissionDenied,
            ErrorCode::PoolMismatch,
        ] {
            assert_eq!(refusal_response(&refused(code)), -1, "{code:?}");
        }
        assert_eq!(refusal_response(&RuntimeError::Closed), -1);
        assert_eq!(
            refusal_response(&RuntimeError::TimedOut {
                what: "FlowReqArrived"
            }),
            -1
        );
    }
}
