//! Ethernet benchmark (custom harness, `cargo xtask bench eth`): the o7s eth-dix stack over a veth
//! pair against raw AF_XDP and raw AF_PACKET on the same pair, in one run.
//!
//! Two fresh network namespaces joined by a veth pair (deleted when the run ends, also when it
//! panics); one thread per side, entered into its namespace with `setns`: side 0 sends, side 1
//! receives. Six sessions, one after the other on the same pair:
//!
//! * `raw af_packet`: `sendmmsg` of prebuilt frames / `recvmmsg` (the crate's `sys` module).
//! * `raw af_xdp generic|native`: xdpilone directly, the o7s-ebpf steering program attached on
//!   both ends in that mode, prebuilt frames on the TX ring, RX frames straight back to the fill
//!   ring. No stack at all.
//! * `o7s packet|xdp generic|xdp native`: an `EthIpcp` per side with a flow allocated between
//!   them; the sender allocates a pool block per SDU, writes a sequence number into it and hands
//!   it to `EthIpcp::send`, calling `EthIpcp::poll` after each burst (its event loop); the
//!   receiver polls its `EthIpcp` and drains its flow ring, releasing every block.
//!
//! Each session measures, with the same endpoints:
//! 1. one-way throughput for 64-byte and 1400-byte SDUs (raw frames: SDU + the 18-byte DIX
//!    header, i.e. 82 and 1418 bytes), the sender flooding without pacing: the rate is what the
//!    *receiver* delivered over a fixed window after a warm-up; loss is over the whole test
//!    (frames the sender's kernel accepted but the receiving application never got);
//! 2. round-trip time: one 64-byte SDU ping-ponged a few thousand times (the peer echoes it),
//!    both sides busy-polling; p50 and p99.
//!
//! A mode that cannot attach (or fails) is reported with its error and the run goes on.
//!
//! Without a `--bench` argument (`cargo test --all-targets` runs bench targets too) the run is a
//! smoke test of a fraction of a second whose figures mean nothing. Without root it prints one
//! line saying so and returns.
//!
//! The last line is `eth: xdp/packet R1, xdp/raw R2`, where at 64 B R1 = the best o7s XDP mode's
//! packets/s over o7s packet's, and R2 = the same over the best raw AF_XDP mode's. Nothing here
//! asserts on speed.

#[path = "../tests/net/netns.rs"]
#[allow(dead_code, reason = "the bench uses part of the shared test plumbing")]
mod netns;

use std::fmt::Write as _;
use std::num::NonZeroU32;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use netns::{NetnsPair, TestPool, allocate_flow_until, clock, spawn_in_netns};
use o7s_ebpf::{Mode, SteerProgram};
use o7s_pool::{ClassConfig, FRAME_SIZE, Pool, PoolConfig, RingReader};
use o7s_proto::dix::{DEFAULT_ETHERTYPE, HEADER_LEN};
use o7s_testkit::bench::{cpus_for_two, load_average, quantile, us};
use o7s_xdp_ipcp::sys::{self, PoolUmem, RecvMeta};
use o7s_xdp_ipcp::{AnyBackend, EthIpcp, IpcpConfig, ModeChoice, RingSizes};
use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, User};

/// SDU sizes of the throughput tests.
const SIZES: [usize; 2] = [64, 1400];
/// SDU size of the round-trip test.
const RTT_SIZE: usize = 64;
/// SDUs handed to an endpoint per flood call.
const BURST: usize = 256;
/// Where prebuilt raw AF_XDP frames sit in their chunk (as o7s puts them: after the headroom).
const RAW_OFFSET: u64 = 256;
/// Round trips: how long a side busy-polls before it blocks in `poll(2)` (so that a busy machine
/// measures wake-ups rather than time slices).
const SPIN: Duration = Duration::from_micros(50);
/// Longest a side waits for the other at a step before the session is given up.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long and how much to measure.
struct Plan {
    full: bool,
    warmup: Duration,
    window: Duration,
    /// The receiver stops once the sender is done and nothing arrived for this long.
    quiet: Duration,
    rtt_warmup: usize,
    rtt_trips: usize,
    /// A round trip not back after this is counted lost (and the next one starts).
    rtt_timeout: Duration,
    /// AF_XDP ring sizes (o7s and raw alike).
    rings: u32,
    frames: u32,
    small_blocks: u32,
}

const FULL: Plan = Plan {
    full: true,
    warmup: Duration::from_millis(500),
    window: Duration::from_secs(2),
    quiet: Duration::from_millis(100),
    rtt_warmup: 200,
    rtt_trips: 5000,
    rtt_timeout: Duration::from_millis(200),
    rings: 4096,
    frames: 16384,
    small_blocks: 16384,
};

const SMOKE: Plan = Plan {
    full: false,
    warmup: Duration::from_millis(5),
    window: Duration::from_millis(15),
    quiet: Duration::from_millis(10),
    rtt_warmup: 5,
    rtt_trips: 50,
    rtt_timeout: Duration::from_millis(50),
    rings: 512,
    frames: 2048,
    small_blocks: 1024,
};

