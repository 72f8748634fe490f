//! The local IPCP: a layer confined to this host.
//!
//! Names registered in it (their hashes) can be allocated to. For a flow allocation the IRMd
//! hands it the allocating application's flow (two rings between the application and the
//! IPCP); the IPCP raises `FlowReqArrived` for the hash, the IRMd answers with a second flow,
//! between the IPCP and the accepting application, and the IPCP joins the two: one relay
//! thread per direction moves block indices from one ring to the other, without copying (the
//! reference's local IPCP does the same with its two fds). When either side's rings go down
//! (a deallocation or a death), the IPCP deallocates both of its ends, so the other
//! application reads what was queued and then `FlowDown`.
//!
//! **Pools.** The two flows may live in different pools: an unprivileged application's rings
//! are in its uid's per-user pool (`IpcpFlowAlloc.pool`/`uid`, `FlowInfo.pool`/`uid`). Then
//! the relays copy each SDU once into a block of the other pool ([`relay_copy`]), as the
//! reference's IPCPs copy between an application's pool and the global one; within one pool
//! they move block indices. The IPCP maps a per-user pool while one of its joints uses it and
//! lets go of it afterwards (the IRMd destroys it once nobody uses it, and a later pool of the
//! same name is a new object).
//!
//! The IRMds' OAP headers pass through untouched: the allocating side's request goes into
//! `FlowReqArrived`, the accepting side's response (in its answer) back as the answer to
//! `IpcpFlowAlloc`. The layer adds no SDU limit of its own (the pool's blocks are the limit).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use o7s_pool::Pool;
use o7s_proto::irm::{
    ErrorCode, FlowDealloc, FlowReqArrived, IpcpFlowAlloc, IpcpFlowReply, RequestKind, Response,
    ResponseKind,
};

use crate::pools::PoolMap;
use crate::runtime::{CopyStats, Error, Handler, Irm, RelayEnd, relay, relay_copy};

/// How often a relay checks whether it should stop.
const RELAY_POLL: Duration = Duration::from_millis(200);
/// How long a deallocation may take the IRMd.
const DEALLOC_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra time the IRMd gets to answer a flow request beyond the allocation's timeout.
const ANSWER_MARGIN: Duration = Duration::from_secs(2);
/// How long the relays of a flow the IRMd ended get to deliver what is still queued before
/// the joint is torn down regardless (a reader that never drains its ring).
const DRAIN_GRACE: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Two flows joined inside the IPCP: the allocating application's (`app`) and the accepting
/// one's (`peer`).
#[derive(Debug)]
struct Joint {
    app: u32,
    peer: u32,
    down: AtomicBool,
    /// The pools of the two flows' rings (the same name twice when they share one).
    pools: [String; 2],
    /// SDUs copied between the pools (when they differ).
    copies: CopyStats,
}

#[derive(Debug, Default)]
struct State {
    layer: Option<String>,
    registered: BTreeSet<Vec<u8>>,
    /// By the application flow's id.
    joints: HashMap<u32, Arc<Joint>>,
    /// The pools mapped, with how many uses (flow ends being set up or joined) hold each.
    pools: PoolMap,
}

/// The local IPCP's request handler.
#[derive(Debug, Default)]
pub struct Local {
    state: Mutex<State>,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::error(code, message)
}

/// A refusal not yet turned into a response.
fn no(code: ErrorCode, message: impl Into<String>) -> (ErrorCode, String) {
    (code, message.into())
}

impl Local {
    /// A local IPCP not yet bootstrapped.
    pub fn new() -> Self {
        Self::default()
    }

    /// The pool of that name, mapped once and held for one more use (see [`Local::release`]).
    fn acquire(&self, name: &str) -> Result<Arc<Pool>, String> {
        lock(&self.state)
            .pools
            .acquire(name)
            .map_err(|e| format!("cannot open pool {name:?}: {e}"))
    }

    /// One use of pool `name` less; the last one unmaps it (once the relays holding it end).
    fn release(&self, name: &str) {
        lock(&self.state).pools.release(name);
    }

