//! The IPCP runtime: one persistent connection to the IRMd and the N+1 flow plumbing.
//!
//! [`Irm::start`] connects to `<rundir>/irmd.sock`, starts a reader thread and says hello.
//! From then on the IRMd's requests arrive on that connection; each is handled on a thread of
//! its own by the [`Handler`] (so a flow allocation waiting for its layer holds nothing up),
//! and its response goes back with the request's id. The IPCP's own requests ([`Irm::call`])
//! go on the same connection; their responses are matched by id.
//!
//! Relays join two flow rings: [`relay`] moves block indices within one pool (no copy);
//! [`relay_copy`] copies each SDU into a block of another pool (an unprivileged application's
//! per-user pool on one side, as the reference's IPCPs copy between the app's pool and the
//! global one).

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use o7s_pool::{Error as PoolError, Packet, Pool, RingFlags, RingWriter};
use o7s_proto::irm::{
    Body, Codec, Envelope, ErrorCode, FrameDecoder, FrameError, IpcpHello, IpcpType, Request,
    RequestKind, Response, ResponseKind,
};

/// How long the hello may take to be answered.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the runtime failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The IRMd's socket could not be reached.
    #[error("cannot reach the irmd at {path}: {source}")]
    Connect {
        /// The socket.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("irmd connection: {0}")]
    Io(#[from] std::io::Error),
    /// A frame could not be written or read.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The IRMd closed the connection (or it closed before an answer).
    #[error("the irmd closed the connection")]
    Closed,
    /// No answer in time.
    #[error("the irmd did not answer {what} in time")]
    TimedOut {
        /// The request.
        what: &'static str,
    },
    /// The IRMd refused.
    #[error("irmd refused {what}: {message} ({code:?})")]
    Refused {
        /// The request.
        what: &'static str,
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Answers the IRMd's requests. Called on a thread per request.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, irm: &Arc<Irm>, request: RequestKind) -> Response;
}

/// The IPCP's connection to the IRMd.
#[derive(Debug)]
pub struct Irm {
    writer: Mutex<UnixStream>,
    pending: Mutex<HashMap<u64, mpsc::Sender<Response>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    pid: u32,
}

impl Irm {
    /// Connects to the IRMd of `rundir`, starts serving `handler`, and says hello as `name`.
    /// The returned thread ends when the IRMd closes the connection.
    pub fn start(
        rundir: &Path,
        name: &str,
        ipcp_type: IpcpType,
        handler: Arc<dyn Handler>,
    ) -> Result<(Arc<Self>, JoinHandle<()>), Error> {
        let path = o7s::rundir::socket_path(rundir);
        let stream = UnixStream::connect(&path).map_err(|source| Error::Connect {
            path: path.display().to_string(),
            source,
        })?;
        let reader = stream.try_clone()?;
        let irm = Arc::new(Self {
            writer: Mutex::new(stream),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            pid: std::process::id(),
        });
        let thread = {
            let irm = irm.clone();
            std::thread::Builder::new()
                .name("irm-reader".into())
                .spawn(move || irm.read_loop(reader, handler))?
        };
        irm.call_ok(
            IpcpHello {
                pid: irm.pid,
                name: name.to_owned(),
                ipcp_type: ipcp_type.into(),
            },
            HELLO_TIMEOUT,
        )?;
        Ok((irm, thread))
    }

    /// This process's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn send(&self, envelope: &Envelope) -> Result<(), Error> {
        let frame = Codec::encode_to_vec(envelope)?;
        lock(&self.writer).write_all(&frame)?;
        Ok(())
    }

    /// Sends a request to the IRMd and waits up to `timeout` for its response.
    pub fn call(&self, request: impl Into<Request>, timeout: Duration) -> Result<Response, Error> {
        let request = request.into();
        let what = request.name();
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        lock(&self.pending).insert(id, tx);
        if let Err(e) = self.send(&Envelope::request(id, request)) {
            lock(&self.pending).remove(&id);
            return Err(e);
        }
        match rx.recv_timeout(timeout) {
            Ok(r) => Ok(r),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                lock(&self.pending).remove(&id);
                Err(Error::TimedOut { what })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::Closed),
        }
    }

    /// [`Irm::call`], turning an error response into [`Error::Refused`].
    pub fn call_ok(
        &self,
        request: impl Into<Request>,
        timeout: Duration,
    ) -> Result<Option<ResponseKind>, Error> {
        let request = request.into();
        let what = request.name();
        let response = self.call(request, timeout)?;
        if let Some((code, message)) = response.as_error() {
            return Err(Error::Refused {
                what,
                code,
                message: message.to_owned(),
            });
        }
        Ok(response.kind)
    }

    fn read_loop(self: Arc<Self>, mut stream: UnixStream, handler: Arc<dyn Handler>) {
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; 16 * 1024];
        'read: loop {
            let n = match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut input = &buf[..n];
            while !input.is_empty() {
                let envelope = match decoder.decode(&mut input) {
                    Ok(Some(e)) => e,
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("ipcpd: bad frame from the irmd: {e}");
                        if decoder.has_failed() {
                            break 'read;
                        }
                        continue;
                    }
                };
                match envelope.body {
                    Some(Body::Response(r)) => {
                        if let Some(tx) = lock(&self.pending).remove(&envelope.id) {
                            let _ = tx.send(r);
                        }
                    }
                    Some(Body::Request(Request { kind: Some(kind) })) => {
                        let irm = self.clone();
                        let handler = handler.clone();
                        let id = envelope.id;
                        let spawned = std::thread::Builder::new()
                            .name("irm-request".into())
                            .spawn(move || {
                                let response = handler.handle(&irm, kind);
                                if let Err(e) = irm.send(&Envelope::response(id, response)) {
                                    eprintln!("ipcpd: cannot answer the irmd: {e}");
                                }
                            });
                        if let Err(e) = spawned {
                            let _ = self.send(&Envelope::response(
                                id,
                                Response::error(
                                    ErrorCode::Busy,
                                    format!("no thread for the request: {e}"),
                                ),
                            ));
                        }
                    }
                    _ => {
                        let _ = self.send(&Envelope::response(
                            envelope.id,
                            Response::error(ErrorCode::BadRequest, "envelope without a request"),
                        ));
                    }
                }
            }
        }
        self.closed.store(true, Ordering::Release);
        lock(&self.pending).clear();
    }
}

