//! Helpers for the root-only link tests: skip checks, two network namespaces joined by a veth
//! pair (deleted on drop), threads inside a namespace, pools with unique names (unlinked on drop),
//! and a two-sided traffic scenario: two IPCPs, one per namespace, exchange a name query,
//! allocate a flow and move numbered SDUs both ways, each checked for loss, corruption and order.
//!
//! All traffic stays on the veth pair between the namespaces created here.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::fs::File;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant as StdInstant};

use nix::sched::{CloneFlags, setns};
use o7s_pool::{Access, ClassConfig, FRAME_SIZE, Pool, PoolConfig};
use o7s_proto::eth_mgmt::QosSpec;
use o7s_xdp_ipcp::{
    Backend, BackendInfo, BackendKind, EthIpcp, Event, Instant, IpcpConfig, ModeChoice, QueryStart,
};

/// Returns false, after one line saying why, when the test cannot run here.
pub fn can_run(test: &str, needs_xdp: bool) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping {test}: needs root (network namespaces, raw sockets, BPF)");
        return false;
    }
    if needs_xdp && !o7s_ebpf::is_built() {
        eprintln!("skipping {test}: built with O7S_EBPF_SKIP=1, no XDP object");
        return false;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("skipping {test}: iproute2 `ip` not found");
        return false;
    }
    true
}

/// Runs `args`, panicking with its output if it fails.
pub fn run(args: &[&str]) -> Output {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Two fresh network namespaces joined by a veth pair, both ends up, IPv6 off. Dropping it
/// deletes both namespaces (and so the pair).
pub struct NetnsPair {
    pub ns: [String; 2],
    pub veth: [String; 2],
    created: Vec<String>,
}

/// IPv4 addresses of the two ends, for tests that give the pair addresses.
pub const ADDRS: [&str; 2] = ["10.198.0.1", "10.198.0.2"];

impl NetnsPair {
    pub fn new(mtu: u32) -> NetnsPair {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let mut pair = NetnsPair {
            ns: [
                format!("o7s-xipcp-{pid}-{n}a"),
                format!("o7s-xipcp-{pid}-{n}b"),
            ],
            // At most 15 bytes: "o7x" + pid (≤ 7 digits) + n + side.
            veth: [format!("o7x{pid}{n}a"), format!("o7x{pid}{n}b")],
            created: Vec::new(),
        };
        assert!(pair.veth[0].len() <= 15, "interface name too long");
        for ns in pair.ns.clone() {
            run(&["ip", "netns", "add", &ns]);
            pair.created.push(ns.clone());
            in_netns(&ns, || {
                for knob in ["all", "default"] {
                    let path = format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6");
                    let _ = std::fs::write(path, "1");
                }
            });
        }
        run(&[
            "ip",
            "link",
            "add",
            &pair.veth[0],
            "netns",
            &pair.ns[0],
            "type",
            "veth",
            "peer",
            "name",
            &pair.veth[1],
            "netns",
            &pair.ns[1],
        ]);
        let mtu = mtu.to_string();
        for i in 0..2 {
            run(&[
                "ip",
                "-n",
                &pair.ns[i],
                "link",
                "set",
                &pair.veth[i],
                "mtu",
                &mtu,
                "up",
            ]);
        }
        pair
    }

    /// Gives the ends the addresses [`ADDRS`] (/24).
    pub fn with_addresses(self) -> NetnsPair {
        for ((ns, veth), addr) in self.ns.iter().zip(&self.veth).zip(ADDRS) {
            let addr = format!("{addr}/24");
            run(&["ip", "-n", ns, "addr", "add", &addr, "dev", veth]);
        }
        self
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in self.created.drain(..) {
            match Command::new("ip").args(["netns", "del", &ns]).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "cleanup: ip netns del {ns}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => eprintln!("cleanup: ip netns del {ns}: {e}"),
            }
        }
    }
}

fn enter(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns({path}): {e}"));
}

