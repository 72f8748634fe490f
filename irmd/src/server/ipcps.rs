//! IPCP processes: spawning and supervising them, their control connection ([`Link`]), and
//! the requests the IRMd forwards to them (bootstrap, name registration, flow allocation).
//!
//! An IPCP is a child of the IRMd. It connects to the IRMd socket and says [`IpcpHello`];
//! that connection stays open for the IPCP's life and carries requests both ways (see
//! `o7s_proto::irm`, "IPCP control"). The IRMd watches the IPCP like any announced process (a
//! pidfd): when it dies, its flows' rings are flagged PEER_GONE by the pool reclaim (the
//! applications read what was queued, then `PeerGone`), its flow ends are marked dead, its
//! names' registrations go, and it is reaped and removed from the table, so a new IPCP of the
//! same name can be created.
//!
//! **Which path a flow takes.** A `FlowAlloc` to a name registered in an operational IPCP of
//! this host goes through an IPCP: the IPCPs the name is registered in are queried in the
//! reference's order (type, then pid) and the first that answers gets the allocation. A name
//! registered in no IPCP gets a direct local flow, as before.
//!
//! **OAP.** A flow through an IPCP carries the IRMds' OAP handshake ([`crate::oap`]) as its
//! piggyback: this IRMd's request in `IpcpFlowAlloc`, checked by the accepting IRMd when the
//! request arrives (`FlowReqArrived`), whose response comes back in the IPCP's answer and is
//! checked here. A failed check refuses the flow (`Auth`, or `NotSupported` for cryptography).
//!
//! **Max SDU.** The IPCP says how large an SDU the flow carries (its answer to
//! `IpcpFlowAlloc`, and `FlowReqArrived`); the flow's info tells the applications, whose
//! library refuses larger writes.
//!
//! **Deallocation.** When the application end of a flow through an IPCP is done (deallocated,
//! said goodbye or died), the IPCP is told (`IpcpFlowDealloc`) so it frees the flow's state
//! and deallocates its own end; the rings go once both ends are done.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use o7s_proto::irm::{
    BootstrapIpcp, CreateIpcp, EndState, Envelope, ErrorCode, FlowReqArrived, HashAlgo,
    IpcpBootstrap, IpcpFlowAlloc, IpcpFlowDealloc, IpcpFlowReply, IpcpHello, IpcpInfo, IpcpQuery,
    IpcpRegister, IpcpSelector, IpcpState, IpcpStats, IpcpType, IpcpUnregister, ProcessAnnounce,
    QosSpec, RegisterTarget, Request, Response, ResponseKind,
};
use sha3::Digest as _;
use tokio::net::unix::UCred;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{
    DEFAULT_ALLOC_TIMEOUT, State, alloc_direct, announce, caller_pid, check_announced, create_flow,
    undo_flow,
};
use crate::flows::Side;
use crate::oap::{ClientRequest, id_hex};
use crate::registry::{Ipcp, Refusal, check_name};

