//! The daemon: start-up (lock, leftovers, pool, socket), the control socket's connections, the
//! request dispatcher, process watching, and shutdown.
//!
//! Each connection gets one reader task and one writer task. The reader decodes frames with
//! the sans-IO [`FrameDecoder`] and spawns one task per request (at most
//! [`MAX_IN_FLIGHT`] per connection; beyond that the reader stops reading, which pushes back on
//! that client only). Responses go to the writer through a channel in completion order, each
//! tagged with its request's id. A client that sends garbage gets an error response with id 0;
//! after a framing error (oversized length prefix) the stream cannot be trusted and the
//! connection is closed once pending responses are written.
//!
//! Announced processes are watched with a pidfd registered in the runtime's epoll: the IRMd
//! learns of a death when it happens, without polling, removes the process and reclaims its
//! pool blocks.
//!
//! Pools ([`crate::pools`]): an announced process is told its pool, the shared one or its
//! uid's per-user pool (created then); a flow's rings go in the pool of its application ends,
//! and a direct flow between two pools is refused (`PoolMismatch`). A per-user pool is
//! destroyed once its uid's last process is dead (and reclaimed) and no flow has rings in it.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use o7s_pool::{Access, Pool, PoolConfig, pool_name};
use o7s_proto::irm::{
    AnnounceReply, Body, Codec, EndState, Envelope, ErrorCode, FlowAccept, FlowAlloc, FlowInfo,
    FrameDecoder, FrameError, ProcessAnnounce, QosSpec, Request, RequestKind, Response,
    ResponseKind,
};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedWriteHalf, UCred};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::AbortHandle;
use tracing::{debug, error, info, warn};

use crate::config::{Config, ConfigError};
use crate::flows::{Flow, Side};
use crate::lock::{LockError, Lockfile};
use crate::pools::{Creds, Pools};
use crate::registry::{Refusal, Registry, check_name};

mod autostart;
mod boot;
mod ipcps;

pub use ipcps::{CONTROL_TIMEOUT, HELLO_TIMEOUT, TERM_GRACE};
use ipcps::{Link, Proc};

/// Most requests one connection may have in flight.
pub const MAX_IN_FLIGHT: usize = 256;
/// Responses queued for one connection's writer.
const RESPONSE_QUEUE: usize = 64;
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// How long a `FlowAlloc` without a timeout waits for an accepting process (the reference's
/// default allocation timeout).
pub const DEFAULT_ALLOC_TIMEOUT: Duration = Duration::from_secs(20);

/// What the daemon needs to start.
#[derive(Debug)]
pub struct Options {
    /// The run directory: lockfile and socket.
    pub rundir: PathBuf,
    /// Prefix of every shared-memory object of this IRMd.
    pub shm_prefix: String,
    /// The configuration to apply at start-up, already validated.
    pub config: Option<Config>,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The run directory could not be created or prepared.
    #[error("run directory {}: {source}", path.display())]
    Rundir {
        /// The directory or file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another IRMd runs here, or the lockfile is unusable.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A shared-memory object of our prefix exists although no IRMd died holding this run
    /// directory: it belongs to someone else.
    #[error(
        "shared-memory object {name:?} exists but no irmd died in {}: another irmd uses \
         prefix {prefix:?} (pick another --shm-prefix) or it is a leftover to remove by hand",
        rundir.display()
    )]
    ShmInUse {
        /// The object.
        name: String,
        /// Our prefix.
        prefix: String,
        /// Our run directory.
        rundir: PathBuf,
    },
    /// The shared pool could not be created.
    #[error("cannot create the shared pool: {0}")]
    Pool(#[from] o7s_pool::Error),
    /// The control socket could not be bound.
    #[error("cannot listen on {}: {source}", path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The configuration could not be applied.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
}

/// Directory where POSIX shared-memory objects appear on Linux.
const SHM_DIR: &str = "/dev/shm";

/// Names of the shared-memory objects under `prefix` (`<prefix>.*`).
fn shm_objects(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(SHM_DIR) else {
        return Vec::new();
    };
    let dotted = format!("{prefix}.");
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&dotted))
        .collect()
}

/// What a shared-memory object of our prefix is, from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ShmKind {
    /// `<prefix>.pool`: the shared pool, which a live IRMd of this prefix always holds.
    SharedPool,
    /// `<prefix>.pup.<uid>`: a per-user pool, which only an IRMd of this prefix uses.
    UserPool,
    /// `<pool>.ev.<pid>.<token>`: an event set made by process `pid`.
    EventSet { pid: u32 },
    /// Anything else.
    Other,
}

/// Classifies `name`, an object under `<prefix>.`.
fn shm_kind(prefix: &str, name: &str) -> ShmKind {
    let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) else {
        return ShmKind::Other;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // The pool part: `pool` or `pup.<uid>`; what follows it, if anything.
    let (pool, tail) = if let Some(t) = rest.strip_prefix("pool") {
        (ShmKind::SharedPool, t)
    } else if let Some(t) = rest.strip_prefix("pup.") {
        let end = t.find('.').unwrap_or(t.len());
        if !digits(&t[..end]) {
            return ShmKind::Other;
        }
        (ShmKind::UserPool, &t[end..])
    } else {
        return ShmKind::Other;
    };
    if tail.is_empty() {
        return pool;
    }
    let Some((pid, token)) = tail.strip_prefix(".ev.").and_then(|t| t.split_once('.')) else {
        return ShmKind::Other;
    };
    let hex = !token.is_empty() && token.bytes().all(|b| b.is_ascii_hexdigit());
    match pid.parse::<u32>() {
        Ok(n) if digits(pid) && hex => ShmKind::EventSet { pid: n },
        _ => ShmKind::Other,
    }
}