/// Runs `f` on a new thread inside namespace `ns` and waits for it.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    match spawn_in_netns(ns, f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Starts `f` on a new thread inside namespace `ns`.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let ns = ns.to_owned();
    thread::spawn(move || {
        enter(&ns);
        f()
    })
}

/// A pool under a unique name, unlinked when dropped.
pub struct TestPool {
    pub name: String,
    pub pool: Pool,
}

impl TestPool {
    /// 8192 frame blocks (two 4096-entry fill rings' worth), small classes for management
    /// frames, 16 rings of 4096.
    pub fn new(tag: &str) -> TestPool {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("o7s-xipcp-{}-{n}-{tag}", std::process::id());
        let config = PoolConfig {
            classes: vec![
                ClassConfig {
                    block_size: 256,
                    blocks: 256,
                },
                ClassConfig {
                    block_size: 2048,
                    blocks: 1024,
                },
                ClassConfig {
                    block_size: FRAME_SIZE,
                    blocks: 8192,
                },
            ],
            shards: 4,
            rings: 16,
            ring_capacity: 4096,
            headroom: 256,
            tailroom: 32,
        };
        let pool = Pool::create(&name, &config, Access::Shared)
            .unwrap_or_else(|e| panic!("creating pool {name}: {e}"));
        TestPool { name, pool }
    }

    /// Asserts the pool is consistent and every block is free (after returning this handle's
    /// cached blocks to the free lists).
    pub fn assert_all_free(&self) {
        let report = self.pool.verify();
        assert!(report.is_ok(), "pool {}: {:?}", self.name, report.problems);
        assert_eq!(
            report.owned + report.queued + report.lent + report.held,
            0,
            "pool {} after teardown: {report:?}",
            self.name
        );
        self.pool.flush_caches();
        let report = self.pool.verify();
        assert!(report.is_ok(), "pool {}: {:?}", self.name, report.problems);
        assert_eq!(
            report.free,
            self.pool.layout().total_blocks,
            "pool {} after teardown: {report:?}",
            self.name
        );
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        let _ = Pool::unlink(&self.name);
    }
}

/// Length of SDU `seq`: 64..=1400, mixed.
pub fn sdu_len(seq: u64) -> usize {
    64 + (seq.wrapping_mul(7919) % 1337) as usize
}

/// Writes SDU `seq`'s content: the sequence number, then a pattern that depends on it.
pub fn fill_sdu(seq: u64, data: &mut [u8]) {
    data[..8].copy_from_slice(&seq.to_le_bytes());
    let salt = seq.to_le_bytes()[0] ^ seq.to_le_bytes()[1];
    for (j, b) in data[8..].iter_mut().enumerate() {
        *b = salt.wrapping_add(j as u8);
    }
}

/// Checks SDU `expected`: length, sequence number (in order), pattern.
pub fn check_sdu(expected: u64, data: &[u8]) -> Result<(), String> {
    if data.len() < 8 {
        return Err(format!("SDU {expected}: {} bytes", data.len()));
    }
    let seq = u64::from_le_bytes(data[..8].try_into().unwrap());
    if seq != expected {
        return Err(format!(
            "expected SDU {expected}, got {seq} (lost or reordered)"
        ));
    }
    if data.len() != sdu_len(seq) {
        return Err(format!(
            "SDU {seq}: {} bytes, sent {}",
            data.len(),
            sdu_len(seq)
        ));
    }
    let salt = seq.to_le_bytes()[0] ^ seq.to_le_bytes()[1];
    for (j, &b) in data[8..].iter().enumerate() {
        if b != salt.wrapping_add(j as u8) {
            return Err(format!("SDU {seq}: byte {} corrupted", j + 8));
        }
    }
    Ok(())
}