/// How long a spawned IPCP has to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an IPCP has to answer a control request (bootstrap, register, query).
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an IPCP has to bootstrap: an Ethernet IPCP loads and attaches its XDP program (the
/// verifier is slow on an emulated CPU) and sets up one AF_XDP socket per queue.
pub const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(25);
/// How long a destroyed IPCP has to exit after SIGTERM before it gets SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(3);
/// The environment variable that tells a spawned IPCP the name of the IRMd's shared pool
/// (an Ethernet IPCP uses it as its AF_XDP UMEM).
pub const POOL_ENV: &str = "O7S_POOL";
/// Extra time an IPCP gets to answer a flow allocation beyond the allocation's timeout.
const ALLOC_MARGIN: Duration = Duration::from_secs(2);

/// The IRMd's end of an IPCP's control connection: sends it requests and routes its
/// responses back to the callers.
#[derive(Debug)]
pub struct Link {
    tx: Mutex<Option<mpsc::Sender<Envelope>>>,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Link {
    /// A link writing through a connection's writer.
    pub fn new(tx: mpsc::Sender<Envelope>) -> Self {
        Self {
            tx: Mutex::new(Some(tx)),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Sends a request and waits (up to `timeout`) for the response.
    pub async fn call(
        &self,
        request: impl Into<Request>,
        timeout: Duration,
    ) -> Result<Response, Refusal> {
        let request = request.into();
        let what = request.name();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let sender = lock(&self.tx).clone();
        let gone = || {
            Refusal::new(
                ErrorCode::Internal,
                format!("the IPCP's connection closed before it answered {what}"),
            )
        };
        let Some(sender) = sender else {
            lock(&self.pending).remove(&id);
            return Err(gone());
        };
        if sender.send(Envelope::request(id, request)).await.is_err() {
            lock(&self.pending).remove(&id);
            return Err(gone());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(gone()),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(Refusal::new(
                    ErrorCode::TimedOut,
                    format!(
                        "the IPCP did not answer {what} within {} ms",
                        timeout.as_millis()
                    ),
                ))
            }
        }
    }

    /// A response from the IPCP; false if nobody waits for that id.
    pub fn deliver(&self, id: u64, response: Response) -> bool {
        let waiter = lock(&self.pending).remove(&id);
        waiter.is_some_and(|w| w.send(response).is_ok())
    }

    /// The connection closed: callers waiting for answers hear so, and the writer may end.
    pub fn close(&self) {
        lock(&self.tx).take();
        lock(&self.pending).clear();
    }
}

/// What the IRMd holds of an IPCP process it spawned.
#[derive(Debug, Default)]
pub struct Proc {
    /// The child, to reap.
    child: Option<std::process::Child>,
    /// Its control connection, once it said hello.
    link: Option<Arc<Link>>,
    /// Wakes the `CreateIpcp` waiting for the hello.
    hello: Option<oneshot::Sender<()>>,
}

/// The executable of an IPCP type.
fn program_of(t: IpcpType) -> &'static str {
    match t {
        IpcpType::Local => "ipcpd-local",
        IpcpType::Unicast => "ipcpd-unicast",
        IpcpType::Broadcast => "ipcpd-broadcast",
        IpcpType::EthLlc => "ipcpd-eth-llc",
        IpcpType::EthDix => "ipcpd-eth-dix",
        IpcpType::Udp4 => "ipcpd-udp4",
        IpcpType::Udp6 => "ipcpd-udp6",
    }
}

/// Finds an IPCP executable: next to the running irmd, else in `PATH`.
pub fn find_program(program: &str) -> Result<PathBuf, Refusal> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(program)));
    let mut tried = Vec::new();
    if let Some(p) = beside {
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p.display().to_string());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(program);
            if p.is_file() {
                return Ok(p);
            }
        }
        tried.push("PATH".to_owned());
    }
    Err(Refusal::new(
        ErrorCode::NotFound,
        format!(
            "cannot find the {program} executable (looked in {}): install it next to irmd or \
             in PATH",
            tried.join(" and ")
        ),
    ))
}

/// A name's hash in a layer's algorithm.
pub fn hash_name(algo: HashAlgo, name: &str) -> Result<Vec<u8>, Refusal> {
    let bytes = name.as_bytes();
    Ok(match algo {
        HashAlgo::Sha3_224 => sha3::Sha3_224::digest(bytes).to_vec(),
        HashAlgo::Sha3_256 => sha3::Sha3_256::digest(bytes).to_vec(),
        HashAlgo::Sha3_384 => sha3::Sha3_384::digest(bytes).to_vec(),
        HashAlgo::Sha3_512 => sha3::Sha3_512::digest(bytes).to_vec(),
        HashAlgo::Md5 => {
            return Err(Refusal::new(
                ErrorCode::NotSupported,
                "MD5 directory hashes are not supported yet",
            ));
        }
    })
}

/// An error response from an IPCP as a refusal, prefixed with what failed.
fn refusal_from(what: &str, response: &Response) -> Refusal {
    match response.as_error() {
        Some((code, message)) => Refusal::new(code, format!("{what}: {message}")),
        None => Refusal::new(
            ErrorCode::Internal,
            format!("{what}: unexpected answer {:?}", response.kind),
        ),
    }
}

fn link_of(state: &State, pid: u32) -> Result<Arc<Link>, Refusal> {
    state
        .procs()
        .get(&pid)
        .and_then(|p| p.link.clone())
        .ok_or_else(|| {
            Refusal::new(
                ErrorCode::Internal,
                format!("IPCP {pid} has no control connection"),
            )
        })
}