/// Whether process `pid` exists (a reused pid counts as alive: its object is then kept, the
/// safe side).
fn pid_exists(pid: u32) -> bool {
    pid != 0 && Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes a leftover shared-memory object, logging what happened.
fn remove_leftover(name: &str) {
    match std::fs::remove_file(Path::new(SHM_DIR).join(name)) {
        Ok(()) => info!(object = %name, "removed stale shared-memory object"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn!(object = %name, "cannot remove stale object: {e}"),
    }
}

/// Start-up with the lock held and no stale pid in the lockfile (the previous IRMd, if any,
/// stopped cleanly): the objects of `prefix` left by others. A shared pool (or an object we
/// cannot name) belongs to a live IRMd on another run directory with the same prefix, which
/// the lockfile cannot see: that is refused. Per-user pools and event sets are only used with
/// a shared pool of the prefix, so without one they are leftovers (an event set of a client
/// killed after its IRMd stopped, say): those of dead owners are removed, an event set of a
/// process still alive is left to it.
fn clean_start_leftovers(prefix: &str, objects: Vec<String>) -> Result<(), String> {
    let kinds: Vec<(String, ShmKind)> = objects
        .into_iter()
        .map(|n| {
            let k = shm_kind(prefix, &n);
            (n, k)
        })
        .collect();
    if let Some((name, _)) = kinds
        .iter()
        .find(|(_, k)| matches!(k, ShmKind::SharedPool | ShmKind::Other))
    {
        return Err(name.clone());
    }
    for (name, kind) in kinds {
        match kind {
            ShmKind::EventSet { pid } if pid_exists(pid) => {
                info!(object = %name, pid, "leftover event set of a live process; left alone");
            }
            _ => remove_leftover(&name),
        }
    }
    Ok(())
}

/// A started IRMd: it holds its run directory, its pool and its listening socket.
#[derive(Debug)]
pub struct Irmd {
    options: Options,
    lock: Lockfile,
    listener: UnixListener,
    state: Arc<State>,
}

/// What every connection task shares.
#[derive(Debug)]
struct State {
    registry: Mutex<Registry>,
    /// The shared pool.
    pool: Arc<Pool>,
    /// Every pool, and who uses the per-user ones. Locked after the registry, never while
    /// awaiting.
    pools: Mutex<Pools>,
    /// The IRMd's effective uid (its processes share its pool).
    euid: u32,
    /// The gid of group `ouroboros`, if it exists.
    shared_gid: Option<u32>,
    /// Per watched pid: the incarnation watched and the watcher task.
    watchers: Mutex<HashMap<u32, (u64, AbortHandle)>>,
    /// Per waiting flow request (token of the registry's flow table): where its answer goes.
    /// Locked after the registry, and changed only with the registry locked, so an entry
    /// exists exactly while the flow table lists the request as waiting or a matcher is about
    /// to answer it.
    waiters: Mutex<HashMap<u64, Waiter>>,
    /// OAP requests accepted lately (the replay check of flow requests from IPCPs).
    oap: Mutex<crate::oap::Server>,
    /// Numbers the connections, so a closed one's waiting requests can be withdrawn.
    next_conn: AtomicU64,
    /// The run directory (spawned IPCPs are told it).
    rundir: PathBuf,
    /// Spawned IPCP processes by pid: the child to reap and the control link. Locked after
    /// the registry, never while awaiting.
    procs: Mutex<HashMap<u32, Proc>>,
    /// Programs started on demand (auto-start), still running.
    spawned: autostart::Spawned,
    /// Ring flags chosen under the registry lock and not set yet ([`ToFlag`]). Locked after
    /// the registry, alone.
    pending_flags: Mutex<PendingFlags>,
}

/// The answer to a waiting `FlowAccept` or `FlowAlloc`.
type Waiter = oneshot::Sender<Result<FlowInfo, Refusal>>;

impl State {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock is a bug already logged; the registry's methods
        // leave it consistent at every return, so keep serving.
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn pools(&self) -> MutexGuard<'_, Pools> {
        self.pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The pool of owner `uid` (the shared pool for [`crate::pools::SHARED`]), if it exists.
    fn pool_of(&self, uid: u32) -> Option<Arc<Pool>> {
        self.pools().get(uid)
    }

    fn watchers(&self) -> MutexGuard<'_, HashMap<u32, (u64, AbortHandle)>> {
        self.watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn procs(&self) -> MutexGuard<'_, HashMap<u32, Proc>> {
        self.procs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<u64, Waiter>> {
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn pending_flags(&self) -> MutexGuard<'_, PendingFlags> {
        self.pending_flags
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The OAP server's replay list; locked alone.
    fn oap(&self) -> MutexGuard<'_, crate::oap::Server> {
        self.oap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Irmd {
    /// Takes the run directory: lockfile, cleanup of a dead predecessor's leftovers, the shared
    /// pool, the configuration, and the control socket. Call inside a tokio runtime.
    pub fn start(options: Options) -> Result<Self, StartError> {
        let rundir = &options.rundir;
        std::fs::create_dir_all(rundir).map_err(|source| StartError::Rundir {
            path: rundir.clone(),
            source,
        })?;
        let lock = Lockfile::acquire(&crate::lock_path(rundir))?;
        let socket = crate::socket_path(rundir);
        let prefix = &options.shm_prefix;
        if let Some(pid) = lock.stale_pid() {
            warn!(
                pid,
                rundir = %rundir.display(),
                "a previous irmd died without cleaning up; removing its leftovers"
            );
            for name in shm_objects(prefix) {
                remove_leftover(&name);
            }
        } else if let Err(name) = clean_start_leftovers(prefix, shm_objects(prefix)) {
            let _ = lock.release();
            return Err(StartError::ShmInUse {
                name,
                prefix: prefix.clone(),
                rundir: rundir.clone(),
            });
        }
        // We hold the lock, so any socket file here is a dead IRMd's.
        match std::fs::remove_file(&socket) {
            Ok(()) => info!(socket = %socket.display(), "removed stale socket"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                let _ = lock.release();
                return Err(StartError::Socket {
                    path: socket,
                    source,
                });
            }
        }

        let pool_name = pool_name(prefix, Access::Shared);
        let pool = match Pool::create(&pool_name, &PoolConfig::shared_default(), Access::Shared) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                let _ = lock.release();
                return Err(e.into());
            }
        };
        info!(pool = %pool_name, "created the shared pool");

        let undo = |lock: Lockfile| {
            let _ = Pool::unlink(&pool_name);
            let _ = lock.release();
        };
        let mut registry = Registry::new();
        if let Some(config) = &options.config
            && let Err(e) = config.apply(&mut registry)
        {
            undo(lock);
            return Err(e.into());
        }
        let listener = match bind(&socket) {
            Ok(l) => l,
            Err(source) => {
                undo(lock);
                return Err(StartError::Socket {
                    path: socket,
                    source,
                });
            }
        };
        info!(socket = %socket.display(), pid = std::process::id(), "irmd listening");
        let rundir =
            std::path::absolute(&options.rundir).unwrap_or_else(|_| options.rundir.clone());
        let pools = Pools::new(
            &options.shm_prefix,
            pool.clone(),
            PoolConfig::per_user_default(),
        );
        Ok(Self {
            options,
            lock,
            listener,
            state: Arc::new(State {
                registry: Mutex::new(registry),
                pools: Mutex::new(pools),
                euid: rustix::process::geteuid().as_raw(),
                shared_gid: o7s_pool::shared_group_gid(),
                pool,
                watchers: Mutex::new(HashMap::new()),
                waiters: Mutex::new(HashMap::new()),
                oap: Mutex::new(crate::oap::Server::new()),
                next_conn: AtomicU64::new(1),
                rundir,
                procs: Mutex::new(HashMap::new()),
                spawned: autostart::Spawned::default(),
                pending_flags: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The options it started with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Serves clients until `shutdown` completes, then removes the socket, the pool and the
    /// lockfile.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let state = self.state.clone();
                        tokio::spawn(serve_connection(state, stream));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
        self.shutdown();
    }

    fn shutdown(self) {
        autostart::terminate_all(&self.state);
        ipcps::terminate_all(&self.state);
        let socket = crate::socket_path(&self.options.rundir);
        if let Err(e) = std::fs::remove_file(&socket) {
            warn!(socket = %socket.display(), "cannot remove socket: {e}");
        }
        for (_, (_, watcher)) in self.state.watchers().drain() {
            watcher.abort();
        }
        let pool = self.state.pool.name().to_owned();
        if let Err(e) = Pool::unlink(&pool) {
            warn!(pool = %pool, "cannot unlink the pool: {e}");
        }
        for name in self.state.pools().unlink_all() {
            info!(pool = %name, "per-user pool removed");
        }
        let lock = self.lock.path().to_owned();
        if let Err(e) = self.lock.release() {
            warn!(lockfile = %lock.display(), "cannot remove lockfile: {e}");
        }
        info!("irmd stopped");
    }
}

/// Binds the control socket, world-connectable (mode 0666, as in the reference).
fn bind(path: &Path) -> io::Result<UnixListener> {
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Reads frames from one client and answers them.
async fn serve_connection(state: Arc<State>, stream: UnixStream) {
    let peer = stream.peer_cred().ok();
    let peer_pid = peer.and_then(|p| p.pid());
    let conn = state.next_conn.fetch_add(1, Ordering::Relaxed);
    debug!(?peer_pid, conn, "client connected");
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
    let writer = tokio::spawn(write_responses(wr, rx));
    // Requests the IRMd sends on this connection (if it is an IPCP's) and their answers.
    let link = Arc::new(Link::new(tx.clone()));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; READ_CHUNK];
    'read: loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) => {
                if let Err(e) = decoder.finish() {
                    warn!(?peer_pid, "client closed mid-frame: {e}");
                    let _ = tx.send(bad_request(0, &e)).await;
                }
                break;
            }
            Ok(n) => n,
            Err(e) => {
                debug!(?peer_pid, "read failed: {e}");
                break;
            }
        };
        let mut input = &buf[..n];
        while !input.is_empty() {
            let envelope = match decoder.decode(&mut input) {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(e) => {
                    warn!(?peer_pid, "bad frame from client: {e}");
                    let _ = tx.send(bad_request(0, &e)).await;
                    if decoder.has_failed() {
                        break 'read;
                    }
                    continue;
                }
            };
            let request = match envelope.body {
                Some(Body::Request(r)) => r,
                Some(Body::Response(r)) => {
                    if link.deliver(envelope.id, r) {
                        continue;
                    }
                    let _ = tx
                        .send(Envelope::response(
                            envelope.id,
                            Response::error(
                                ErrorCode::BadRequest,
                                "a response to no request of the irmd",
                            ),
                        ))
                        .await;
                    continue;
                }
                None => {
                    let _ = tx
                        .send(Envelope::response(
                            envelope.id,
                            Response::error(ErrorCode::BadRequest, "envelope without a body"),
                        ))
                        .await;
                    continue;
                }
            };
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break 'read;
            };
            let state = state.clone();
            let tx = tx.clone();
            let link = link.clone();
            tokio::spawn(async move {
                let id = envelope.id;
                let response = handle(&state, peer, conn, &link, request).await;
                let _ = tx.send(Envelope::response(id, response)).await;
                drop(permit);
            });
        }
    }
    // Nobody is left to hear about a flow this connection waits for.
    cancel_waits(&state, |t| t.cancel_conn(conn));
    link.close();
    drop(tx);
    let _ = writer.await;
    debug!(?peer_pid, conn, "client disconnected");
}

fn bad_request(id: u64, e: &FrameError) -> Envelope {
    Envelope::response(id, Response::error(ErrorCode::BadRequest, e.to_string()))
}

/// Writes responses as they come, batching what is queued.
async fn write_responses(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Envelope>) {
    let mut out = Vec::new();
    while let Some(first) = rx.recv().await {
        out.clear();
        let mut next = Some(first);
        while let Some(envelope) = next {
            encode_response(&envelope, &mut out);
            next = rx.try_recv().ok();
        }
        if let Err(e) = wr.write_all(&out).await {
            debug!("write to client failed: {e}");
            return;
        }
    }
    let _ = wr.shutdown().await;
}

/// Encodes a response; one too large for a frame becomes an error response.
fn encode_response(envelope: &Envelope, out: &mut Vec<u8>) {
    if let Err(e) = Codec::encode(envelope, out) {
        error!(id = envelope.id, "response not sent: {e}");
        let fallback = Envelope::response(
            envelope.id,
            Response::error(ErrorCode::Internal, format!("response not sent: {e}")),
        );
        if let Err(e) = Codec::encode(&fallback, out) {
            error!("cannot even send an error: {e}");
        }
    }
}

/// Answers one request.
async fn handle(
    state: &Arc<State>,
    peer: Option<UCred>,
    conn: u64,
    link: &Arc<Link>,
    request: Request,
) -> Response {
    let name = request.name();
    let result = match request.kind {
        None => Err(Refusal::new(
            ErrorCode::BadRequest,
            "request without a kind",
        )),
        Some(kind) => dispatch(state, peer, conn, link, kind).await,
    };
    match result {
        Ok(r) => r,
        Err(refusal) => {
            debug!(request = name, "refused: {}", refusal.message);
            Response::error(refusal.code, refusal.message)
        }
    }
}

async fn dispatch(
    state: &Arc<State>,
    peer: Option<UCred>,
    conn: u64,
    link: &Arc<Link>,
    kind: RequestKind,
) -> Result<Response, Refusal> {
    let ok = |r: Result<(), Refusal>| r.map(|()| Response::ok());
    match kind {
        RequestKind::CreateIpcp(r) => ipcps::create(state, r).await,
        RequestKind::DestroyIpcp(r) => ipcps::destroy(state, r.ipcp.as_ref()).await,
        RequestKind::ListIpcps(_) => Ok(ResponseKind::Ipcps(state.registry().list_ipcps()).into()),
        RequestKind::BootstrapIpcp(r) => ipcps::bootstrap(state, r).await,
        RequestKind::CreateName(r) => ok(state.registry().create_name(&r.name, r.lb)),
        RequestKind::DestroyName(r) => ok(state.registry().destroy_name(&r.name)),
        RequestKind::ListNames(_) => Ok(ResponseKind::Names(state.registry().list_names()).into()),
        RequestKind::RegisterName(r) => {
            ipcps::register(state, &r.name, r.target.as_ref(), true).await
        }
        RequestKind::UnregisterName(r) => {
            ipcps::register(state, &r.name, r.target.as_ref(), false).await
        }
        RequestKind::BindProgram(r) => ok(state
            .registry()
            .bind_program(&r.name, &r.program, &r.args, r.auto)),
        RequestKind::UnbindProgram(r) => ok(state
            .registry()
            .unbind_program(&r.program, r.name.as_deref())),
        RequestKind::BindProcess(r) => ok(state.registry().bind_process(r.pid, &r.name)),
        RequestKind::UnbindProcess(r) => {
            ok(state.registry().unbind_process(r.pid, r.name.as_deref()))
        }
        RequestKind::ProcessAnnounce(r) => {
            announce(state, peer, &r).map(|a| ResponseKind::Announced(a).into())
        }
        RequestKind::ProcessExit(r) => {
            authorize(peer, r.pid)?;
            let p = state.registry().remove_process(r.pid)?;
            cancel_waits(state, |t| t.cancel_pid(r.pid));
            end_process(state, r.pid, EndState::Deallocated);
            info!(pid = r.pid, program = %p.program, "process said goodbye");
            // Its watcher stays: the pool blocks are reclaimed when it really dies.
            Ok(Response::ok())
        }
        RequestKind::FlowAlloc(r) => flow_alloc(state, peer, conn, r).await,
        RequestKind::FlowAccept(r) => flow_accept(state, peer, conn, r).await,
        RequestKind::FlowDealloc(r) => ok(flow_dealloc(state, peer, r.flow_id)),
        RequestKind::ListFlows(_) => Ok(ResponseKind::Flows(state.registry().flows.list()).into()),
        RequestKind::IpcpStats(r) => ipcps::stats(state, r).await,
        RequestKind::ListProcesses(_) => {
            Ok(ResponseKind::Processes(state.registry().list_processes()).into())
        }
        RequestKind::ListPrograms(_) => {
            Ok(ResponseKind::Programs(state.registry().list_programs()).into())
        }
        RequestKind::IpcpHello(r) => ipcps::hello(state, peer, link, &r),
        RequestKind::FlowReqArrived(r) => ipcps::flow_req_arrived(state, peer, conn, r).await,
        RequestKind::IpcpBootstrap(_)
        | RequestKind::IpcpRegister(_)
        | RequestKind::IpcpUnregister(_)
        | RequestKind::IpcpQuery(_)
        | RequestKind::IpcpFlowAlloc(_)
        | RequestKind::IpcpFlowDealloc(_) => Err(Refusal::new(
            ErrorCode::BadRequest,
            "the irmd sends this request to IPCPs; it does not serve it",
        )),
    }
}

/// A process may speak for itself; root may speak for anyone.
fn authorize(peer: Option<UCred>, pid: u32) -> Result<(), Refusal> {
    let Some(peer) = peer else {
        return Err(Refusal::new(
            ErrorCode::PermissionDenied,
            "cannot read the caller's credentials",
        ));
    };
    let own = peer.pid().and_then(|p| u32::try_from(p).ok()) == Some(pid);
    if own || peer.uid() == 0 {
        Ok(())
    } else {
        Err(Refusal::new(
            ErrorCode::PermissionDenied,
            format!(
                "pid {:?} (uid {}) may not speak for process {pid}",
                peer.pid(),
                peer.uid()
            ),
        ))
    }
}

/// Registers a process, gives it its pool (the shared pool, or its uid's per-user pool, made
/// if needed), and starts watching it through a pidfd.
fn announce(
    state: &Arc<State>,
    peer: Option<UCred>,
    r: &ProcessAnnounce,
) -> Result<AnnounceReply, Refusal> {
    if r.pid == 0 || r.pid > i32::MAX as u32 {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            format!("bad pid {}", r.pid),
        ));
    }
    check_name("program", &r.program)?;
    authorize(peer, r.pid)?;
    let pidfd = open_pidfd(r.pid)?;
    #[expect(
        deprecated,
        reason = "its replacement is unsafe for any T; an OwnedFd stays open and the same fd \
                  for the AsyncFd's whole life, which is what the unsafe version asks for"
    )]
    let watched = AsyncFd::with_interest(pidfd, tokio::io::Interest::READABLE).map_err(|e| {
        Refusal::new(
            ErrorCode::Internal,
            format!("cannot watch pidfd of {}: {e}", r.pid),
        )
    })?;
    // The pidfd is open: the pid cannot be reused from here on, so /proc speaks of it.
    let creds = Creds::of_pid(r.pid).map_err(|e| {
        Refusal::new(
            ErrorCode::Internal,
            format!("cannot tell who process {} is: {e}", r.pid),
        )
    })?;
    let uid = creds.uid;
    let home = if creds.privileged(state.euid, state.shared_gid) {
        crate::pools::SHARED
    } else {
        uid
    };
    let attached = state.pools().attach(r.pid, home);
    let (pool, destroyed) = attached.map_err(|e| {
        warn!(pid = r.pid, uid, "{e}");
        Refusal::new(
            e.code(),
            format!(
                "process {} (uid {uid}) is not privileged (not root, not the irmd's uid, not in \
                 group {}), so it needs a per-user pool, and {e}: run the irmd as root, or add \
                 the user to group {}",
                r.pid,
                o7s_pool::SHARED_GROUP,
                o7s_pool::SHARED_GROUP
            ),
        )
    })?;
    for name in destroyed {
        info!(pool = %name, "per-user pool destroyed: its pid was reused");
    }
    let reply = AnnounceReply {
        pool: pool.name().to_owned(),
        uid: home,
    };
    let generation = state.registry().announce(r.pid, &r.program, Some(uid));
    let task = tokio::spawn(watch(state.clone(), r.pid, generation, watched));
    if let Some((_, old)) = state
        .watchers()
        .insert(r.pid, (generation, task.abort_handle()))
    {
        old.abort();
    }
    info!(pid = r.pid, program = %r.program, uid, pool = %reply.pool, "process announced");
    Ok(reply)
}

