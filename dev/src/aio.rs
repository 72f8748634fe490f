//! The async API, on tokio (feature `tokio`, on by default): [`AsyncClient`] allocates and
//! accepts flows, [`AsyncFlow`] reads and writes them, and no call ever blocks a tokio worker
//! thread, so it runs on a `current_thread` runtime as well as on a multi-threaded one.
//!
//! ```no_run
//! # async fn example() -> o7s::Result<()> {
//! let client = o7s::aio::AsyncClient::connect().await?;
//! let flow = client.flow_alloc("echo", None, None).await?;
//! flow.write(b"hello").await?;
//! let mut buf = [0u8; 2048];
//! let n = flow.read(&mut buf).await?;
//! assert_eq!(&buf[..n], b"hello");
//! flow.dealloc().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # How it waits
//!
//! * **Data path: one waiter thread per [`AsyncClient`].** The client owns a [`FlowSet`] and
//!   adds every flow it hands out; its thread sleeps in [`FlowSet::wait`] (a futex word in the
//!   process's shared-memory event set) and turns each event into a wake-up of the task waiting
//!   on that flow (a [`tokio::sync::Notify`] per direction). Reads and writes are non-blocking
//!   calls on the underlying [`Flow`], retried when woken. A futex cannot be registered with
//!   tokio's reactor (epoll does not watch futex words), and an eventfd would have to be known
//!   to every process that writes to the flow (other applications, IPCPs), so a thread it is:
//!   one per client, not per flow, and idle while nothing happens.
//! * **Room to write:** a write that finds the flow's transmit ring full arms a one-shot
//!   [`FlowSet::watch_writable`]; the reader's next take posts [`FlowEvent::Writable`]. If the
//!   pool itself has no free block of the size, the allocation waits on tokio's blocking pool
//!   (rare: the pool is sized so that rings fill first).
//! * **Control path: [`tokio::task::spawn_blocking`].** Announcing, binding, allocating,
//!   accepting and deallocating talk to the IRMd over its socket with the blocking
//!   [`crate::irm::Client`] (shared with the tools); these calls are few, and the blocking pool
//!   exists for them. An accept without a timeout holds one blocking-pool thread while it
//!   waits. Dropping an [`AsyncFlow`] inside a runtime deallocates on the blocking pool too.
//!
//! Cancelling a call (dropping its future) loses nothing: a read takes a packet only when one
//! is there, a write sends only once it has room, and a block allocated for a cancelled write
//! goes back to the pool. One reading task and one writing task per flow is the intended use;
//! more work (writes are taken in turn) but a second reader may be woken late.
//!
//! [`FlowSet`]: crate::FlowSet
//! [`FlowSet::wait`]: crate::FlowSet::wait
//! [`FlowSet::watch_writable`]: crate::FlowSet::watch_writable
//! [`FlowEvent::Writable`]: crate::FlowEvent::Writable

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use o7s_pool::Pool;
use tokio::sync::Notify;

use crate::{
    Client, ClientError, Error, Flow, FlowEvent, FlowInfo, FlowQueue, FlowSet, Packet, QosSpec,
    Result, lock,
};

/// Runs a blocking control call on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::Irm(ClientError::Io(std::io::Error::new(
            std::io::ErrorKind::Interrupted,
            "the tokio runtime shut down during an IRMd call",
        )))),
    }
}

/// Wake-ups of one flow's reading and writing tasks.
#[derive(Debug, Default)]
struct Wakers {
    rx: Notify,
    tx: Notify,
}

impl Wakers {
    fn both(&self) {
        self.rx.notify_one();
        self.tx.notify_one();
    }
}

/// What the waiter thread and the handles share.
#[derive(Debug)]
struct Shared {
    set: FlowSet,
    /// Per flow end (its receive ring), its tasks' wake-ups.
    flows: Mutex<HashMap<u32, Arc<Wakers>>>,
    stop: AtomicBool,
}

impl Shared {
    fn wake_all(&self) {
        for w in lock(&self.flows).values() {
            w.both();
        }
    }
}