/// `CreateIpcp`: spawns the IPCP's executable and waits for its hello.
pub async fn create(state: &Arc<State>, r: CreateIpcp) -> Result<Response, Refusal> {
    check_name("IPCP name", &r.name)?;
    let ipcp_type = IpcpType::try_from(r.ipcp_type).map_err(|_| {
        Refusal::new(
            ErrorCode::InvalidArgument,
            format!("unknown IPCP type {}", r.ipcp_type),
        )
    })?;
    if !matches!(ipcp_type, IpcpType::Local | IpcpType::EthDix) {
        return Err(Refusal::new(
            ErrorCode::NotSupported,
            format!("creating {ipcp_type:?} IPCPs is not implemented yet (only local and eth-dix)"),
        ));
    }
    let program = find_program(program_of(ipcp_type))?;
    let (tx, mut rx) = oneshot::channel();
    // The registry stays locked from the name check until the IPCP and its `Proc` are
    // recorded: a child quick enough to say hello before that waits for the lock instead of
    // being refused as unknown (or having its link overwritten).
    let pid = {
        let mut reg = state.registry();
        if reg.ipcp(&r.name).is_some() {
            return Err(Refusal::new(
                ErrorCode::AlreadyExists,
                format!("an IPCP named {:?} exists already", r.name),
            ));
        }
        let mut child = std::process::Command::new(&program)
            .arg("--rundir")
            .arg(&state.rundir)
            .arg("--name")
            .arg(&r.name)
            .env(crate::RUNDIR_ENV, &state.rundir)
            .env(POOL_ENV, state.pool.name())
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                Refusal::new(
                    ErrorCode::Internal,
                    format!("cannot start {}: {e}", program.display()),
                )
            })?;
        let pid = child.id();
        if let Err(refusal) = reg.add_ipcp(&r.name, Ipcp::new(pid, ipcp_type)) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(refusal);
        }
        state.procs().insert(
            pid,
            Proc {
                child: Some(child),
                link: None,
                hello: Some(tx),
            },
        );
        pid
    };
    info!(name = %r.name, pid, program = %program.display(), "IPCP spawned");
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let failure = loop {
        match tokio::time::timeout(Duration::from_millis(20), &mut rx).await {
            Ok(Ok(())) => break None,
            Ok(Err(_)) => break Some(format!("{} (pid {pid}) went away", r.name)),
            Err(_) => {}
        }
        let exited = state
            .procs()
            .get_mut(&pid)
            .and_then(|p| p.child.as_mut())
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            break Some(format!(
                "{} (pid {pid}) exited ({status}) before saying hello",
                program.display()
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            break Some(format!(
                "{} (pid {pid}) did not say hello within {} ms",
                program.display(),
                HELLO_TIMEOUT.as_millis()
            ));
        }
    };
    if let Some(message) = failure {
        warn!(name = %r.name, pid, "IPCP failed to start: {message}");
        kill(pid, rustix::process::Signal::KILL);
        gone(state, pid).await;
        return Err(Refusal::new(ErrorCode::Internal, message));
    }
    let reg = state.registry();
    let info = reg
        .list_ipcps()
        .ipcps
        .into_iter()
        .find(|i| i.pid == pid)
        .unwrap_or(IpcpInfo {
            pid,
            ipcp_type: ipcp_type.into(),
            name: r.name.clone(),
            layer: None,
            hash: HashAlgo::Sha3_256.into(),
            state: IpcpState::Init.into(),
            backend: None,
        });
    Ok(ResponseKind::Ipcp(info).into())
}