fn open_pidfd(pid: u32) -> Result<OwnedFd, Refusal> {
    let raw = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    let Some(pid_t) = raw else {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            format!("bad pid {pid}"),
        ));
    };
    rustix::process::pidfd_open(pid_t, rustix::process::PidfdFlags::empty()).map_err(|e| {
        if e == rustix::io::Errno::SRCH {
            Refusal::new(ErrorCode::NotFound, format!("no process with pid {pid}"))
        } else {
            Refusal::new(
                ErrorCode::Internal,
                format!("pidfd_open({pid}) failed: {e}"),
            )
        }
    })
}

/// Waits for a process to die, then forgets it and reclaims its pool blocks.
async fn watch(state: Arc<State>, pid: u32, generation: u64, pidfd: AsyncFd<OwnedFd>) {
    // A pidfd becomes readable once, when the process exits; it stays readable.
    if let Err(e) = pidfd.readable().await {
        error!(pid, "watching the process failed: {e}");
        return;
    }
    drop(pidfd);
    {
        let mut watchers = state.watchers();
        if watchers.get(&pid).is_some_and(|(g, _)| *g == generation) {
            watchers.remove(&pid);
        }
    }
    let (removed, reused) = {
        let mut reg = state.registry();
        let removed = reg.remove_dead(pid, generation);
        let reused = reg.process(pid).is_some_and(|p| p.generation != generation);
        (removed, reused)
    };
    if reused {
        // The pid was reused and announced before this ran: everything below goes by pid and
        // would take the new process's flows and blocks. The dead one's blocks stay Owned
        // by that pid until the new process dies too (then reclaimed with its own).
        warn!(
            pid,
            "pid reused by a newly announced process before its predecessor's death was \
             handled; the predecessor's pool blocks are reclaimed when the new process ends"
        );
        return;
    }
    let is_ipcp = state.registry().ipcp_by_pid(pid).is_some();
    if is_ipcp {
        // Its names and its link go first: no flow may be allocated through it any more.
        ipcps::gone(&state, pid).await;
    }
    // No new flow may reach it from here on; then its blocks and ring ends are reclaimed
    // (rings it was an end of get PEER_GONE) before any of its rings can be destroyed.
    cancel_waits(&state, |t| t.cancel_pid(pid));
    // Every pool: an IPCP's rings and blocks may be in any per-user pool.
    let pools = state.pools().all();
    let reclaimed = tokio::task::spawn_blocking(move || {
        pools.iter().map(|pool| pool.reclaim(pid)).sum::<usize>()
    })
    .await
    .unwrap_or(0);
    end_process(&state, pid, EndState::Dead);
    // Its blocks are back and its rings flagged: it no longer keeps its pool alive.
    let destroyed = state.pools().detach(pid);
    if let Some(name) = destroyed {
        info!(pool = %name, pid, "per-user pool destroyed with its last process");
    }
    match removed {
        Some(p) => info!(
            pid,
            program = %p.program,
            reclaimed,
            "process died: removed from the registry, pool blocks reclaimed"
        ),
        None => info!(pid, reclaimed, "process exited: pool blocks reclaimed"),
    }
}