impl Plan {
    fn get() -> &'static Plan {
        if std::env::args().any(|a| a == "--bench") {
            &FULL
        } else {
            &SMOKE
        }
    }

    /// Frame blocks (the UMEM chunks, RX and raw TX), 2048-byte blocks for the o7s sender's
    /// SDUs (64 + 1400 B fit with head- and tailroom), a few small ones for management frames.
    fn pool_config(&self) -> PoolConfig {
        PoolConfig {
            classes: vec![
                ClassConfig {
                    block_size: 256,
                    blocks: 256,
                },
                ClassConfig {
                    block_size: 2048,
                    blocks: self.small_blocks,
                },
                ClassConfig {
                    block_size: FRAME_SIZE,
                    blocks: self.frames,
                },
            ],
            shards: 4,
            rings: 4,
            ring_capacity: self.rings.max(1024),
            headroom: 256,
            tailroom: 32,
        }
    }
}

/// What runs on the two ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    RawPacket,
    RawXdp(Mode),
    Stack(ModeChoice),
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::RawPacket,
        Kind::RawXdp(Mode::Generic),
        Kind::RawXdp(Mode::Native),
        Kind::Stack(ModeChoice::Packet),
        Kind::Stack(ModeChoice::Generic),
        Kind::Stack(ModeChoice::Native),
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::RawPacket => "raw af_packet",
            Kind::RawXdp(Mode::Generic) => "raw af_xdp generic",
            Kind::RawXdp(Mode::Native) => "raw af_xdp native",
            Kind::Stack(ModeChoice::Packet) => "o7s packet",
            Kind::Stack(ModeChoice::Generic) => "o7s xdp generic",
            Kind::Stack(ModeChoice::Native) => "o7s xdp native",
            Kind::Stack(ModeChoice::Auto) => "o7s auto",
        }
    }

    fn needs_xdp(self) -> bool {
        !matches!(self, Kind::RawPacket | Kind::Stack(ModeChoice::Packet))
    }
}

// ---- endpoints --------------------------------------------------------------------------------

/// One end of a session. Side 0 floods or pings, side 1 sinks or echoes.
trait Endpoint {
    /// Queues up to `n` frames carrying `size`-byte SDUs and pushes them to the kernel; returns
    /// how many were accepted.
    fn flood(&mut self, size: usize, n: usize) -> usize;
    /// Pushes whatever is still queued; true once nothing is left.
    fn drain_tx(&mut self) -> bool;
    /// Takes what has arrived and drops it; returns how many SDUs.
    fn recv(&mut self) -> usize;
    /// Sends every SDU that arrived back to the peer; returns how many.
    fn echo(&mut self) -> usize;
    /// Blocks until something may have arrived or `timeout` passes.
    fn wait(&self, timeout: Duration);
    /// Counters worth printing after the session.
    fn notes(&self) -> String;
}

/// The full o7s stack: an `EthIpcp` with one flow bound to a ring of its pool.
struct Stack<'p> {
    pool: &'p Pool,
    ipcp: EthIpcp<'p>,
    reader: RingReader<'p>,
    eid: u16,
    now: Box<dyn Fn() -> o7s_xdp_ipcp::Instant>,
    seq: u64,
    indices: Vec<u32>,
}

impl<'p> Stack<'p> {
    fn open(
        side: usize,
        pool: &'p Pool,
        iface: &str,
        mode: ModeChoice,
        plan: &Plan,
        ctl: &Ctl,
    ) -> Result<Self, String> {
        let mut config = IpcpConfig::new(iface);
        config.backend.mode = mode;
        config.backend.rings = RingSizes {
            fill: plan.rings,
            completion: plan.rings,
            rx: plan.rings,
            tx: plan.rings,
        };
        let mut ipcp = EthIpcp::open(pool, &config).map_err(|e| format!("EthIpcp::open: {e}"))?;
        if side == 1 {
            ipcp.layer_mut()
                .register(&netns::NAME)
                .map_err(|e| format!("register: {e}"))?;
        }
        let ring = pool
            .ring_create(pool.pid(), pool.pid())
            .map_err(|e| format!("ring_create: {e}"))?;
        let reader = pool
            .ring_reader(ring)
            .map_err(|e| format!("ring_reader: {e}"))?;
        // The query must not go out before the peer's socket is bound (it would be lost and
        // only retried after the 2-second query timeout).
        ctl.opened.fetch_add(1, Ordering::SeqCst);
        if !wait_for(ctl, STEP_TIMEOUT, || ctl.opened.load(Ordering::SeqCst) == 2) {
            return Err("the peer did not open".into());
        }
        let start = Instant::now();
        let now = clock(start);
        let aborted = || ctl.abort.load(Ordering::SeqCst);
        let eid = allocate_flow_until(side, &mut ipcp, ring, &aborted, &now, start + STEP_TIMEOUT);
        Ok(Stack {
            pool,
            ipcp,
            reader,
            eid,
            now: Box::new(now),
            seq: 0,
            indices: vec![0; 256],
        })
    }

    fn poll(&mut self) {
        if let Err(e) = self.ipcp.poll((self.now)()) {
            panic!("EthIpcp::poll: {e}");
        }
    }
}