/// `IpcpHello` on a connection: the IPCP spawned as `r.name` is up; the connection becomes
/// its control link and the process is announced (watched through a pidfd).
pub fn hello(
    state: &Arc<State>,
    peer: Option<UCred>,
    link: &Arc<Link>,
    r: &IpcpHello,
) -> Result<Response, Refusal> {
    let pid = caller_pid(peer)?;
    if pid != r.pid {
        return Err(Refusal::new(
            ErrorCode::PermissionDenied,
            format!("pid {pid} may not say hello for IPCP pid {}", r.pid),
        ));
    }
    let known = {
        let reg = state.registry();
        reg.ipcp_by_pid(pid)
            .map(|(name, i)| (name.to_owned(), i.state, i.ipcp_type))
    };
    let Some((name, ipcp_state, ipcp_type)) = known else {
        return Err(Refusal::new(
            ErrorCode::PermissionDenied,
            format!("pid {pid} is not an IPCP this IRMd spawned"),
        ));
    };
    if name != r.name || ipcp_state != IpcpState::Booting || i32::from(ipcp_type) != r.ipcp_type {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            format!(
                "IPCP pid {pid} is {name:?} ({ipcp_type:?}, {ipcp_state:?}), not a booting {:?}",
                r.name
            ),
        ));
    }
    announce(
        state,
        peer,
        &ProcessAnnounce {
            pid,
            program: program_of(ipcp_type).to_owned(),
        },
    )?;
    if let Some(i) = state.registry().ipcp_mut(&name) {
        i.state = IpcpState::Init;
    }
    let waiter = {
        let mut procs = state.procs();
        let p = procs.entry(pid).or_default();
        p.link = Some(link.clone());
        p.hello.take()
    };
    if let Some(w) = waiter {
        let _ = w.send(());
    }
    info!(name = %name, pid, "IPCP said hello");
    Ok(Response::ok())
}

fn kill(pid: u32, signal: rustix::process::Signal) {
    if let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        && let Err(e) = rustix::process::kill_process(p, signal)
    {
        debug!(pid, "kill({signal:?}) failed: {e}");
    }
}

/// The IPCP process `pid` is gone (or never came up): forget it, close its link, reap it.
/// Idempotent; the process's own death cleanup (pool reclaim, flow ends) is `watch`'s.
pub async fn gone(state: &Arc<State>, pid: u32) {
    let removed = state.registry().remove_ipcp_pid(pid);
    let proc_ = state.procs().remove(&pid);
    if let Some(p) = proc_ {
        if let Some(link) = &p.link {
            link.close();
        }
        if let Some(mut child) = p.child {
            let status = tokio::task::spawn_blocking(move || child.wait())
                .await
                .ok()
                .and_then(Result::ok);
            debug!(pid, ?status, "IPCP reaped");
        }
    }
    if let Some((name, _)) = removed {
        info!(name = %name, pid, "IPCP gone: removed with its registrations");
    }
}

fn select(state: &State, sel: Option<&IpcpSelector>) -> Result<(String, u32), Refusal> {
    let reg = state.registry();
    let found = match sel {
        None => return Err(Refusal::new(ErrorCode::InvalidArgument, "no IPCP given")),
        Some(IpcpSelector::Name(n)) => reg.ipcp(n).map(|i| (n.clone(), i.pid)),
        Some(IpcpSelector::Pid(p)) => reg.ipcp_by_pid(*p).map(|(n, i)| (n.to_owned(), i.pid)),
    };
    found.ok_or_else(|| Refusal::new(ErrorCode::NotFound, "no such IPCP"))
}

/// `DestroyIpcp`: SIGTERM, wait (SIGKILL after [`TERM_GRACE`]), clean up.
pub async fn destroy(state: &Arc<State>, sel: Option<&IpcpSelector>) -> Result<Response, Refusal> {
    let (name, pid) = select(state, sel)?;
    kill(pid, rustix::process::Signal::TERM);
    let deadline = tokio::time::Instant::now() + TERM_GRACE;
    let mut killed = false;
    loop {
        let exited = state
            .procs()
            .get_mut(&pid)
            .and_then(|p| p.child.as_mut())
            .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
        if exited {
            break;
        }
        if !killed && tokio::time::Instant::now() >= deadline {
            warn!(name = %name, pid, "IPCP ignored SIGTERM: SIGKILL");
            kill(pid, rustix::process::Signal::KILL);
            killed = true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gone(state, pid).await;
    info!(name = %name, pid, "IPCP destroyed");
    Ok(Response::ok())
}

/// `BootstrapIpcp`: the IPCP founds a layer.
pub async fn bootstrap(state: &Arc<State>, r: BootstrapIpcp) -> Result<Response, Refusal> {
    let Some(config) = r.config else {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            "bootstrap without a layer configuration",
        ));
    };
    check_name("layer name", &config.layer)?;
    let algo = HashAlgo::try_from(config.hash).map_err(|_| {
        Refusal::new(
            ErrorCode::InvalidArgument,
            format!("unknown hash algorithm {}", config.hash),
        )
    })?;
    hash_name(algo, "")?;
    let (pid, ipcp_state) = {
        let reg = state.registry();
        let i = reg.ipcp(&r.name).ok_or_else(|| {
            Refusal::new(ErrorCode::NotFound, format!("no IPCP named {:?}", r.name))
        })?;
        (i.pid, i.state)
    };
    if ipcp_state != IpcpState::Init {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            format!(
                "IPCP {:?} is {ipcp_state:?}: only a started, not yet bootstrapped IPCP can be \
                 bootstrapped",
                r.name
            ),
        ));
    }
    let link = link_of(state, pid)?;
    let layer = config.layer.clone();
    let response = link
        .call(
            IpcpBootstrap {
                config: Some(config),
            },
            BOOTSTRAP_TIMEOUT,
        )
        .await?;
    let backend = match &response.kind {
        Some(ResponseKind::Ok(_)) => None,
        Some(ResponseKind::Ipcp(info)) => info.backend.clone(),
        _ => {
            return Err(refusal_from(
                &format!("IPCP {:?} refused the bootstrap", r.name),
                &response,
            ));
        }
    };
    if let Some(i) = state.registry().ipcp_mut(&r.name) {
        i.layer = Some(layer.clone());
        i.hash = algo;
        i.state = IpcpState::Operational;
        i.backend.clone_from(&backend);
    }
    info!(name = %r.name, pid, layer = %layer, hash = ?algo, ?backend, "IPCP bootstrapped");
    Ok(Response::ok())
}