// ------------------------------------------------------------------------------------------
// Direct local flows
// ------------------------------------------------------------------------------------------

/// The pid of the process on the other end of the socket: flow requests are always made for
/// oneself.
fn caller_pid(peer: Option<UCred>) -> Result<u32, Refusal> {
    peer.and_then(|p| p.pid())
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| {
            Refusal::new(
                ErrorCode::PermissionDenied,
                "cannot read the caller's credentials",
            )
        })
}

fn check_announced(reg: &crate::registry::Registry, pid: u32) -> Result<(), Refusal> {
    if reg.process(pid).is_none() {
        return Err(Refusal::new(
            ErrorCode::NotFound,
            format!("process {pid} has not announced itself"),
        ));
    }
    Ok(())
}

/// Withdraws waiting flow requests (chosen by `select` on the flow table); their requests get
/// an error answer as their channel closes.
fn cancel_waits(state: &State, select: impl FnOnce(&mut crate::flows::FlowTable) -> Vec<u64>) {
    let mut reg = state.registry();
    let tokens = select(&mut reg.flows);
    if tokens.is_empty() {
        return;
    }
    let mut waiters = state.waiters();
    for token in tokens {
        waiters.remove(&token);
    }
}

/// The rule of [`crate::pools::flow_pool`] as a predicate on (allocating pid, accepting pid),
/// for choosing among waiting requests on either side. Holds the pools lock (taken after the
/// registry's) until dropped.
fn fits<'a>(state: &'a State, reg: &crate::registry::Registry) -> impl Fn(u32, u32) -> bool + 'a {
    let ipcps: Vec<u32> = reg.ipcp_pids().collect();
    let pools = state.pools();
    move |alloc, accept| {
        let end = |pid| (pools.home_of(pid), ipcps.contains(&pid));
        crate::pools::flow_pool(end(alloc), end(accept)).is_ok()
    }
}