impl Endpoint for Stack<'_> {
    fn flood(&mut self, size: usize, n: usize) -> usize {
        let mut sent = 0;
        while sent < n {
            let Ok(mut packet) = self.pool.try_alloc(size) else {
                break;
            };
            packet.data_mut()[..8].copy_from_slice(&self.seq.to_le_bytes());
            match self.ipcp.send(self.eid, packet) {
                Ok(()) => {
                    sent += 1;
                    self.seq += 1;
                }
                Err((_, e)) if e.is_would_block() => break,
                Err((_, e)) => panic!("EthIpcp::send: {e}"),
            }
        }
        self.poll();
        sent
    }

    fn drain_tx(&mut self) -> bool {
        self.poll();
        self.ipcp.flush().map(|left| left == 0).unwrap_or(true)
    }

    fn recv(&mut self) -> usize {
        self.poll();
        let mut total = 0;
        loop {
            let got = self
                .reader
                .try_read_batch(&mut self.indices)
                .expect("reading the flow ring");
            for &index in &self.indices[..got] {
                let _ = self.pool.release(index);
            }
            total += got;
            if got < self.indices.len() {
                return total;
            }
        }
    }

    fn echo(&mut self) -> usize {
        self.poll();
        let mut echoed = 0;
        while let Ok(packet) = self.reader.try_read() {
            match self.ipcp.send(self.eid, packet) {
                Ok(()) => echoed += 1,
                Err((_, e)) if e.is_would_block() => {}
                Err((_, e)) => panic!("EthIpcp::send (echo): {e}"),
            }
        }
        if echoed > 0 {
            let _ = self.ipcp.flush();
        }
        echoed
    }

    fn wait(&self, timeout: Duration) {
        self.ipcp.wait(timeout).expect("EthIpcp::wait");
    }

    fn notes(&self) -> String {
        let mut s = format!(
            "{}: ipcp {:?}; backend {:?}",
            self.ipcp.backend_info(),
            self.ipcp.stats(),
            self.ipcp.backend_stats()
        );
        if let AnyBackend::Xdp(x) = self.ipcp.backend() {
            let _ = write!(s, "; kernel {:?}", x.xsk_statistics());
        }
        s
    }
}

/// A frame template: destination, source, EtherType, eid 64, then the SDU (zeros).
fn template(dst: [u8; 6], src: [u8; 6], sdu: usize) -> Vec<u8> {
    let mut f = vec![0u8; HEADER_LEN + sdu];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&DEFAULT_ETHERTYPE.to_be_bytes());
    f[14..16].copy_from_slice(&64u16.to_be_bytes());
    f
}

/// Raw AF_PACKET: one socket bound to the interface and EtherType, batched calls.
struct RawPacket {
    fd: OwnedFd,
    frame: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
    sent: u64,
    received: u64,
}

impl RawPacket {
    fn open(iface: &str, dst: [u8; 6]) -> Result<Self, String> {
        let ifindex = nix::net::if_::if_nametoindex(iface).map_err(|e| format!("{iface}: {e}"))?;
        let fd = sys::packet_socket(ifindex, DEFAULT_ETHERTYPE).map_err(|e| e.to_string())?;
        sys::set_buffers(fd.as_fd(), 8 << 20).map_err(|e| e.to_string())?;
        let src = sys::if_hwaddr(iface).map_err(|e| e.to_string())?;
        Ok(RawPacket {
            fd,
            frame: template(dst, src, SIZES[1]),
            bufs: vec![vec![0; 2048]; sys::MAX_BATCH],
            metas: vec![RecvMeta::default(); sys::MAX_BATCH],
            sent: 0,
            received: 0,
        })
    }

    fn recv_batch(&mut self) -> usize {
        let mut it = self.bufs.iter_mut();
        let mut bufs: [&mut [u8]; sys::MAX_BATCH] =
            std::array::from_fn(|_| it.next().map_or(&mut [][..], |b| &mut b[..]));
        let got = sys::recv_batch(self.fd.as_fd(), &mut bufs, &mut self.metas).expect("recvmmsg");
        self.received += got as u64;
        got
    }
}

impl Endpoint for RawPacket {
    fn flood(&mut self, size: usize, n: usize) -> usize {
        let frame = &self.frame[..HEADER_LEN + size];
        let frames = [frame; sys::MAX_BATCH];
        let mut sent = 0;
        while sent < n {
            let k = (n - sent).min(sys::MAX_BATCH);
            let got = sys::send_batch(self.fd.as_fd(), &frames[..k]).expect("sendmmsg");
            sent += got;
            if got < k {
                break;
            }
        }
        self.sent += sent as u64;
        sent
    }

    fn drain_tx(&mut self) -> bool {
        true
    }

    fn recv(&mut self) -> usize {
        let mut total = 0;
        loop {
            let got = self.recv_batch();
            total += got;
            if got < sys::MAX_BATCH {
                return total;
            }
        }
    }

    fn echo(&mut self) -> usize {
        let got = self.recv_batch();
        if got == 0 {
            return 0;
        }
        for (buf, meta) in self.bufs.iter_mut().zip(&self.metas).take(got) {
            let (dst, src) = buf[..12].split_at_mut(6);
            dst.swap_with_slice(src);
            debug_assert!(meta.len <= buf.len());
        }
        let mut frames: [&[u8]; sys::MAX_BATCH] = [&[]; sys::MAX_BATCH];
        for ((f, b), m) in frames.iter_mut().zip(&self.bufs).zip(&self.metas).take(got) {
            *f = &b[..m.len];
        }
        let mut done = 0;
        let start = Instant::now();
        while done < got && start.elapsed() < Duration::from_millis(100) {
            done += sys::send_batch(self.fd.as_fd(), &frames[done..got]).expect("sendmmsg (echo)");
        }
        done
    }