    fn flow_alloc(self: &Arc<Self>, irm: &Arc<Irm>, r: IpcpFlowAlloc) -> Response {
        {
            let st = lock(&self.state);
            let Some(layer) = &st.layer else {
                return refuse(ErrorCode::InvalidArgument, "not bootstrapped");
            };
            if !st.registered.contains(&r.hash) {
                return refuse(
                    ErrorCode::NotFound,
                    format!("the name is not registered in layer {layer:?}"),
                );
            }
        }
        let pool = match self.acquire(&r.pool) {
            Ok(p) => p,
            Err(e) => return refuse(ErrorCode::Internal, e),
        };
        self.join(irm, &r, &pool).unwrap_or_else(|(code, message)| {
            self.release(&r.pool);
            refuse(code, message)
        })
    }

    /// Raises the flow request for `r` (whose rings are in `pool`) and joins the answer's flow
    /// to it. `Err`: refused before a joint took over the use of `pool`.
    fn join(
        self: &Arc<Self>,
        irm: &Arc<Irm>,
        r: &IpcpFlowAlloc,
        pool: &Arc<Pool>,
    ) -> Result<Response, (ErrorCode, String)> {
        if let Err(e) = pool
            .ring_reader(r.rx_ring)
            .and_then(|_| pool.ring_writer(r.tx_ring).map(drop))
        {
            return Err(no(
                ErrorCode::InvalidArgument,
                format!("flow {}: rings not ours: {e}", r.flow_id),
            ));
        }
        let timeout = Duration::from_millis(r.timeout_ms.into());
        let answer = irm.call_ok(
            FlowReqArrived {
                hash: r.hash.clone(),
                qos: r.qos.clone(),
                timeout_ms: r.timeout_ms,
                piggyback: r.piggyback.clone(),
                max_sdu: None,
            },
            timeout + ANSWER_MARGIN,
        );
        let info = match answer {
            Ok(Some(ResponseKind::Flow(info))) => info,
            Ok(other) => {
                return Err(no(
                    ErrorCode::Internal,
                    format!("unexpected answer to FlowReqArrived: {other:?}"),
                ));
            }
            Err(Error::Refused { code, message, .. }) => return Err(no(code, message)),
            Err(e) => return Err(no(ErrorCode::Internal, e.to_string())),
        };
        let peer_pool = match self.acquire(&info.pool) {
            Ok(p) => p,
            Err(e) => {
                let _ = irm.call(
                    FlowDealloc {
                        flow_id: info.flow_id,
                    },
                    DEALLOC_TIMEOUT,
                );
                return Err(no(ErrorCode::Internal, e));
            }
        };
        let joint = Arc::new(Joint {
            app: r.flow_id,
            peer: info.flow_id,
            down: AtomicBool::new(false),
            pools: [r.pool.clone(), info.pool.clone()],
            copies: CopyStats::default(),
        });
        lock(&self.state).joints.insert(r.flow_id, joint.clone());
        let copy = r.pool != info.pool;
        // app → peer: the IPCP reads the app flow's rx ring and writes the peer flow's tx.
        for ((src, from), (dst, to)) in [
            ((pool, r.rx_ring), (&peer_pool, info.tx_ring)),
            ((&peer_pool, info.rx_ring), (pool, r.tx_ring)),
        ] {
            let (me, irm2, j) = (self.clone(), irm.clone(), joint.clone());
            let (src, dst) = (src.clone(), dst.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("relay-{}", j.app))
                .spawn(move || {
                    let end = if copy {
                        relay_copy((&src, from), (&dst, to), &j.down, RELAY_POLL, &j.copies)
                    } else {
                        relay(&src, from, to, &j.down, RELAY_POLL)
                    };
                    me.tear_down(&irm2, &j, &end);
                });
            if let Err(e) = spawned {
                self.tear_down(
                    irm,
                    &joint,
                    &RelayEnd::Flow(format!("no relay thread: {e}")),
                );
                // The joint's teardown let go of the pools.
                return Ok(refuse(ErrorCode::Busy, format!("no relay thread: {e}")));
            }
        }
        eprintln!(
            "ipcpd-local: flow {} (pid {}, pool {:?}) joined to flow {} (pid {}, pool {:?}){}",
            r.flow_id,
            r.n_pid,
            r.pool,
            info.flow_id,
            info.n_1_pid,
            info.pool,
            if copy {
                ", copying between the pools"
            } else {
                ""
            }
        );
        Ok(ResponseKind::IpcpFlow(IpcpFlowReply {
            piggyback: info.piggyback,
            max_sdu: None,
        })
        .into())
    }