/// The pool owner of a flow between `alloc` and `accept` ([`crate::pools::flow_pool`]), or
/// the refusal that says why there is none.
fn flow_pool(
    state: &State,
    reg: &crate::registry::Registry,
    (alloc, accept): (u32, u32),
    name: &str,
) -> Result<u32, Refusal> {
    let pools = state.pools();
    let end = |pid| (pools.home_of(pid), reg.ipcp_by_pid(pid).is_some());
    crate::pools::flow_pool(end(alloc), end(accept)).map_err(|m| {
        let describe = |uid| {
            if uid == crate::pools::SHARED {
                format!("the shared pool {}", pools.name_of(uid))
            } else {
                format!("uid {uid}'s per-user pool {}", pools.name_of(uid))
            }
        };
        Refusal::new(
            ErrorCode::PoolMismatch,
            format!(
                "no direct flow to {name:?} between process {alloc} ({}) and process {accept} \
                 ({}): a direct flow needs both ends in one packet pool (both privileged, or the \
                 same uid). Register {name:?} in a local IPCP's layer (irm name register \
                 {name} layer LAYER) and the IPCP copies between the pools",
                describe(m.alloc),
                describe(m.accept)
            ),
        )
    })
}

/// Sets a flow up between an allocating and an accepting process: an id and two rings in
/// their pool (`max_sdu`: the limit an IPCP at one end reported, if known yet). Call with the
/// registry locked (the caller took both requests out of the waiting lists).
fn create_flow(
    state: &State,
    reg: &mut crate::registry::Registry,
    (alloc, accept): (u32, u32),
    name: &str,
    qos: QosSpec,
    max_sdu: Option<u32>,
) -> Result<Flow, Refusal> {
    let busy = |what: String| Refusal::new(ErrorCode::Busy, what);
    let uid = flow_pool(state, reg, (alloc, accept), name)?;
    let id = reg
        .flows
        .free_id()
        .ok_or_else(|| busy("every flow id is in use".into()))?;
    let pool = state.pool_of(uid).ok_or_else(|| {
        Refusal::new(
            ErrorCode::Internal,
            format!("the per-user pool of uid {uid} is gone"),
        )
    })?;
    let a2b = pool
        .ring_create(alloc, accept)
        .map_err(|e| busy(format!("cannot create a flow ring: {e}")))?;
    let b2a = match pool.ring_create(accept, alloc) {
        Ok(r) => r,
        Err(e) => {
            let _ = pool.ring_destroy(a2b);
            return Err(busy(format!("cannot create a flow ring: {e}")));
        }
    };
    let mut flow = Flow::new(id, name, qos, (alloc, accept), (a2b, b2a)).in_pool(pool.name(), uid);
    flow.max_sdu = max_sdu;
    reg.flows.insert(flow.clone());
    state.pools().add_flow(uid, id);
    info!(flow = id, name, alloc, accept, a2b, b2a, pool = %flow.pool, "flow allocated");
    Ok(flow)
}