    fn wait(&self, timeout: Duration) {
        sys::poll_readable(self.fd.as_raw_fd(), timeout).expect("poll");
    }

    fn notes(&self) -> String {
        format!("sent {}, received {}", self.sent, self.received)
    }
}

/// Raw AF_XDP with xdpilone: the pool's data area as UMEM (its blocks only serve as chunks), the
/// steering program attached in `mode`, one socket on queue 0 with RX and TX rings.
///
/// Fields drop in order: the program first, then the rings, the socket and the UMEM.
struct RawXsk<'p> {
    _steer: SteerProgram,
    rx: RingRx,
    tx: RingTx,
    device: DeviceQueue,
    user: User,
    _socket: Socket,
    _umem: PoolUmem<'p>,
    /// Chunk addresses not lent to the kernel, for the fill ring.
    rx_free: Vec<u64>,
    /// Chunks holding the prebuilt frame, not on the TX ring.
    tx_free: Vec<u64>,
    /// By chunk number: true for the prebuilt TX chunks.
    is_tx: Vec<bool>,
    /// RX descriptors being echoed (kept to avoid allocating per call).
    descs: Vec<XdpDesc>,
    chunk: u64,
    rings: u32,
    sent: u64,
    received: u64,
    kicks: u64,
}

fn xsk_err(step: &'static str) -> impl FnOnce(xdpilone::Errno) -> String {
    move |e| format!("AF_XDP {step}: {}", sys::errno(e))
}

impl<'p> RawXsk<'p> {
    fn open(
        pool: &'p Pool,
        iface: &str,
        mode: Mode,
        dst: [u8; 6],
        plan: &Plan,
    ) -> Result<Self, String> {
        let rings = plan.rings;
        let src = sys::if_hwaddr(iface).map_err(|e| e.to_string())?;
        let mut steer = SteerProgram::load(DEFAULT_ETHERTYPE).map_err(|e| e.to_string())?;
        let attached = steer
            .attach(iface, mode)
            .map_err(|e| format!("attach {mode}: {e}"))?;
        if attached != mode {
            return Err(format!("attached in {attached} mode, not {mode}"));
        }
        let umem = PoolUmem::register(pool, rings, rings)
            .map_err(|e| format!("UMEM registration: {e}"))?;
        let chunk = u64::from(pool.umem().chunk_size);
        // Every frame block is a chunk: half of them (at least a fill ring's worth) for RX, the
        // rest hold the prebuilt frame for TX. The blocks stay owned by this process (never
        // released): the pool is only memory here.
        let mut rx_free = Vec::new();
        let mut tx_free = Vec::new();
        let mut is_tx = vec![false; pool.umem().len / chunk as usize];
        let frame = template(dst, src, SIZES[1]);
        while let Ok(mut packet) = pool.try_alloc_frame() {
            let addr = pool
                .umem_addr(packet.index(), 0)
                .map_err(|e| e.to_string())?;
            if rx_free.len() < (2 * rings) as usize {
                rx_free.push(addr);
            } else {
                let off = RAW_OFFSET as usize;
                packet.block_mut()[off..off + frame.len()].copy_from_slice(&frame);
                is_tx[(addr / chunk) as usize] = true;
                tx_free.push(addr);
            }
            let _ = packet.into_index();
        }
        if tx_free.is_empty() {
            return Err("pool too small for raw AF_XDP".into());
        }
        let name = std::ffi::CString::new(iface).map_err(|e| e.to_string())?;
        let mut info = IfInfo::invalid();
        info.from_name(&name).map_err(xsk_err("interface lookup"))?;
        info.set_queue(0);
        let socket = Socket::with_shared(&info, umem.umem()).map_err(xsk_err("socket"))?;
        let mut device = umem.umem().fq_cq(&socket).map_err(xsk_err("fq_cq"))?;
        let user = umem
            .umem()
            .rx_tx(
                &socket,
                &SocketConfig {
                    rx_size: NonZeroU32::new(rings),
                    tx_size: NonZeroU32::new(rings),
                    bind_flags: SocketConfig::XDP_BIND_NEED_WAKEUP,
                },
            )
            .map_err(xsk_err("rx_tx"))?;
        let rx = user.map_rx().map_err(xsk_err("map_rx"))?;
        let tx = user.map_tx().map_err(xsk_err("map_tx"))?;
        {
            let mut fill = device.fill(rings);
            let k = fill.insert(rx_free.iter().rev().copied()) as usize;
            fill.commit();
            rx_free.truncate(rx_free.len() - k);
        }
        umem.umem().bind(&user).map_err(xsk_err("bind"))?;
        steer
            .register_socket(0, user.as_raw_fd())
            .map_err(|e| e.to_string())?;
        Ok(RawXsk {
            _steer: steer,
            rx,
            tx,
            device,
            user,
            _socket: socket,
            _umem: umem,
            rx_free,
            tx_free,
            is_tx,
            descs: Vec::with_capacity(rings as usize),
            chunk,
            rings,
            sent: 0,
            received: 0,
            kicks: 0,
        })
    }