/// What the two sides share.
pub struct Shared {
    pub barrier: Barrier,
    /// SDUs received (and checked) by each side.
    pub received: [AtomicU64; 2],
    /// SDUs each side sent; final once `send_done` is set.
    pub sent: [AtomicU64; 2],
    pub send_done: [AtomicBool; 2],
    /// Set when both sides are moving data.
    pub data_started: AtomicBool,
    /// While set, senders keep sending after their N SDUs (e.g. until a ping is over).
    pub keep_going: AtomicBool,
    /// Set by a side that fails, so the other gives up at once.
    pub abort: AtomicBool,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            barrier: Barrier::new(2),
            received: [AtomicU64::new(0), AtomicU64::new(0)],
            sent: [AtomicU64::new(0), AtomicU64::new(0)],
            send_done: [AtomicBool::new(false), AtomicBool::new(false)],
            data_started: AtomicBool::new(false),
            keep_going: AtomicBool::new(false),
            abort: AtomicBool::new(false),
        })
    }
}

/// Sets `abort` if the side panics.
pub struct AbortOnPanic(pub Arc<Shared>);

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.abort.store(true, Ordering::SeqCst);
        }
    }
}

/// What one side saw.
#[derive(Debug, Clone)]
pub struct SideReport {
    pub backend: BackendInfo,
    pub sent: u64,
    pub received: u64,
    pub data_time: Duration,
}

/// SDUs sent per burst; the next burst waits until the peer has received this one.
pub const BURST: u64 = 256;
/// The name side 1 registers.
pub const NAME: [u8; 32] = [0x42; 32];

pub fn check_abort(shared: &Shared, what: &str) {
    assert!(
        !shared.abort.load(Ordering::SeqCst),
        "the other side failed ({what})"
    );
}

/// Milliseconds since `start`, as the layer's clock.
pub fn clock(start: StdInstant) -> impl Fn() -> Instant {
    move || Instant::from_millis(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX))
}

/// The control phase: side 0 queries [`NAME`] and allocates a flow to it, side 1 (which must
/// have registered it) accepts. Both bind the flow to `ring`. Returns the flow's eid.
pub fn allocate_flow(
    side: usize,
    ipcp: &mut EthIpcp<'_>,
    ring: u32,
    shared: &Shared,
    now: &dyn Fn() -> Instant,
    give_up: StdInstant,
) -> u16 {
    if side == 0 {
        let q = ipcp.layer_mut().query(&NAME, now()).expect("query");
        assert!(matches!(q, QueryStart::Pending(_)), "{q:?}");
    }
    let mut eid = None;
    while eid.is_none() {
        check_abort(shared, "allocation");
        assert!(
            StdInstant::now() < give_up,
            "side {side}: no flow allocated in time"
        );
        ipcp.poll(now()).expect("poll");
        while let Some(event) = ipcp.layer_mut().poll_event() {
            match event {
                Event::QueryResolved { .. } => {
                    let e = ipcp
                        .layer_mut()
                        .flow_alloc(&NAME, QosSpec::default(), b"")
                        .expect("flow_alloc");
                    ipcp.bind_flow(e, ring).expect("bind_flow");
                }
                Event::QueryTimedOut { .. } => {
                    ipcp.layer_mut().query(&NAME, now()).expect("query again");
                }
                Event::FlowReqArrived { eid: e, .. } => {
                    ipcp.bind_flow(e, ring).expect("bind_flow");
                    ipcp.layer_mut().flow_accept(e, b"").expect("flow_accept");
                    eid = Some(e);
                }
                Event::FlowAllocated { eid: e, .. } => eid = Some(e),
                Event::FlowAllocFailed { response, .. } => panic!("flow refused: {response}"),
            }
        }
        ipcp.wait(Duration::from_millis(2)).expect("wait");
    }
    // The acceptor's FLOW_REPLY goes out on the next poll.
    ipcp.poll(now()).expect("poll");
    eid.unwrap()
}