/// How a relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEnd {
    /// Told to stop.
    Stopped,
    /// A ring went down or its peer died (or the ring is gone).
    Flow(String),
}

/// Moves SDUs from ring `from` to ring `to` of `pool` by block index (no copy) until `stop`
/// is set or either ring ends. A full `to` ring makes it wait (never drop); `stop` is checked
/// at least every `poll`.
pub fn relay(pool: &Pool, from: u32, to: u32, stop: &AtomicBool, poll: Duration) -> RelayEnd {
    let (reader, writer) = match (pool.ring_reader(from), pool.ring_writer(to)) {
        (Ok(r), Ok(w)) => (r, w),
        (Err(e), _) | (_, Err(e)) => return RelayEnd::Flow(e.to_string()),
    };
    loop {
        if stop.load(Ordering::Acquire) {
            return RelayEnd::Stopped;
        }
        let packet = match reader.read(Some(poll)) {
            Ok(p) => p,
            Err(PoolError::TimedOut { .. } | PoolError::WouldBlock { .. }) => continue,
            Err(e) => return RelayEnd::Flow(e.to_string()),
        };
        if let Err(end) = forward(&writer, packet, stop, poll) {
            return end;
        }
    }
}

/// Writes `packet` on `writer`, waiting for room (checking `stop` every `poll`).
fn forward<'p>(
    writer: &RingWriter<'p>,
    mut packet: Packet<'p>,
    stop: &AtomicBool,
    poll: Duration,
) -> Result<(), RelayEnd> {
    loop {
        match writer.write(packet, Some(poll)) {
            Ok(()) => return Ok(()),
            Err((p, PoolError::TimedOut { .. } | PoolError::WouldBlock { .. })) => {
                if stop.load(Ordering::Acquire) {
                    return Err(RelayEnd::Stopped);
                }
                packet = p;
            }
            // The packet goes back to the pool as it drops.
            Err((_p, e)) => return Err(RelayEnd::Flow(e.to_string())),
        }
    }
}