    fn reap(&mut self) {
        let mut done = self.device.complete(self.rings);
        while let Some(addr) = done.read() {
            let chunk = addr - addr % self.chunk;
            if self.is_tx[(chunk / self.chunk) as usize] {
                self.tx_free.push(chunk);
            } else {
                self.rx_free.push(chunk);
            }
        }
        done.release();
    }

    fn refill(&mut self) {
        if !self.rx_free.is_empty() {
            let mut fill = self.device.fill(self.rx_free.len() as u32);
            let k = fill.insert(self.rx_free.iter().rev().copied()) as usize;
            fill.commit();
            let left = self.rx_free.len() - k;
            self.rx_free.truncate(left);
        }
        if self.device.needs_wakeup() {
            sys::xsk_kick_fill(self.device.as_raw_fd());
        }
    }

    fn kick(&mut self) {
        if self.tx.needs_wakeup() {
            self.kicks += 1;
            sys::xsk_kick_tx(self.tx.as_raw_fd()).expect("AF_XDP TX kick");
        }
    }
}

impl Endpoint for RawXsk<'_> {
    fn flood(&mut self, size: usize, n: usize) -> usize {
        self.reap();
        let k = n.min(self.tx_free.len());
        let len = (HEADER_LEN + size) as u32;
        let mut w = self.tx.transmit(k as u32);
        let sent = w.insert(self.tx_free.iter().rev().map(|&chunk| XdpDesc {
            addr: chunk + RAW_OFFSET,
            len,
            options: 0,
        })) as usize;
        w.commit();
        drop(w);
        let left = self.tx_free.len() - sent;
        self.tx_free.truncate(left);
        self.kick();
        self.sent += sent as u64;
        sent
    }

    fn drain_tx(&mut self) -> bool {
        self.reap();
        if self.tx.pending() == 0 {
            return true;
        }
        self.kick();
        false
    }

    fn recv(&mut self) -> usize {
        let mut batch = self.rx.receive(self.rings);
        let mut got = 0;
        while let Some(desc) = batch.read() {
            self.rx_free.push(desc.addr - desc.addr % self.chunk);
            got += 1;
        }
        batch.release();
        drop(batch);
        self.received += got as u64;
        self.refill();
        got
    }

    fn echo(&mut self) -> usize {
        self.reap();
        let mut descs = std::mem::take(&mut self.descs);
        descs.clear();
        {
            let mut batch = self.rx.receive(self.rings);
            while let Some(desc) = batch.read() {
                descs.push(desc);
            }
            batch.release();
        }
        self.received += descs.len() as u64;
        let mut w = self.tx.transmit(descs.len() as u32);
        let sent = w.insert(descs.iter().copied()) as usize;
        w.commit();
        drop(w);
        for d in &descs[sent..] {
            self.rx_free.push(d.addr - d.addr % self.chunk);
        }
        self.descs = descs;
        self.sent += sent as u64;
        if sent > 0 {
            self.kick();
        }
        self.refill();
        sent
    }

    fn wait(&self, timeout: Duration) {
        sys::poll_readable(self.user.as_raw_fd(), timeout).expect("poll");
    }

    fn notes(&self) -> String {
        format!(
            "sent {}, received {}, kicks {}; kernel {:?}",
            self.sent,
            self.received,
            self.kicks,
            self.user.statistics_v2().ok()
        )
    }
}

// ---- sessions -----------------------------------------------------------------------------------

/// What the main thread and the two sides share during one session.
#[derive(Default)]
struct Ctl {
    abort: AtomicBool,
    /// Sides whose `EthIpcp` is open (before the flow allocation).
    opened: AtomicU32,
    /// Sides ready for the steps.
    ready: AtomicU32,
    /// The step the sides are asked to run (1-based); `u32::MAX`: stop.
    go: AtomicU32,
    /// Steps finished, summed over the sides.
    done: AtomicU32,
    stop: AtomicBool,
    tx_done: AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
    rtts: Mutex<Vec<Duration>>,
    rtt_lost: AtomicU64,
}

impl Ctl {
    fn aborted(&self) -> bool {
        self.abort.load(Ordering::SeqCst)
    }
}

/// Sets `abort` if the side panics, so nobody waits for it.
struct AbortOnPanic(Arc<Ctl>);

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.abort.store(true, Ordering::SeqCst);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Throughput(usize),
    RoundTrip,
}

const STEPS: [Step; 3] = [
    Step::Throughput(SIZES[0]),
    Step::Throughput(SIZES[1]),
    Step::RoundTrip,
];