/// One side of the scenario; `side` 0 queries and allocates, 1 registers and accepts.
#[allow(clippy::too_many_lines, reason = "one linear script")]
pub fn side(
    side: usize,
    iface: &str,
    mode: ModeChoice,
    n: u64,
    shared: &Arc<Shared>,
    deadline: Duration,
) -> SideReport {
    let _guard = AbortOnPanic(shared.clone());
    let peer = 1 - side;
    let tp = TestPool::new(if side == 0 { "a" } else { "b" });
    let pool = &tp.pool;
    let mut config = IpcpConfig::new(iface);
    config.backend.mode = mode;
    let report;
    {
        let mut ipcp = EthIpcp::open(pool, &config)
            .unwrap_or_else(|e| panic!("side {side}: opening {iface} in {mode:?}: {e}"));
        let backend = ipcp.backend_info();
        eprintln!("side {side}: {iface}: {backend}");
        if side == 1 {
            ipcp.layer_mut().register(&NAME).expect("register");
        }
        let ring = pool
            .ring_create(pool.pid(), pool.pid())
            .expect("ring_create");
        let reader = pool.ring_reader(ring).expect("ring_reader");
        let start = StdInstant::now();
        let now = clock(start);
        let give_up = start + deadline;
        shared.barrier.wait();

        let eid = allocate_flow(side, &mut ipcp, ring, shared, &now, give_up);
        // The acceptor's FLOW_REPLY goes out on the next poll.
        ipcp.poll(now()).expect("poll");
        shared.barrier.wait();
        shared.data_started.store(true, Ordering::SeqCst);

        // ---- data: bursts of BURST SDUs, each burst after the peer got the previous one ----
        let data_start = StdInstant::now();
        let (mut sent, mut received) = (0u64, 0u64);
        let mut indices = [0u32; 256];
        loop {
            check_abort(shared, "data");
            let more = sent < n || shared.keep_going.load(Ordering::SeqCst);
            if !more && !shared.send_done[side].load(Ordering::SeqCst) {
                shared.send_done[side].store(true, Ordering::SeqCst);
            }
            if more && shared.received[peer].load(Ordering::Acquire) == sent {
                let burst_end = if sent < n {
                    (sent + BURST).min(n)
                } else {
                    sent + BURST
                };
                while sent < burst_end {
                    let len = sdu_len(sent);
                    let mut packet = pool.try_alloc(len).expect("try_alloc SDU");
                    fill_sdu(sent, packet.data_mut());
                    loop {
                        match ipcp.send(eid, packet) {
                            Ok(()) => break,
                            Err((p, e)) if e.is_would_block() => {
                                packet = p;
                                ipcp.flush().expect("flush");
                            }
                            Err((_, e)) => panic!("side {side}: send: {e}"),
                        }
                    }
                    sent += 1;
                }
                shared.sent[side].store(sent, Ordering::SeqCst);
            }
            let activity = ipcp.poll(now()).expect("poll");
            loop {
                let got = reader.try_read_batch(&mut indices).expect("read ring");
                for &index in &indices[..got] {
                    let packet = pool.packet(index).expect("packet");
                    if let Err(e) = check_sdu(received, packet.data()) {
                        panic!("side {side}: {e}; ipcp {:?}", ipcp.stats());
                    }
                    received += 1;
                }
                if got == 0 {
                    break;
                }
                shared.received[side].store(received, Ordering::Release);
            }
            let peer_done = shared.send_done[peer].load(Ordering::SeqCst);
            if shared.send_done[side].load(Ordering::SeqCst)
                && peer_done
                && received == shared.sent[peer].load(Ordering::SeqCst)
            {
                break;
            }
            if StdInstant::now() > give_up {
                panic!(
                    "side {side}: timed out: sent {sent}, received {received} of {} \
                     (peer sees {}); ipcp {:?}; layer {:?}; backend {:?}",
                    shared.sent[peer].load(Ordering::SeqCst),
                    shared.received[peer].load(Ordering::SeqCst),
                    ipcp.stats(),
                    ipcp.layer().stats(),
                    ipcp.backend().stats(),
                );
            }
            if activity.is_idle() {
                ipcp.wait(Duration::from_millis(1)).expect("wait");
            }
        }
        let data_time = data_start.elapsed();
        let stats = ipcp.stats();
        assert_eq!(stats.ring_full, 0, "side {side}: {stats:?}");
        if let o7s_xdp_ipcp::AnyBackend::Xdp(x) = ipcp.backend() {
            eprintln!(
                "side {side}: kernel XSK statistics {:?}",
                x.xsk_statistics()
            );
        }
        eprintln!(
            "side {side}: {backend}: sent {sent}, received {received} in {data_time:.2?}; \
             backend {:?}",
            ipcp.backend().stats()
        );
        report = SideReport {
            backend,
            sent,
            received,
            data_time,
        };
        // Both sides finish their traffic before either tears down.
        shared.barrier.wait();
        assert_eq!(ipcp.unbind_flow(eid), Some(ring));
        drop(ipcp);
        pool.ring_destroy(ring).expect("ring_destroy");
    }
    tp.assert_all_free();
    report
}