/// Counters of a copying relay.
#[derive(Debug, Default)]
pub struct CopyStats {
    /// SDUs copied into the destination pool.
    pub copied: AtomicU64,
    /// SDUs larger than any block of the destination pool: dropped (the first of each relay
    /// logged).
    pub too_large: AtomicU64,
}

/// Moves SDUs from ring `from` of pool `src` to ring `to` of another pool `dst` (an
/// application's per-user pool and the other end's pool): each SDU is copied once into a
/// block of `dst` (with `dst`'s head- and tailroom), and its `src` block released. Waits for a
/// free block and for ring room, never drops, except an SDU larger than `dst`'s largest block,
/// which is counted in `stats` (and logged once per relay, so a peer cannot flood the log).
/// Ends like [`relay`]; while it waits for a block it also watches `to`'s flags, so a flow
/// that goes down while `dst` is empty ends the relay at once. Allocates nothing but pool
/// blocks.
pub fn relay_copy(
    (src, from): (&Pool, u32),
    (dst, to): (&Pool, u32),
    stop: &AtomicBool,
    poll: Duration,
    stats: &CopyStats,
) -> RelayEnd {
    let (reader, writer) = match (src.ring_reader(from), dst.ring_writer(to)) {
        (Ok(r), Ok(w)) => (r, w),
        (Err(e), _) | (_, Err(e)) => return RelayEnd::Flow(e.to_string()),
    };
    let mut logged = false;
    loop {
        if stop.load(Ordering::Acquire) {
            return RelayEnd::Stopped;
        }
        let packet = match reader.read(Some(poll)) {
            Ok(p) => p,
            Err(PoolError::TimedOut { .. } | PoolError::WouldBlock { .. }) => continue,
            Err(e) => return RelayEnd::Flow(e.to_string()),
        };
        let copy = loop {
            match dst.alloc(packet.len(), Some(poll)) {
                Ok(c) => break Some(c),
                Err(PoolError::TimedOut { .. } | PoolError::WouldBlock { .. }) => {
                    if stop.load(Ordering::Acquire) {
                        return RelayEnd::Stopped;
                    }
                    // No block yet: a flow that went down meanwhile will never take one.
                    if let Some(end) = ring_down(dst, to) {
                        return end;
                    }
                }
                Err(PoolError::TooLarge { len, max }) => {
                    stats.too_large.fetch_add(1, Ordering::Relaxed);
                    if !logged {
                        logged = true;
                        eprintln!(
                            "ipcpd: an SDU of {len} bytes does not fit in pool {:?} (at most \
                             {max}): dropped (once logged per flow, all counted)",
                            dst.name()
                        );
                    }
                    break None;
                }
                Err(e) => return RelayEnd::Flow(e.to_string()),
            }
        };
        let Some(mut copy) = copy else {
            continue;
        };
        copy.data_mut().copy_from_slice(packet.data());
        drop(packet);
        stats.copied.fetch_add(1, Ordering::Relaxed);
        if let Err(end) = forward(&writer, copy, stop, poll) {
            return end;
        }
    }
}