/// Rings of a flow to flag, chosen under the registry lock and flagged after it is released
/// ([`flag_rings`]): setting a flag posts to the reader's event set, which may open and map
/// it and wait up to 50 ms for its lock, so it must not hold up every other request. Until
/// it is flagged, the flow's rings are not destroyed (a destroy meanwhile is deferred to
/// the flagger), so a flag never lands on a ring reused by another flow.
#[must_use = "the rings must be flagged with flag_rings"]
struct ToFlag {
    flow: Flow,
    flags: u32,
}

/// Per flow id: flags chosen but not set yet, and a destroy deferred until they are.
type PendingFlags = HashMap<u32, (u32, Option<Flow>)>;

/// Chooses to set `flags` on both rings of `flow`; call with the registry locked, then
/// [`flag_rings`] without it.
fn to_flag(state: &State, flow: &Flow, flags: u32) -> ToFlag {
    state.pending_flags().entry(flow.id).or_default().0 += 1;
    ToFlag {
        flow: flow.clone(),
        flags,
    }
}

/// Sets the chosen flags (the registry must not be locked), then runs a destroy deferred
/// meanwhile. Posting may wait on an event set's lock, so on a multi-threaded runtime the
/// worker is handed over for it.
fn flag_rings(state: &State, chosen: Vec<ToFlag>) {
    let set = || {
        for c in &chosen {
            if let Some(pool) = state.pool_of(c.flow.uid) {
                for ring in [c.flow.a2b, c.flow.b2a] {
                    let _ = pool.ring_set_flags(ring, c.flags);
                }
            }
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(set);
        }
        _ => set(),
    }
    for c in &chosen {
        let deferred = {
            let mut pending = state.pending_flags();
            match pending.get_mut(&c.flow.id) {
                Some((n, _)) if *n > 1 => {
                    *n -= 1;
                    None
                }
                Some(_) => pending.remove(&c.flow.id).and_then(|(_, d)| d),
                None => None,
            }
        };
        if let Some(flow) = deferred {
            destroy_rings_now(state, &flow);
        }
    }
}

/// Destroys a finished flow's rings (returning what was still queued on them); a per-user
/// pool no longer used goes with them. Deferred while flags chosen for the flow are not set.
fn destroy_rings(state: &State, flow: &Flow) {
    if let Some((_, deferred)) = state.pending_flags().get_mut(&flow.id) {
        debug!(
            flow = flow.id,
            "ring destroy deferred until its flags are set"
        );
        *deferred = Some(flow.clone());
        return;
    }
    destroy_rings_now(state, flow);
}

fn destroy_rings_now(state: &State, flow: &Flow) {
    match state.pool_of(flow.uid) {
        Some(pool) => {
            for ring in [flow.a2b, flow.b2a] {
                match pool.ring_destroy(ring) {
                    Ok(freed) => debug!(flow = flow.id, ring, freed, "flow ring destroyed"),
                    Err(e) => warn!(flow = flow.id, ring, "cannot destroy flow ring: {e}"),
                }
            }
        }
        None => warn!(flow = flow.id, pool = %flow.pool, "the flow's pool is gone"),
    }
    info!(flow = flow.id, "flow finished: rings destroyed");
    if let Some(name) = state.pools().remove_flow(flow.uid, flow.id) {
        info!(pool = %name, "per-user pool destroyed with its last flow");
    }
}

/// Takes a flow out of the table and frees its rings (the waiting end it was meant for
/// vanished before hearing of it).
fn undo_flow(state: &State, id: u32) {
    let flow = state.registry().flows.remove(id);
    if let Some(flow) = flow {
        destroy_rings(state, &flow);
    }
}

/// Answers a waiting request; false if nobody waits for the answer any more.
fn deliver(state: &State, token: u64, answer: Result<FlowInfo, Refusal>) -> bool {
    let waiter = state.waiters().remove(&token);
    waiter.is_some_and(|w| w.send(answer).is_ok())
}

/// Waits for a matcher to answer request `token` until `deadline`; at the deadline the request
/// is withdrawn, unless it was matched meanwhile (then its answer is on the way).
async fn await_answer(
    state: &State,
    token: u64,
    mut rx: oneshot::Receiver<Result<FlowInfo, Refusal>>,
    deadline: Option<tokio::time::Instant>,
    timed_out: impl FnOnce() -> Refusal,
) -> Result<Response, Refusal> {
    let answer = match deadline {
        None => rx.await,
        Some(deadline) => match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(answer) => answer,
            Err(_) => {
                let withdrawn = {
                    let mut reg = state.registry();
                    let withdrawn = reg.flows.cancel(token);
                    if withdrawn {
                        state.waiters().remove(&token);
                    }
                    withdrawn
                };
                if withdrawn {
                    return Err(timed_out());
                }
                rx.await
            }
        },
    };
    match answer {
        Ok(info) => info.map(|i| ResponseKind::Flow(i).into()),
        Err(_) => Err(Refusal::new(
            ErrorCode::Internal,
            "the request was withdrawn: its process exited or its connection closed",
        )),
    }
}