/// Runs the scenario on a fresh veth pair: side 0 in `modes[0]`, side 1 in `modes[1]`, `n`
/// SDUs each way. `during` runs on the calling thread once data moves (e.g. a ping), with
/// `keep_going` set until it returns.
pub fn exchange(
    modes: [ModeChoice; 2],
    n: u64,
    pair: &NetnsPair,
    during: Option<Box<dyn FnOnce() + Send>>,
) -> [SideReport; 2] {
    let shared = Shared::new();
    shared.keep_going.store(during.is_some(), Ordering::SeqCst);
    let deadline = Duration::from_secs(120);
    let handles: Vec<_> = (0..2)
        .map(|s| {
            let (iface, mode, shared) = (pair.veth[s].clone(), modes[s], shared.clone());
            spawn_in_netns(&pair.ns[s], move || {
                side(s, &iface, mode, n, &shared, deadline)
            })
        })
        .collect();
    if let Some(during) = during {
        let start = StdInstant::now();
        while !shared.data_started.load(Ordering::SeqCst) && start.elapsed() < deadline {
            if shared.abort.load(Ordering::SeqCst) {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(during));
        shared.keep_going.store(false, Ordering::SeqCst);
        if let Err(panic) = result {
            shared.abort.store(true, Ordering::SeqCst);
            for h in handles {
                let _ = h.join();
            }
            std::panic::resume_unwind(panic);
        }
    }
    let mut reports = Vec::new();
    let mut failure = None;
    for h in handles {
        match h.join() {
            Ok(r) => reports.push(r),
            Err(p) => {
                failure.get_or_insert(p);
            }
        }
    }
    if let Some(p) = failure {
        std::panic::resume_unwind(p);
    }
    let [a, b]: [SideReport; 2] = reports.try_into().unwrap();
    assert_eq!(a.received, b.sent);
    assert_eq!(b.received, a.sent);
    [a, b]
}

/// The backend kind a mode should give on veth.
pub fn expected_kind(mode: ModeChoice) -> BackendKind {
    match mode {
        ModeChoice::Packet => BackendKind::Packet,
        ModeChoice::Generic => BackendKind::Xdp(o7s_ebpf::Mode::Generic),
        ModeChoice::Native | ModeChoice::Auto => BackendKind::Xdp(o7s_ebpf::Mode::Native),
    }
}

/// Prints a one-line summary with the rate.
pub fn summary(test: &str, reports: &[SideReport; 2]) {
    let secs = reports[0].data_time.max(reports[1].data_time).as_secs_f64();
    let total = reports[0].sent + reports[1].sent;
    eprintln!(
        "{test}: {} <-> {}: {total} SDUs in {secs:.2} s = {:.0} SDUs/s (both ways, debug build)",
        reports[0].backend,
        reports[1].backend,
        total as f64 / secs
    );
}