/// `RegisterName` / `UnregisterName`: hashes the name with each target IPCP's layer algorithm
/// and tells the IPCP.
pub async fn register(
    state: &Arc<State>,
    name: &str,
    target: Option<&RegisterTarget>,
    register: bool,
) -> Result<Response, Refusal> {
    let what = if register { "register" } else { "unregister" };
    let targets = state.registry().registration_targets(what, name, target)?;
    for (ipcp, pid, algo) in targets {
        let hash = hash_name(algo, name)?;
        if !register && state.registry().name_of_hash(pid, &hash).as_deref() != Some(name) {
            return Err(Refusal::new(
                ErrorCode::NotFound,
                format!("{name:?} is not registered in IPCP {ipcp:?}"),
            ));
        }
        let link = link_of(state, pid)?;
        let response = if register {
            link.call(IpcpRegister { hash: hash.clone() }, CONTROL_TIMEOUT)
                .await?
        } else {
            link.call(IpcpUnregister { hash: hash.clone() }, CONTROL_TIMEOUT)
                .await?
        };
        if !response.is_ok() {
            return Err(refusal_from(
                &format!("IPCP {ipcp:?} cannot {what} {name:?}"),
                &response,
            ));
        }
        let mut reg = state.registry();
        if register {
            reg.add_registration(name, &ipcp, hash);
        } else {
            reg.remove_registration(name, &ipcp);
        }
        info!(name, ipcp = %ipcp, "name {what}ed");
    }
    Ok(Response::ok())
}