/// One side of a session: opens its endpoint, then runs the steps the main thread starts.
fn side_main(
    side: usize,
    kind: Kind,
    iface: &str,
    peer_mac: [u8; 6],
    ctl: &Arc<Ctl>,
    plan: &'static Plan,
) -> Result<String, String> {
    let _guard = AbortOnPanic(ctl.clone());
    let tp = TestPool::with_config(if side == 0 { "tx" } else { "rx" }, &plan.pool_config());
    let pool = &tp.pool;
    let opened: Result<Box<dyn Endpoint + '_>, String> = match kind {
        Kind::RawPacket => RawPacket::open(iface, peer_mac).map(|e| Box::new(e) as _),
        Kind::RawXdp(mode) => {
            RawXsk::open(pool, iface, mode, peer_mac, plan).map(|e| Box::new(e) as _)
        }
        Kind::Stack(mode) => {
            Stack::open(side, pool, iface, mode, plan, ctl).map(|e| Box::new(e) as _)
        }
    };
    let mut ep = match opened {
        Ok(ep) => ep,
        Err(e) => {
            ctl.abort.store(true, Ordering::SeqCst);
            return Err(format!("side {side}: {e}"));
        }
    };
    ctl.ready.fetch_add(1, Ordering::SeqCst);
    for (i, step) in STEPS.iter().enumerate() {
        let want = i as u32 + 1;
        loop {
            let go = ctl.go.load(Ordering::SeqCst);
            if go == u32::MAX || ctl.aborted() {
                return Ok(ep.notes());
            }
            if go == want {
                break;
            }
            thread::sleep(Duration::from_micros(200));
        }
        match (step, side) {
            (Step::Throughput(size), 0) => flood(&mut *ep, *size, ctl),
            (Step::Throughput(_), _) => sink(&mut *ep, ctl, plan),
            (Step::RoundTrip, 0) => ping(&mut *ep, ctl, plan),
            (Step::RoundTrip, _) => echo(&mut *ep, ctl),
        }
        ctl.done.fetch_add(1, Ordering::SeqCst);
    }
    Ok(ep.notes())
}

fn flood(ep: &mut dyn Endpoint, size: usize, ctl: &Ctl) {
    let mut sent = 0u64;
    while !ctl.stop.load(Ordering::Relaxed) && !ctl.aborted() {
        sent += ep.flood(size, BURST) as u64;
        ctl.sent.store(sent, Ordering::Relaxed);
    }
    let start = Instant::now();
    while !ep.drain_tx() && start.elapsed() < Duration::from_secs(1) {}
    ctl.sent.store(sent, Ordering::SeqCst);
    ctl.tx_done.store(true, Ordering::SeqCst);
}

fn sink(ep: &mut dyn Endpoint, ctl: &Ctl, plan: &Plan) {
    let mut received = 0u64;
    let mut idle_since: Option<Instant> = None;
    while !ctl.aborted() {
        let got = ep.recv();
        if got > 0 {
            received += got as u64;
            ctl.received.store(received, Ordering::Relaxed);
            idle_since = None;
        } else if ctl.tx_done.load(Ordering::SeqCst) {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= plan.quiet {
                break;
            }
        }
    }
    ctl.received.store(received, Ordering::SeqCst);
}

fn ping(ep: &mut dyn Endpoint, ctl: &Ctl, plan: &Plan) {
    let mut rtts = Vec::with_capacity(plan.rtt_trips);
    let mut lost = 0;
    for trip in 0..plan.rtt_warmup + plan.rtt_trips {
        if ctl.aborted() {
            break;
        }
        let start = Instant::now();
        while ep.flood(RTT_SIZE, 1) == 0 {
            assert!(start.elapsed() < STEP_TIMEOUT, "ping: cannot send");
        }
        let back = loop {
            if ep.recv() > 0 {
                break true;
            }
            let waited = start.elapsed();
            if waited > plan.rtt_timeout || ctl.aborted() {
                break false;
            }
            if waited > SPIN {
                ep.wait(Duration::from_millis(1));
            }
        };
        let rtt = start.elapsed();
        if trip >= plan.rtt_warmup {
            if back {
                rtts.push(rtt);
            } else {
                lost += 1;
            }
        }
    }
    ctl.rtt_lost.store(lost, Ordering::SeqCst);
    *ctl.rtts.lock().expect("rtts") = rtts;
    ctl.stop.store(true, Ordering::SeqCst);
}