/// `FlowAlloc`: a flow to the process accepting for `dst`, now or once one accepts.
///
/// A name this IRMd does not know fails at once (`NotFound`: nothing is bound to it, and
/// flows through IPCPs do not exist yet); a known name without an accepting process waits up
/// to the timeout (default [`DEFAULT_ALLOC_TIMEOUT`]) and then fails with `TimedOut`.
async fn flow_alloc(
    state: &Arc<State>,
    peer: Option<UCred>,
    conn: u64,
    r: FlowAlloc,
) -> Result<Response, Refusal> {
    let pid = caller_pid(peer)?;
    check_name("destination name", &r.dst)?;
    let qos = r.qos.unwrap_or_default();
    let timeout = r
        .timeout_ms
        .map_or(DEFAULT_ALLOC_TIMEOUT, |ms| Duration::from_millis(ms.into()));
    let (candidates, unknown) = {
        let reg = state.registry();
        check_announced(&reg, pid)?;
        let candidates = reg.ipcps_of_name(&r.dst);
        if candidates.is_empty() && reg.name(&r.dst).is_none() {
            // A name this host does not know: every operational IPCP may reach it.
            (reg.operational_ipcps(), true)
        } else {
            (candidates, false)
        }
    };
    if !candidates.is_empty() {
        let result = ipcps::flow_alloc(state, pid, &r.dst, qos.clone(), timeout, candidates).await;
        match result {
            // No IPCP reached it: the name may have become local meanwhile; else the
            // direct allocation says `NotFound` as for any unknown name.
            Err(refusal) if unknown && refusal.code == ErrorCode::NotFound => {
                debug!(dst = %r.dst, "no IPCP reaches it: {}", refusal.message);
            }
            other => return other,
        }
    }
    alloc_direct(state, pid, conn, &r.dst, qos, None, timeout).await
}

/// A direct local flow from `pid` to the process accepting `dst`, now or once one accepts
/// (up to `timeout`). Applications get these for names registered in no IPCP; an IPCP gets one
/// for a flow request that arrived through its layer (with the largest SDU it carries).
async fn alloc_direct(
    state: &Arc<State>,
    pid: u32,
    conn: u64,
    dst: &str,
    qos: QosSpec,
    max_sdu: Option<u32>,
    timeout: Duration,
) -> Result<Response, Refusal> {
    let r = FlowAlloc {
        dst: dst.to_owned(),
        qos: None,
        timeout_ms: None,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (matched, token, rx) = {
            let mut reg = state.registry();
            check_announced(&reg, pid)?;
            if reg.name(&r.dst).is_none() {
                return Err(Refusal::new(
                    ErrorCode::NotFound,
                    format!(
                        "no name {:?} on this host: no process or program is bound to it and \
                         it is registered in no IPCP",
                        r.dst
                    ),
                ));
            }
            let acceptor = {
                let fit = fits(state, &reg);
                let acceptor = reg.take_acceptor(&r.dst, |p| fit(pid, p));
                drop(fit);
                acceptor
            };
            if acceptor.is_none()
                && let Some(other) = reg.acceptor_for(&r.dst)
            {
                // Someone accepts, but in another pool: say so now rather than time out.
                flow_pool(state, &reg, (pid, other), &r.dst)?;
            }
            match acceptor {
                Some(acceptor) => {
                    let flow = create_flow(
                        state,
                        &mut reg,
                        (pid, acceptor.pid),
                        &r.dst,
                        qos.clone(),
                        max_sdu,
                    );
                    (Some((acceptor, flow)), 0, None)
                }
                None => {
                    let token = reg
                        .flows
                        .wait_alloc(pid, &r.dst, qos.clone(), max_sdu, conn);
                    let (tx, rx) = oneshot::channel();
                    state.waiters().insert(token, tx);
                    (None, token, Some(rx))
                }
            }
        };
        if let Some((acceptor, flow)) = matched {
            let flow = match flow {
                Ok(flow) => flow,
                Err(refusal) => {
                    // The acceptor keeps waiting for a flow that can be set up.
                    state.registry().flows.restore_accept(acceptor);
                    return Err(refusal);
                }
            };
            if deliver(state, acceptor.token, Ok(flow.info_for(Side::Accept))) {
                return Ok(ResponseKind::Flow(flow.info_for(Side::Alloc)).into());
            }
            debug!(flow = flow.id, "the acceptor vanished; trying another");
            undo_flow(state, flow.id);
            continue;
        }
        autostart::kick(state, &r.dst, token);
        let Some(rx) = rx else {
            return Err(Refusal::new(ErrorCode::Internal, "no answer channel"));
        };
        let dst = r.dst.clone();
        return await_answer(state, token, rx, Some(deadline), || {
            Refusal::new(
                ErrorCode::TimedOut,
                format!(
                    "no process accepted a flow for {dst:?} within {} ms",
                    timeout.as_millis()
                ),
            )
        })
        .await;
    }
}

/// `FlowAccept`: the next flow to a name the caller is bound to (or to `name`), now if an
/// allocation waits, else once one comes (up to the timeout; none: forever).
async fn flow_accept(
    state: &Arc<State>,
    peer: Option<UCred>,
    conn: u64,
    r: FlowAccept,
) -> Result<Response, Refusal> {
    let pid = caller_pid(peer)?;
    if let Some(name) = &r.name {
        check_name("name", name)?;
    }
    let deadline = r
        .timeout_ms
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms.into()));
    loop {
        let (matched, token, rx) = {
            let mut reg = state.registry();
            check_announced(&reg, pid)?;
            match &r.name {
                Some(name) if !reg.is_bound(pid, name) => {
                    return Err(Refusal::new(
                        ErrorCode::NotFound,
                        format!("process {pid} is not bound to {name:?}: bind it first"),
                    ));
                }
                None if !reg.is_bound_anywhere(pid) => {
                    return Err(Refusal::new(
                        ErrorCode::InvalidArgument,
                        format!("process {pid} is bound to no name: bind it to one first"),
                    ));
                }
                _ => {}
            }
            let (alloc, misfits) = {
                let fit = fits(state, &reg);
                let alloc = reg.take_alloc_for(pid, r.name.as_deref(), |a| fit(a, pid));
                // Allocations waiting for this process's names from another pool: refused
                // now (as when they arrive while this process waits), not left to time out.
                let misfits: Vec<_> = if alloc.is_none() {
                    std::iter::from_fn(|| {
                        reg.take_alloc_for(pid, r.name.as_deref(), |a| !fit(a, pid))
                    })
                    .collect()
                } else {
                    Vec::new()
                };
                drop(fit);
                (alloc, misfits)
            };
            for misfit in misfits {
                // Taken out of the waiting list: it must hear an answer, whatever happens.
                let refusal = flow_pool(state, &reg, (misfit.pid, pid), &misfit.dst)
                    .err()
                    .unwrap_or_else(|| {
                        Refusal::new(
                            ErrorCode::Busy,
                            "the packet pools of the flow's ends changed while it was being                              matched; allocate again",
                        )
                    });
                deliver(state, misfit.token, Err(refusal));
            }
            match alloc {
                Some(alloc) => {
                    let flow = create_flow(
                        state,
                        &mut reg,
                        (alloc.pid, pid),
                        &alloc.dst,
                        alloc.qos.clone(),
                        alloc.max_sdu,
                    );
                    (Some((alloc, flow)), 0, None)
                }
                None => {
                    let token = reg.flows.wait_accept(pid, r.name.as_deref(), conn);
                    let (tx, rx) = oneshot::channel();
                    state.waiters().insert(token, tx);
                    (None, token, Some(rx))
                }
            }
        };
        if let Some((alloc, flow)) = matched {
            let flow = match flow {
                Ok(flow) => flow,
                Err(refusal) => {
                    // The allocation hears why; this accept waits on.
                    deliver(state, alloc.token, Err(refusal));
                    continue;
                }
            };
            if deliver(state, alloc.token, Ok(flow.info_for(Side::Alloc))) {
                return Ok(ResponseKind::Flow(flow.info_for(Side::Accept)).into());
            }
            debug!(
                flow = flow.id,
                "the allocating process vanished; waiting on"
            );
            undo_flow(state, flow.id);
            continue;
        }
        let Some(rx) = rx else {
            return Err(Refusal::new(ErrorCode::Internal, "no answer channel"));
        };
        return await_answer(state, token, rx, deadline, || {
            Refusal::new(ErrorCode::TimedOut, "no flow arrived before the timeout")
        })
        .await;
    }
}