/// `FlowAlloc` through an IPCP: query the candidates, set up the flow between the caller and
/// the first that can reach the name, and let that IPCP allocate through its layer.
pub async fn flow_alloc(
    state: &Arc<State>,
    pid: u32,
    dst: &str,
    qos: QosSpec,
    timeout: Duration,
    candidates: Vec<(String, u32, HashAlgo)>,
) -> Result<Response, Refusal> {
    let mut chosen = None;
    for (ipcp, ipcp_pid, algo) in &candidates {
        let hash = hash_name(*algo, dst)?;
        let Ok(link) = link_of(state, *ipcp_pid) else {
            continue;
        };
        match link
            .call(IpcpQuery { hash: hash.clone() }, CONTROL_TIMEOUT)
            .await
        {
            Ok(r) if r.is_ok() => {
                chosen = Some((ipcp.clone(), *ipcp_pid, hash, link));
                break;
            }
            Ok(r) => debug!(ipcp = %ipcp, "query for {dst:?} refused: {:?}", r.as_error()),
            Err(e) => debug!(ipcp = %ipcp, "query for {dst:?} failed: {e}"),
        }
    }
    let Some((ipcp, ipcp_pid, hash, link)) = chosen else {
        let names: Vec<&str> = candidates.iter().map(|c| c.0.as_str()).collect();
        return Err(Refusal::new(
            ErrorCode::NotFound,
            format!("no IPCP can reach {dst:?} (asked {})", names.join(", ")),
        ));
    };
    let flow = {
        let mut reg = state.registry();
        check_announced(&reg, pid)?;
        create_flow(state, &mut reg, (pid, ipcp_pid), dst, qos.clone(), None)?
    };
    let theirs = flow.info_for(Side::Accept);
    let oap = ClientRequest::new(rand::random(), now_ns());
    let oap_id = id_hex(oap.id());
    info!(flow = flow.id, dst, ipcp = %ipcp, oap = %oap_id, "allocating through the IPCP");
    let request = IpcpFlowAlloc {
        flow_id: flow.id,
        hash,
        qos: Some(qos),
        n_pid: pid,
        pool: flow.pool.clone(),
        uid: flow.uid,
        tx_ring: theirs.tx_ring,
        rx_ring: theirs.rx_ring,
        timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
        piggyback: oap.bytes().to_vec(),
    };
    let answer = link.call(request, timeout + ALLOC_MARGIN).await;
    let reply = match answer.map(|r| r.kind) {
        Ok(Some(ResponseKind::IpcpFlow(reply))) => reply,
        // An IPCP that carries no piggyback: the check below refuses the flow.
        Ok(Some(ResponseKind::Ok(_))) => IpcpFlowReply::default(),
        Ok(kind) => {
            undo_flow(state, flow.id);
            return Err(refusal_from(
                &format!("IPCP {ipcp:?} could not allocate a flow to {dst:?}"),
                &Response { kind },
            ));
        }
        Err(e) => {
            undo_flow(state, flow.id);
            return Err(e);
        }
    };
    if let Err(e) = oap.complete(&reply.piggyback) {
        warn!(flow = flow.id, dst, ipcp = %ipcp, oap = %oap_id, "flow refused: {e}");
        abandon_flow(state, flow.id, pid, ipcp_pid);
        return Err(Refusal::new(
            e.code(),
            format!("the flow to {dst:?} through IPCP {ipcp:?} is refused: {e}"),
        ));
    }
    let info = state
        .registry()
        .flows
        .set_max_sdu(flow.id, reply.max_sdu)
        .map(|f| f.info_for(Side::Alloc));
    match info {
        Some(info) => {
            info!(flow = flow.id, dst, ipcp = %ipcp, oap = %oap_id, max_sdu = ?reply.max_sdu, "flow allocated through the IPCP");
            Ok(ResponseKind::Flow(info).into())
        }
        None => Err(Refusal::new(
            ErrorCode::Internal,
            format!("flow {} vanished while it was being allocated", flow.id),
        )),
    }
}

/// `IpcpStats`: asks the IPCP for its counters.
pub async fn stats(state: &Arc<State>, r: IpcpStats) -> Result<Response, Refusal> {
    let pid = state
        .registry()
        .ipcp(&r.name)
        .map(|i| i.pid)
        .ok_or_else(|| Refusal::new(ErrorCode::NotFound, format!("no IPCP named {:?}", r.name)))?;
    let link = link_of(state, pid)?;
    let response = link.call(r.clone(), CONTROL_TIMEOUT).await?;
    match response.kind {
        Some(ResponseKind::Stats(_)) => Ok(response),
        _ => Err(refusal_from(
            &format!("IPCP {:?} gave no statistics", r.name),
            &response,
        )),
    }
}

/// `FlowReqArrived` from an IPCP: a flow for a name registered in it; the IPCP becomes the
/// allocating end of a flow to the process accepting the name.
pub async fn flow_req_arrived(
    state: &Arc<State>,
    peer: Option<UCred>,
    conn: u64,
    r: FlowReqArrived,
) -> Result<Response, Refusal> {
    let pid = caller_pid(peer)?;
    let name = state.registry().name_of_hash(pid, &r.hash).ok_or_else(|| {
        Refusal::new(
            ErrorCode::NotFound,
            format!("no name is registered in IPCP {pid} under that hash"),
        )
    })?;
    let timeout = if r.timeout_ms == 0 {
        DEFAULT_ALLOC_TIMEOUT
    } else {
        Duration::from_millis(r.timeout_ms.into())
    };
    let checked = state.oap().check(&r.piggyback, now_ns());
    let accepted = checked.map_err(|e| {
        warn!(name = %name, ipcp = pid, "flow request refused: {e}");
        Refusal::new(e.code(), format!("flow request for {name:?} refused: {e}"))
    })?;
    debug!(name = %name, ipcp = pid, oap = %id_hex(accepted.id()), "OAP request accepted");
    let qos = r.qos.unwrap_or_default();
    let mut response = alloc_direct(state, pid, conn, &name, qos, r.max_sdu, timeout).await?;
    if let Some(ResponseKind::Flow(info)) = &mut response.kind {
        info.piggyback = accepted.response(now_ns());
    }
    Ok(response)
}