    /// The IRMd ended flow `flow_id` of `joint`. It flagged the flow's rings down before
    /// saying so, so the relays deliver what is still queued and then end by themselves,
    /// tearing the joint down; if they have not after [`DRAIN_GRACE`], it is torn down anyway.
    fn end_after_drain(self: &Arc<Self>, irm: &Arc<Irm>, joint: Arc<Joint>, flow_id: u32) {
        let why = RelayEnd::Flow(format!("the irmd ended flow {flow_id}"));
        let spawned = {
            let (me, irm, joint, why) = (self.clone(), irm.clone(), joint.clone(), why.clone());
            std::thread::Builder::new()
                .name(format!("drain-{flow_id}"))
                .spawn(move || {
                    let deadline = std::time::Instant::now() + DRAIN_GRACE;
                    while !joint.down.load(Ordering::Acquire)
                        && std::time::Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    me.tear_down(&irm, &joint, &why);
                })
        };
        if spawned.is_err() {
            self.tear_down(irm, &joint, &why);
        }
    }

    /// Ends a joint once: both relays stop and both of the IPCP's flow ends are deallocated.
    fn tear_down(&self, irm: &Irm, joint: &Joint, why: &RelayEnd) {
        if joint.down.swap(true, Ordering::AcqRel) {
            return;
        }
        lock(&self.state).joints.remove(&joint.app);
        for pool in &joint.pools {
            self.release(pool);
        }
        eprintln!(
            "ipcpd-local: flows {} and {} end ({why:?}; {} SDUs copied)",
            joint.app,
            joint.peer,
            joint.copies.copied.load(Ordering::Relaxed)
        );
        for flow_id in [joint.app, joint.peer] {
            if let Err(e) = irm.call_ok(FlowDealloc { flow_id }, DEALLOC_TIMEOUT) {
                eprintln!("ipcpd-local: cannot deallocate flow {flow_id}: {e}");
            }
        }
    }
}

/// The local IPCP's answers, shared by the request threads.
#[derive(Debug, Default)]
pub struct LocalHandler(pub Arc<Local>);

impl Handler for LocalHandler {
    fn handle(&self, irm: &Arc<Irm>, request: RequestKind) -> Response {
        let local = &self.0;
        match request {
            RequestKind::IpcpBootstrap(r) => {
                let Some(config) = r.config else {
                    return refuse(ErrorCode::InvalidArgument, "no configuration");
                };
                let mut st = lock(&local.state);
                if let Some(layer) = &st.layer {
                    return refuse(
                        ErrorCode::InvalidArgument,
                        format!("already bootstrapped in layer {layer:?}"),
                    );
                }
                eprintln!("ipcpd-local: bootstrapped in layer {:?}", config.layer);
                st.layer = Some(config.layer);
                Response::ok()
            }
            RequestKind::IpcpRegister(r) => {
                let mut st = lock(&local.state);
                if st.layer.is_none() {
                    return refuse(ErrorCode::InvalidArgument, "not bootstrapped");
                }
                st.registered.insert(r.hash);
                Response::ok()
            }
            RequestKind::IpcpUnregister(r) => {
                if lock(&local.state).registered.remove(&r.hash) {
                    Response::ok()
                } else {
                    refuse(ErrorCode::NotFound, "hash not registered")
                }
            }
            RequestKind::IpcpQuery(r) => {
                if lock(&local.state).registered.contains(&r.hash) {
                    Response::ok()
                } else {
                    refuse(ErrorCode::NotFound, "hash not registered in this layer")
                }
            }
            RequestKind::IpcpFlowAlloc(r) => local.flow_alloc(irm, r),
            RequestKind::IpcpFlowDealloc(r) => {
                // Either of the joined flows: the allocating application's or the accepting
                // one's.
                let joint = lock(&local.state)
                    .joints
                    .values()
                    .find(|j| j.app == r.flow_id || j.peer == r.flow_id)
                    .cloned();
                if let Some(joint) = joint {
                    local.end_after_drain(irm, joint, r.flow_id);
                }
                Response::ok()
            }
            other => refuse(
                ErrorCode::NotSupported,
                format!("the local IPCP does not serve {}", other.name()),
            ),
        }
    }
}