/// The waiter thread's owner: stops it when the last client clone and flow are gone.
#[derive(Debug)]
struct Runner {
    shared: Arc<Shared>,
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // The thread wakes, sees `stop` and ends; nothing waits for it here (this may run on
        // a runtime thread).
        let _ = self.shared.set.wake();
    }
}

/// The waiter thread: set events → task wake-ups.
fn run(shared: &Shared) {
    let mut queue = FlowQueue::new();
    while !shared.stop.load(Ordering::Acquire) {
        if shared.set.wait(&mut queue, None).is_err() {
            // Cannot happen for a valid set; let every task retry rather than hang, and do
            // not spin.
            shared.wake_all();
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if queue.overflowed() {
            shared.wake_all();
        }
        while let Some((end, event)) = queue.next_by_end() {
            let wakers = lock(&shared.flows).get(&end).cloned();
            let Some(w) = wakers else { continue };
            match event {
                FlowEvent::Packet => w.rx.notify_one(),
                FlowEvent::Writable => w.tx.notify_one(),
                _ => w.both(),
            }
        }
    }
}

/// A connection to the IRMd for async code: the async counterpart of [`Client`]. Cheap to
/// clone (clones share the waiter thread); the thread ends when the last clone and the last
/// of its flows are dropped.
#[derive(Clone, Debug)]
pub struct AsyncClient {
    client: Client,
    runner: Arc<Runner>,
}

impl AsyncClient {
    /// Connects to the IRMd of the run directory named by `O7S_RUNDIR` (default `/run/o7s`)
    /// and announces this process.
    pub async fn connect() -> Result<Self> {
        Self::connect_to(&crate::rundir::default_rundir()).await
    }

    /// Connects to the IRMd of a run directory and announces this process.
    pub async fn connect_to(rundir: &Path) -> Result<Self> {
        let rundir = rundir.to_owned();
        let client = blocking(move || Client::connect_to(&rundir)).await?;
        Self::new(client)
    }

    /// Wraps a blocking client: makes its flow set and starts the waiter thread (both quick,
    /// no IRMd call). Fails if this process has no flow set left ([`crate::fqueue::MAX_SETS`]).
    pub fn new(client: Client) -> Result<Self> {
        let shared = Arc::new(Shared {
            set: FlowSet::new(&client)?,
            flows: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("o7s-aio".into())
            .spawn(move || run(&thread_shared))
            .map_err(|e| Error::Irm(ClientError::Io(e)))?;
        Ok(Self {
            client,
            runner: Arc::new(Runner { shared }),
        })
    }

    /// The blocking client underneath (for calls that return at once, or to use on a thread
    /// of your own).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Binds this process to a name (see [`Client::bind`]).
    pub async fn bind(&self, name: &str) -> Result<()> {
        let (client, name) = (self.client.clone(), name.to_owned());
        blocking(move || client.bind(&name)).await
    }

    /// Unbinds this process from a name (see [`Client::unbind`]).
    pub async fn unbind(&self, name: &str) -> Result<()> {
        let (client, name) = (self.client.clone(), name.to_owned());
        blocking(move || client.unbind(&name)).await
    }

    /// Allocates a flow to `name` (see [`Client::flow_alloc`]). If the future is dropped
    /// before the IRMd answers, a flow that still comes is deallocated.
    pub async fn flow_alloc(
        &self,
        name: &str,
        qos: Option<QosSpec>,
        timeout: Option<Duration>,
    ) -> Result<AsyncFlow> {
        let (client, name) = (self.client.clone(), name.to_owned());
        let flow = blocking(move || client.flow_alloc(&name, qos, timeout)).await?;
        self.adopt(flow)
    }

    /// Waits for a flow to any name this process is bound to (see [`Client::flow_accept`]).
    pub async fn flow_accept(&self, timeout: Option<Duration>) -> Result<AsyncFlow> {
        self.flow_accept_for(None, timeout).await
    }

    /// Waits for a flow to `name`, or to any of this process's names when `None` (see
    /// [`Client::flow_accept_for`]).
    pub async fn flow_accept_for(
        &self,
        name: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<AsyncFlow> {
        let (client, name) = (self.client.clone(), name.map(str::to_owned));
        let flow = blocking(move || client.flow_accept_for(name.as_deref(), timeout)).await?;
        self.adopt(flow)
    }

    /// Turns a flow of this client's IRMd into an async one: it becomes non-blocking and
    /// joins the client's flow set. On failure the flow is dropped (deallocated).
    pub fn adopt(&self, flow: Flow) -> Result<AsyncFlow> {
        flow.set_nonblocking(true);
        let shared = &self.runner.shared;
        let wakers = Arc::new(Wakers::default());
        lock(&shared.flows).insert(flow.info().rx_ring, wakers.clone());
        let handle = AsyncFlow {
            flow: Some(flow),
            wakers,
            runner: self.runner.clone(),
            writing: tokio::sync::Mutex::new(()),
        };
        // On failure, dropping `handle` leaves the map and deallocates the flow.
        shared.set.add(handle.flow())?;
        Ok(handle)
    }
}

/// A block allocated on the blocking pool for a write, given back if the write was cancelled.
struct Lent {
    pool: Arc<Pool>,
    index: Option<u32>,
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(index) = self.index.take() {
            let _ = self.pool.release(index);
        }
    }
}

/// One end of a flow, for async code. Reads and writes take `&self` (share it in an `Arc` to
/// read in one task and write in another). Dropping it deallocates the flow (on tokio's
/// blocking pool when inside a runtime).
#[derive(Debug)]
pub struct AsyncFlow {
    /// Present until `dealloc` or `drop` takes it.
    flow: Option<Flow>,
    wakers: Arc<Wakers>,
    runner: Arc<Runner>,
    /// Writes take turns: once one has found room, nobody else fills it.
    writing: tokio::sync::Mutex<()>,
}

impl AsyncFlow {
    fn flow(&self) -> &Flow {
        // Invariant: only `dealloc` (which consumes self) and `drop` take the flow out.
        self.flow
            .as_ref()
            .expect("an AsyncFlow holds its flow until dropped")
    }

    /// The system-wide flow id.
    pub fn id(&self) -> u32 {
        self.flow().id()
    }

    /// The name the flow was allocated to.
    pub fn name(&self) -> &str {
        self.flow().name()
    }

    /// The pid of the process at the other end.
    pub fn peer_pid(&self) -> u32 {
        self.flow().peer_pid()
    }

    /// The flow's QoS.
    pub fn qos(&self) -> QosSpec {
        self.flow().qos()
    }

    /// Everything the IRMd said about the flow.
    pub fn info(&self) -> &FlowInfo {
        self.flow().info()
    }

    /// The pool the flow's packets live in.
    pub fn pool(&self) -> &Pool {
        self.flow().pool()
    }

    /// The largest SDU a write takes.
    pub fn max_sdu(&self) -> usize {
        self.flow().max_sdu()
    }

    /// SDUs waiting to be read.
    pub fn rx_queue_len(&self) -> Result<u32> {
        self.flow().rx_queue_len()
    }

    /// SDUs written but not yet read by the other end.
    pub fn tx_queue_len(&self) -> Result<u32> {
        self.flow().tx_queue_len()
    }

    /// Reads the next SDU into `buf` (see [`Flow::read`]), waiting until there is one.
    /// Bound it with `tokio::time::timeout`; cancelling takes nothing.
    pub async fn read(&self, buf: &mut [u8]) -> Result<usize> {
        loop {
            match self.flow().read(buf) {
                Err(Error::WouldBlock { .. }) => self.wakers.rx.notified().await,
                other => return other,
            }
        }
    }

    /// Takes the next SDU without copying (see [`Flow::read_packet`]), waiting until there is
    /// one.
    pub async fn read_packet(&self) -> Result<Packet<'_>> {
        loop {
            match self.flow().read_packet() {
                Err(Error::WouldBlock { .. }) => self.wakers.rx.notified().await,
                other => return other,
            }
        }
    }

    /// Sends `data` as one SDU (see [`Flow::write`]), waiting for room in the ring (and, if
    /// the pool has none, for a free block, at most the flow's write timeout). Nothing is
    /// sent if the future is dropped first.
    pub async fn write(&self, data: &[u8]) -> Result<()> {
        let _turn = self.writing.lock().await;
        loop {
            self.writable().await?;
            match self.flow().write(data) {
                Err(Error::WouldBlock { .. }) if !self.ring_writable()? => {}
                Err(Error::WouldBlock { .. }) => {
                    // The ring has room (and only this task fills it): the pool was empty.
                    let mut packet = self.alloc_waiting(data.len()).await?;
                    packet.data_mut().copy_from_slice(data);
                    return self.flow().write_packet(packet);
                }
                other => return other,
            }
        }
    }

    /// A packet of `len` payload bytes from the flow's pool (see [`Flow::alloc_packet`]),
    /// waiting for a free block if there is none.
    pub async fn alloc_packet(&self, len: usize) -> Result<Packet<'_>> {
        match self.flow().alloc_packet(len) {
            Err(Error::WouldBlock { .. }) => self.alloc_waiting(len).await,
            other => other,
        }
    }

    /// Sends a packet of the flow's pool without a copy (see [`Flow::write_packet`]), waiting
    /// for room in the ring. If the flow refuses it (down, read-only), the packet is released
    /// and the error returned; if the future is dropped while waiting, the packet is released
    /// unsent.
    pub async fn write_packet(&self, packet: Packet<'_>) -> Result<()> {
        let _turn = self.writing.lock().await;
        self.writable().await?;
        self.flow().write_packet(packet)
    }

    /// Deallocates the flow (see [`Flow::dealloc`]).
    pub async fn dealloc(mut self) -> Result<()> {
        match self.take_flow() {
            Some(flow) => blocking(move || flow.dealloc()).await,
            None => Ok(()),
        }
    }

    fn ring_writable(&self) -> Result<bool> {
        let flow = self.flow();
        Ok(flow.pool().ring_writable(flow.info().tx_ring)?)
    }

    /// Waits until a write would not wait for ring room (or would fail at once).
    async fn writable(&self) -> Result<()> {
        loop {
            if self.ring_writable()? || self.runner.shared.set.watch_writable(self.flow())? {
                return Ok(());
            }
            self.wakers.tx.notified().await;
        }
    }

    /// Allocates a block on the blocking pool (the pool had none free just now).
    async fn alloc_waiting(&self, len: usize) -> Result<Packet<'_>> {
        let max = self.max_sdu();
        if len > max {
            return Err(Error::TooLarge { len, max });
        }
        let pool = self.runner.shared.set.pool().clone();
        let timeout = self.flow().write_timeout();
        let mut lent = blocking(move || {
            let index = pool.alloc(len, timeout)?.into_index();
            Ok(Lent {
                pool,
                index: Some(index),
            })
        })
        .await?;
        match lent.index.take() {
            // Wrapped by the flow's own pool handle, so the flow takes it as its own.
            Some(index) => Ok(self.flow().pool().packet(index)?),
            None => Err(Error::Unexpected("a lent block without an index".into())),
        }
    }

    /// Leaves the client's set; the flow itself is the caller's to drop.
    fn take_flow(&mut self) -> Option<Flow> {
        let flow = self.flow.take()?;
        let shared = &self.runner.shared;
        shared.set.remove(&flow);
        lock(&shared.flows).remove(&flow.info().rx_ring);
        Some(flow)
    }
}

impl Drop for AsyncFlow {
    fn drop(&mut self) {
        let Some(flow) = self.take_flow() else {
            return;
        };
        // Deallocating asks the IRMd and waits for its answer: not on a runtime thread.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(flow))),
            Err(_) => drop(flow),
        }
    }
}