/// The time as OAP headers carry it: CLOCK_REALTIME in ns since the Unix epoch.
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Tells the IPCPs among `(flow id, pid)` that the other end of their flow is done
/// (`IpcpFlowDealloc`): each frees its state for the flow and deallocates its own end. Pids
/// that are not IPCPs with a control connection are skipped. Does not wait for the answers.
pub fn tell_dealloc(state: &State, ends: impl IntoIterator<Item = (u32, u32)>) {
    for (flow_id, pid) in ends {
        let link = state.procs().get(&pid).and_then(|p| p.link.clone());
        let Some(link) = link else {
            continue;
        };
        tokio::spawn(async move {
            match link
                .call(IpcpFlowDealloc { flow_id }, CONTROL_TIMEOUT)
                .await
            {
                Ok(r) if r.is_ok() => {
                    info!(flow = flow_id, ipcp = pid, "IPCP deallocated its flow");
                }
                Ok(r) => warn!(
                    flow = flow_id,
                    ipcp = pid,
                    "IPCP refused to deallocate the flow: {:?}",
                    r.as_error()
                ),
                Err(e) => warn!(flow = flow_id, ipcp = pid, "IPCP flow dealloc: {e}"),
            }
        });
    }
}

/// Gives up on a flow the IPCP allocated in its layer but that this IRMd refuses (its OAP
/// response failed the check): the application's end is marked deallocated without it ever
/// hearing of the flow, and the IPCP is told, so it frees the flow and deallocates its end,
/// which destroys the rings.
fn abandon_flow(state: &State, flow_id: u32, app: u32, ipcp: u32) {
    let rings = {
        let mut reg = state.registry();
        let chosen: Vec<_> = reg
            .flows
            .get(flow_id)
            .map(|flow| super::to_flag(state, flow, o7s_pool::RingFlags::FLOW_DOWN))
            .into_iter()
            .collect();
        let rings = reg.flows.end(flow_id, Side::Alloc, EndState::Deallocated);
        drop(reg);
        super::flag_rings(state, chosen);
        rings
    };
    debug!(flow = flow_id, app, "flow abandoned by the IRMd");
    match rings {
        // The IPCP's end was gone already.
        Some(flow) => super::destroy_rings(state, &flow),
        None => tell_dealloc(state, [(flow_id, ipcp)]),
    }
}

/// Stops every spawned IPCP (the IRMd shuts down).
pub fn terminate_all(state: &State) {
    let pids: Vec<u32> = state.procs().keys().copied().collect();
    for pid in pids {
        kill(pid, rustix::process::Signal::TERM);
    }
    let deadline = std::time::Instant::now() + TERM_GRACE;
    for (pid, mut p) in state.procs().drain() {
        let Some(child) = p.child.as_mut() else {
            continue;
        };
        loop {
            match child.try_wait() {
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                _ => break,
            }
        }
        debug!(pid, "IPCP stopped");
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn names_hash_with_the_layer_algorithm() {
        let h = hash_name(HashAlgo::Sha3_256, "").expect("sha3-256");
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
        );
        for (algo, len) in [
            (HashAlgo::Sha3_224, 28),
            (HashAlgo::Sha3_384, 48),
            (HashAlgo::Sha3_512, 64),
        ] {
            assert_eq!(hash_name(algo, "oping").expect("sha3").len(), len);
        }
        assert_eq!(
            hash_name(HashAlgo::Md5, "x").map(drop).unwrap_err().code,
            ErrorCode::NotSupported
        );
    }

    #[test]
    fn a_missing_program_is_a_clear_error() {
        let e = find_program("ipcpd-does-not-exist").unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(
            e.message
                .contains("cannot find the ipcpd-does-not-exist executable")
        );
    }
}