/// `FlowDealloc` from one end: both rings go down (the other end drains, then reads
/// FLOW_DOWN); the rings are destroyed once the other end is done too. An IPCP at the other
/// end is told (`IpcpFlowDealloc`), so it frees its state for the flow and deallocates its end.
fn flow_dealloc(state: &State, peer: Option<UCred>, id: u32) -> Result<(), Refusal> {
    let pid = caller_pid(peer)?;
    let (finished, peers) = {
        let mut reg = state.registry();
        let Some(flow) = reg.flows.get(id) else {
            return Err(Refusal::new(ErrorCode::NotFound, format!("no flow {id}")));
        };
        let flow = flow.clone();
        let Some(side) = reg.flows.active_side(id, pid) else {
            let code = if flow.alloc.pid == pid || flow.accept.pid == pid {
                ErrorCode::NotFound
            } else {
                ErrorCode::PermissionDenied
            };
            return Err(Refusal::new(
                code,
                format!("process {pid} has no active end of flow {id}"),
            ));
        };
        let chosen = to_flag(state, &flow, o7s_pool::RingFlags::FLOW_DOWN);
        let finished = reg.flows.end(id, side, EndState::Deallocated);
        let peers: Vec<u32> = reg.flows.get(id).map_or_else(Vec::new, |f| {
            f.active_peers_of(pid).map(|(_, end)| end.pid).collect()
        });
        drop(reg);
        flag_rings(state, vec![chosen]);
        (finished, peers)
    };
    info!(flow = id, pid, "flow deallocated by one end");
    ipcps::tell_dealloc(state, peers.into_iter().map(|p| (id, p)));
    if let Some(flow) = finished {
        destroy_rings(state, &flow);
    }
    Ok(())
}

/// A process left (`Deallocated`: it said goodbye; `Dead`: its pidfd fired and its pool
/// share was reclaimed): its flow ends end, and flows with no end left lose their rings.
fn end_process(state: &State, pid: u32, how: EndState) {
    let (touched, finished, chosen) = {
        let mut reg = state.registry();
        let (touched, finished) = reg.flows.end_process(pid, how);
        let chosen: Vec<ToFlag> = if how == EndState::Deallocated {
            touched
                .iter()
                .map(|f| to_flag(state, f, o7s_pool::RingFlags::FLOW_DOWN))
                .collect()
        } else {
            Vec::new()
        };
        (touched, finished, chosen)
    };
    flag_rings(state, chosen);
    for flow in &touched {
        info!(flow = flow.id, pid, state = ?how, "flow end gone with its process");
    }
    // IPCPs at the other ends free their state for these flows.
    ipcps::tell_dealloc(
        state,
        touched
            .iter()
            .flat_map(|f| f.active_peers_of(pid).map(|(_, end)| (f.id, end.pid))),
    );
    for flow in &finished {
        destroy_rings(state, flow);
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shm_names_are_classified() {
        let p = "o7s-00ff";
        assert_eq!(shm_kind(p, "o7s-00ff.pool"), ShmKind::SharedPool);
        assert_eq!(shm_kind(p, "o7s-00ff.pup.1000"), ShmKind::UserPool);
        assert_eq!(
            shm_kind(p, "o7s-00ff.pool.ev.42.0000001f"),
            ShmKind::EventSet { pid: 42 }
        );
        assert_eq!(
            shm_kind(p, "o7s-00ff.pup.1000.ev.7.1"),
            ShmKind::EventSet { pid: 7 }
        );
        for other in [
            "o7s-00ff.set.12345",
            "o7s-00ff.pup.",
            "o7s-00ff.pup.x",
            "o7s-00ff.pool.ev.42",
            "o7s-00ff.pool.ev.42.",
            "o7s-00ff.pool.ev.+4.1",
            "o7s-00ff.pool.ev.4.xyz",
            "o7s-00ff.poolx",
            "o7s-00ffpool",
            "other.pool",
        ] {
            assert_eq!(shm_kind(p, other), ShmKind::Other, "{other}");
        }
    }

    proptest! {
        #[test]
        fn shm_kind_round_trips(uid in any::<u32>(), pid in any::<u32>(), token in any::<u32>(),
                                user in any::<bool>()) {
            let pool = if user {
                pool_name("o7s", Access::User { uid })
            } else {
                pool_name("o7s", Access::Shared)
            };
            let whole = if user { ShmKind::UserPool } else { ShmKind::SharedPool };
            prop_assert_eq!(shm_kind("o7s", &pool), whole);
            let set = format!("{pool}.ev.{pid}.{token:08x}");
            prop_assert_eq!(shm_kind("o7s", &set), ShmKind::EventSet { pid });
        }

        #[test]
        fn shm_kind_takes_any_name(name in "\\PC{0,40}") {
            let _ = shm_kind("o7s", &name);
            let _ = shm_kind("o7s", &format!("o7s.{name}"));
        }
    }
}