/// How a relay ends when ring `ring` of `pool` can take no more SDUs (down, its peer gone,
/// read-only, or the ring itself gone); `None` while it can.
fn ring_down(pool: &Pool, ring: u32) -> Option<RelayEnd> {
    match pool.ring_flags(ring) {
        Ok(RingFlags(0)) => None,
        Ok(RingFlags(flags)) => Some(RelayEnd::Flow(format!(
            "ring {ring} of pool {:?} is down (flags {flags:#x})",
            pool.name()
        ))),
        Err(e) => Some(RelayEnd::Flow(e.to_string())),
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use o7s_pool::{Access, PoolConfig};

    /// A pool object of this test, unlinked on drop.
    struct TestPool(Pool);

    impl TestPool {
        fn new(tag: &str, config: &PoolConfig) -> Self {
            let name = format!("o7s-ipcpd-unit-{}-{tag}", std::process::id());
            let _ = Pool::unlink(&name);
            Self(Pool::create(&name, config, Access::Shared).expect("create pool"))
        }
    }

    impl Drop for TestPool {
        fn drop(&mut self) {
            let _ = Pool::unlink(self.0.name());
        }
    }

    #[test]
    fn relay_copy_puts_each_sdu_in_a_block_of_the_other_pool() {
        let src = TestPool::new("src", &PoolConfig::small());
        // No 64 KiB class: an SDU of 5000 bytes fits no block of it.
        let mut small = PoolConfig::small();
        small.classes.retain(|k| k.block_size <= 4096);
        let dst = TestPool::new("dst", &small);
        let (src, dst) = (&src.0, &dst.0);
        let me = std::process::id();
        let from = src.ring_create(me, me).expect("ring");
        let to = dst.ring_create(me, me).expect("ring");
        let sdu = |i: usize| -> Vec<u8> { (0..(i * 37) % 3000).map(|b| (b + i) as u8).collect() };
        {
            let w = src.ring_writer(from).expect("writer");
            for i in 0..100 {
                if i == 50 {
                    let big = src.try_alloc(5000).expect("a 64 KiB block");
                    w.try_write(big).map_err(|(_, e)| e).expect("write");
                }
                let mut p = src.try_alloc(sdu(i).len()).expect("alloc");
                p.data_mut().copy_from_slice(&sdu(i));
                w.try_write(p).map_err(|(_, e)| e).expect("write");
            }
        }
        src.ring_set_flags(from, RingFlags::FLOW_DOWN)
            .expect("flag");
        let stats = CopyStats::default();
        let stop = AtomicBool::new(false);
        let end = relay_copy(
            (src, from),
            (dst, to),
            &stop,
            Duration::from_millis(50),
            &stats,
        );
        assert!(
            matches!(end, RelayEnd::Flow(_)),
            "ends with the flow: {end:?}"
        );
        assert_eq!(stats.copied.load(Ordering::Relaxed), 100);
        assert_eq!(stats.too_large.load(Ordering::Relaxed), 1);
        let r = dst.ring_reader(to).expect("reader");
        for i in 0..100 {
            let p = r.try_read().expect("copied SDU");
            assert!(std::ptr::eq(p.pool(), dst));
            assert_eq!(p.data(), &sdu(i)[..], "SDU {i}");
            assert!(p.headroom() >= 256, "the destination pool's headroom");
        }
        assert!(r.try_read().is_err(), "nothing more");
        for pool in [src, dst] {
            let report = pool.verify();
            assert!(report.is_ok(), "{:?}", report.problems);
            assert_eq!(
                (report.owned, report.queued),
                (0, 0),
                "every block back: {report:?}"
            );
        }
    }

    #[test]
    fn relay_copy_ends_when_the_destination_goes_down_while_its_pool_is_empty() {
        let src = TestPool::new("src-down", &PoolConfig::small());
        let dst = TestPool::new("dst-down", &PoolConfig::small());
        let (src, dst) = (&src.0, &dst.0);
        let me = std::process::id();
        let from = src.ring_create(me, me).expect("ring");
        let to = dst.ring_create(me, me).expect("ring");
        // Every block of the destination taken: the relay waits for one.
        let mut hoard = Vec::new();
        while let Ok(p) = dst.try_alloc(100) {
            hoard.push(p);
        }
        assert!(!hoard.is_empty());
        {
            let w = src.ring_writer(from).expect("writer");
            let p = src.try_alloc(100).expect("alloc");
            w.try_write(p).map_err(|(_, e)| e).expect("write");
        }
        dst.ring_set_flags(to, RingFlags::FLOW_DOWN).expect("flag");
        let stats = CopyStats::default();
        let stop = AtomicBool::new(false);
        let end = std::thread::scope(|s| {
            let relay = s.spawn(|| {
                relay_copy(
                    (src, from),
                    (dst, to),
                    &stop,
                    Duration::from_millis(20),
                    &stats,
                )
            });
            // A hang guard only: the relay must end by itself, not by `stop`.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !relay.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            stop.store(true, Ordering::Release);
            relay.join().expect("relay thread")
        });
        assert!(
            matches!(&end, RelayEnd::Flow(why) if why.contains("down")),
            "the relay ends with the flow, not by stop: {end:?}"
        );
        assert_eq!(stats.copied.load(Ordering::Relaxed), 0);
        drop(hoard);
        for pool in [src, dst] {
            let report = pool.verify();
            assert!(report.is_ok(), "{:?}", report.problems);
            assert_eq!(report.owned, 0, "every block back: {report:?}");
        }
    }
}