fn echo(ep: &mut dyn Endpoint, ctl: &Ctl) {
    let mut last = Instant::now();
    while !ctl.stop.load(Ordering::Relaxed) && !ctl.aborted() {
        if ep.echo() > 0 {
            last = Instant::now();
        } else if last.elapsed() > SPIN {
            ep.wait(Duration::from_millis(1));
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Throughput {
    pps: f64,
    sent: u64,
    received: u64,
}

impl Throughput {
    fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.sent.saturating_sub(self.received) as f64 / self.sent as f64
    }
}

#[derive(Debug, Clone)]
struct RoundTrip {
    p50: Duration,
    p99: Duration,
    trips: usize,
    lost: u64,
}

#[derive(Debug, Default)]
struct Session {
    throughput: [Option<Throughput>; 2],
    rtt: Option<RoundTrip>,
    errors: Vec<String>,
    notes: Vec<String>,
}

/// Sleeps `d` unless the session aborts; returns false on abort.
fn sleep_unless_aborted(ctl: &Ctl, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if ctl.aborted() {
            return false;
        }
        thread::sleep(Duration::from_millis(1).min(d));
    }
    true
}

/// Waits until `cond` or abort or `timeout`; returns whether `cond` held.
fn wait_for(ctl: &Ctl, timeout: Duration, cond: impl Fn() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while !cond() {
        if ctl.aborted() || Instant::now() > end {
            return false;
        }
        thread::sleep(Duration::from_micros(500));
    }
    true
}

fn session(kind: Kind, pair: &NetnsPair, macs: [[u8; 6]; 2], plan: &'static Plan) -> Session {
    let ctl = Arc::new(Ctl::default());
    let handles: Vec<_> = (0..2)
        .map(|side| {
            let (iface, ctl) = (pair.veth[side].clone(), ctl.clone());
            let peer_mac = macs[1 - side];
            spawn_in_netns(&pair.ns[side], move || {
                side_main(side, kind, &iface, peer_mac, &ctl, plan)
            })
        })
        .collect();
    let mut out = Session::default();
    if wait_for(&ctl, STEP_TIMEOUT, || ctl.ready.load(Ordering::SeqCst) == 2) {
        for (i, step) in STEPS.iter().enumerate() {
            ctl.stop.store(false, Ordering::SeqCst);
            ctl.tx_done.store(false, Ordering::SeqCst);
            ctl.sent.store(0, Ordering::SeqCst);
            ctl.received.store(0, Ordering::SeqCst);
            ctl.go.store(i as u32 + 1, Ordering::SeqCst);
            let finished = |ctl: &Ctl| {
                let want = 2 * (i as u32 + 1);
                wait_for(ctl, STEP_TIMEOUT, || {
                    ctl.done.load(Ordering::SeqCst) == want
                })
            };
            match *step {
                Step::Throughput(size) => {
                    if !sleep_unless_aborted(&ctl, plan.warmup) {
                        break;
                    }
                    let (t0, r0) = (Instant::now(), ctl.received.load(Ordering::SeqCst));
                    if !sleep_unless_aborted(&ctl, plan.window) {
                        break;
                    }
                    let (t1, r1) = (Instant::now(), ctl.received.load(Ordering::SeqCst));
                    ctl.stop.store(true, Ordering::SeqCst);
                    if !finished(&ctl) {
                        break;
                    }
                    let k = SIZES.iter().position(|&s| s == size).unwrap_or(0);
                    out.throughput[k] = Some(Throughput {
                        pps: (r1 - r0) as f64 / (t1 - t0).as_secs_f64(),
                        sent: ctl.sent.load(Ordering::SeqCst),
                        received: ctl.received.load(Ordering::SeqCst),
                    });
                }
                Step::RoundTrip => {
                    if !finished(&ctl) {
                        break;
                    }
                    let mut rtts = std::mem::take(&mut *ctl.rtts.lock().expect("rtts"));
                    rtts.sort_unstable();
                    if let (Some(p50), Some(p99)) = (quantile(&rtts, 0.50), quantile(&rtts, 0.99)) {
                        out.rtt = Some(RoundTrip {
                            p50,
                            p99,
                            trips: rtts.len(),
                            lost: ctl.rtt_lost.load(Ordering::SeqCst),
                        });
                    }
                }
            }
        }
    }
    if ctl.ready.load(Ordering::SeqCst) == 2 && ctl.done.load(Ordering::SeqCst) < 6 {
        out.errors.push("a step did not finish in time".into());
    }
    ctl.go.store(u32::MAX, Ordering::SeqCst);
    ctl.abort.store(true, Ordering::SeqCst);
    for (side, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(notes)) => out.notes.push(format!("side {side}: {notes}")),
            Ok(Err(e)) => out.errors.push(e),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "panicked".into());
                out.errors.push(format!("side {side} panicked: {msg}"));
            }
        }
    }
    out
}

// ---- report -------------------------------------------------------------------------------------

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".into(),
    }
}

