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

use crate::runtime::{Error, Handler, Irm, RelayEnd, relay};

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
}

#[derive(Debug, Default)]
struct State {
    layer: Option<String>,
    registered: BTreeSet<Vec<u8>>,
    /// By the application flow's id.
    joints: HashMap<u32, Arc<Joint>>,
    pools: HashMap<String, Arc<Pool>>,
}

/// The local IPCP's request handler.
#[derive(Debug, Default)]
pub struct Local {
    state: Mutex<State>,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::error(code, message)
}

impl Local {
    /// A local IPCP not yet bootstrapped.
    pub fn new() -> Self {
        Self::default()
    }

    fn pool(&self, name: &str) -> Result<Arc<Pool>, String> {
        let mut st = lock(&self.state);
        if let Some(p) = st.pools.get(name) {
            return Ok(p.clone());
        }
        let pool = Pool::open(name)
            .map(Arc::new)
            .map_err(|e| format!("cannot open pool {name:?}: {e}"))?;
        st.pools.insert(name.to_owned(), pool.clone());
        Ok(pool)
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
        let pool = match self.pool(&r.pool) {
            Ok(p) => p,
            Err(e) => return refuse(ErrorCode::Internal, e),
        };
        if let Err(e) = pool
            .ring_reader(r.rx_ring)
            .and_then(|_| pool.ring_writer(r.tx_ring).map(drop))
        {
            return refuse(
                ErrorCode::InvalidArgument,
                format!("flow {}: rings not ours: {e}", r.flow_id),
            );
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
                return refuse(
                    ErrorCode::Internal,
                    format!("unexpected answer to FlowReqArrived: {other:?}"),
                );
            }
            Err(Error::Refused { code, message, .. }) => return refuse(code, message),
            Err(e) => return refuse(ErrorCode::Internal, e.to_string()),
        };
        if info.pool != r.pool {
            // Both applications map the shared pool today; per-user pools would need a copy.
            let _ = irm.call(
                FlowDealloc {
                    flow_id: info.flow_id,
                },
                DEALLOC_TIMEOUT,
            );
            return refuse(
                ErrorCode::NotSupported,
                format!(
                    "the two ends use different pools ({:?}, {:?})",
                    r.pool, info.pool
                ),
            );
        }
        let joint = Arc::new(Joint {
            app: r.flow_id,
            peer: info.flow_id,
            down: AtomicBool::new(false),
        });
        lock(&self.state).joints.insert(r.flow_id, joint.clone());
        // app → peer: the IPCP reads the app flow's rx ring and writes the peer flow's tx.
        for (from, to) in [(r.rx_ring, info.tx_ring), (info.rx_ring, r.tx_ring)] {
            let (me, irm2, pool, j) = (self.clone(), irm.clone(), pool.clone(), joint.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("relay-{}", j.app))
                .spawn(move || {
                    let end = relay(&pool, from, to, &j.down, RELAY_POLL);
                    me.tear_down(&irm2, &j, &end);
                });
            if let Err(e) = spawned {
                self.tear_down(
                    irm,
                    &joint,
                    &RelayEnd::Flow(format!("no relay thread: {e}")),
                );
                return refuse(ErrorCode::Busy, format!("no relay thread: {e}"));
            }
        }
        eprintln!(
            "ipcpd-local: flow {} (pid {}) joined to flow {} (pid {})",
            r.flow_id, r.n_pid, info.flow_id, info.n_1_pid
        );
        ResponseKind::IpcpFlow(IpcpFlowReply {
            piggyback: info.piggyback,
            max_sdu: None,
        })
        .into()
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
        eprintln!(
            "ipcpd-local: flows {} and {} end ({why:?})",
            joint.app, joint.peer
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