fn main() {
    let plan = Plan::get();
    if !nix::unistd::geteuid().is_root() {
        println!("eth bench skipped: needs root (network namespaces, veth, raw sockets, BPF)");
        return;
    }
    if !netns::can_run("eth bench", false) {
        return;
    }
    let xdp_built = o7s_ebpf::is_built();
    let started = Instant::now();
    let (load, cpus) = (
        load_average(),
        cpus_for_two(if plan.full { 30_000_000 } else { 1_000_000 }),
    );
    let pair = NetnsPair::new(1500);
    let macs = [0, 1].map(|side| {
        let iface = pair.veth[side].clone();
        netns::in_netns(&pair.ns[side], move || sys::if_hwaddr(&iface))
            .unwrap_or_else(|e| panic!("MAC of {}: {e}", pair.veth[side]))
    });
    println!(
        "machine: {} CPUs, load average {load}; two busy threads got {cpus:.2} CPUs' worth \
         (2.00 = both cores free for us)",
        thread::available_parallelism().map_or(0, |n| n.get()),
    );
    if cpus < 1.8 {
        println!(
            "WARNING: something else is using the CPUs; every figure below measures time-slicing \
             as much as the data paths"
        );
    }
    println!(
        "eth bench ({}): veth {} <-> {} (MTU 1500) in namespaces {} / {}; AF_XDP rings {}; \
         warm-up {:?}, window {:?}; {} round trips",
        if plan.full {
            "full"
        } else {
            "smoke run, figures mean nothing"
        },
        pair.veth[0],
        pair.veth[1],
        pair.ns[0],
        pair.ns[1],
        plan.rings,
        plan.warmup,
        plan.window,
        plan.rtt_trips,
    );
    // For profiling one mode: O7S_BENCH_ONLY=<label substring>, e.g. "o7s xdp native".
    let only = std::env::var("O7S_BENCH_ONLY").ok();
    let mut results = Vec::new();
    for kind in Kind::ALL {
        if only.as_deref().is_some_and(|o| !kind.label().contains(o)) {
            continue;
        }
        // The smoke run covers every endpoint and both attach modes, but not all six pairs
        // (loading the BPF object twice per session is most of its time in a debug build).
        if !plan.full
            && matches!(
                kind,
                Kind::RawXdp(Mode::Generic) | Kind::Stack(ModeChoice::Native)
            )
        {
            continue;
        }
        let s = if kind.needs_xdp() && !xdp_built {
            Session {
                errors: vec!["built with O7S_EBPF_SKIP=1: no XDP program".into()],
                ..Session::default()
            }
        } else {
            let t = Instant::now();
            let s = session(kind, &pair, macs, plan);
            println!("  {:<20} done in {:.1?}", kind.label(), t.elapsed());
            s
        };
        for e in &s.errors {
            println!("  {}: cannot measure: {e}", kind.label());
        }
        if !plan.full || std::env::var_os("O7S_BENCH_VERBOSE").is_some() {
            for n in &s.notes {
                println!("    {}: {n}", kind.label());
            }
        }
        results.push((kind, s));
    }
    drop(pair);

    println!();
    println!(
        "{:<20} {:>5} {:>10} {:>8} {:>8} {:>10} {:>10}",
        "mode", "SDU B", "rx pps", "Gbit/s", "loss %", "rtt p50", "rtt p99"
    );
    for (kind, s) in &results {
        for (k, size) in SIZES.iter().enumerate() {
            let (pps, gbps, loss) = match s.throughput[k] {
                Some(t) => (
                    format!("{:.0}", t.pps),
                    format!("{:.3}", t.pps * (*size as f64) * 8.0 / 1e9),
                    format!("{:.2}", t.loss() * 100.0),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let (p50, p99) = match (&s.rtt, *size == RTT_SIZE) {
                (Some(r), true) => (us(r.p50), us(r.p99)),
                _ => ("-".into(), "-".into()),
            };
            println!(
                "{:<20} {:>5} {:>10} {:>8} {:>8} {:>10} {:>10}",
                kind.label(),
                size,
                pps,
                gbps,
                loss,
                p50,
                p99
            );
        }
        if let Some(r) = &s.rtt
            && r.lost > 0
        {
            println!(
                "{:<20} round trips lost: {} of {}",
                "",
                r.lost,
                r.trips as u64 + r.lost
            );
        }
    }

    let pps = |want: &dyn Fn(Kind) -> bool, k: usize| -> Option<(Kind, f64)> {
        results
            .iter()
            .filter(|(kind, _)| want(*kind))
            .filter_map(|(kind, s)| s.throughput[k].map(|t| (*kind, t.pps)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    };
    let is_o7s_xdp = |k: Kind| matches!(k, Kind::Stack(ModeChoice::Generic | ModeChoice::Native));
    let is_raw_xdp = |k: Kind| matches!(k, Kind::RawXdp(_));
    let is_o7s_packet = |k: Kind| k == Kind::Stack(ModeChoice::Packet);
    let is_raw_packet = |k: Kind| k == Kind::RawPacket;
    println!();
    let mut summary = (String::from("n/a"), String::from("n/a"));
    for (k, size) in SIZES.iter().enumerate() {
        let best = pps(&is_o7s_xdp, k);
        let raw = pps(&is_raw_xdp, k);
        let packet = pps(&is_o7s_packet, k).map(|p| p.1);
        let raw_packet = pps(&is_raw_packet, k).map(|p| p.1);
        let same_mode_raw = best.and_then(|(kind, _)| match kind {
            Kind::Stack(ModeChoice::Native) => pps(&|k| k == Kind::RawXdp(Mode::Native), k),
            Kind::Stack(ModeChoice::Generic) => pps(&|k| k == Kind::RawXdp(Mode::Generic), k),
            _ => None,
        });
        let label = |b: Option<(Kind, f64)>| b.map_or("n/a", |(kind, _)| kind.label());
        println!(
            "ratios at {size} B: best o7s xdp ({}) / o7s packet = {}; / best raw af_xdp ({}) = {}; \
             / raw af_xdp same mode = {}; o7s packet / raw af_packet = {}",
            label(best),
            ratio(best.map(|b| b.1), packet),
            label(raw),
            ratio(best.map(|b| b.1), raw.map(|r| r.1)),
            ratio(best.map(|b| b.1), same_mode_raw.map(|r| r.1)),
            ratio(packet, raw_packet),
        );
        if k == 0 {
            summary = (
                ratio(best.map(|b| b.1), packet),
                ratio(best.map(|b| b.1), raw.map(|r| r.1)),
            );
        }
    }
    println!(
        "targets (reported, not asserted): xdp/packet >= 1.5, xdp/raw >= 0.8; total {:.1?}",
        started.elapsed()
    );
    println!("eth: xdp/packet {}, xdp/raw {}", summary.0, summary.1);
}
