//! Helpers for the root-only link tests: the namespace plumbing of [`netns`] (skip checks, two
//! network namespaces joined by a veth pair, threads inside a namespace, pools with unique names,
//! flow allocation; shared with `benches/eth.rs`), a two-sided traffic scenario: two IPCPs,
//! one per namespace, exchange a name query, allocate a flow and move numbered SDUs both ways,
//! each checked for loss, corruption and order; and, for the tests that run `ipcpd-eth-dix`
//! under a real IRMd, the binaries' directory ([`bin_dir`]) and frames sent by a raw socket
//! ([`inject`]).
//!
//! All traffic stays on the veth pair between the namespaces created here.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod netns;

use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant as StdInstant};

use o7s_proto::dix;
use o7s_testkit::{TIMEOUT, build_bins};
use o7s_xdp_ipcp::{
    Backend, BackendInfo, BackendKind, EthIpcp, Instant, IpcpConfig, ModeChoice, sys,
};

#[allow(unused_imports, reason = "each test binary uses a different subset")]
pub use netns::{
    ADDRS, NAME, NetnsPair, TestPool, allocate_flow_until, can_run, clock, in_netns, run,
    spawn_in_netns,
};

/// `irmd`, as [`bin_dir`] builds it.
pub const IRMD: (&str, &str) = ("o7s-irmd", "irmd");

/// The directory of `ipcpd-eth-dix`, where an IRMd looks for it, with `bins` (package, binary)
/// of other packages built next to it (`cargo build`, a no-op when up to date).
pub fn bin_dir(bins: &[(&str, &str)]) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_ipcpd-eth-dix"))
        .parent()
        .expect("ipcpd-eth-dix has a directory");
    build_bins(dir, bins)
}

/// Sends `frames` on `dev` from namespace `ns`, through a raw socket.
pub fn inject(ns: &str, dev: &str, frames: Vec<Vec<u8>>) {
    let dev = dev.to_owned();
    in_netns(ns, move || {
        let ifindex = nix::net::if_::if_nametoindex(dev.as_str()).expect("ifindex");
        let raw = sys::packet_socket(ifindex, dix::DEFAULT_ETHERTYPE).expect("raw socket");
        for frame in &frames {
            let deadline = StdInstant::now() + TIMEOUT;
            while sys::send_batch(raw.as_fd(), &[&frame[..]]).expect("send") == 0 {
                assert!(StdInstant::now() < deadline, "the kernel takes no frame");
                thread::sleep(Duration::from_millis(1));
            }
        }
    });
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

pub fn check_abort(shared: &Shared, what: &str) {
    assert!(
        !shared.abort.load(Ordering::SeqCst),
        "the other side failed ({what})"
    );
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
    let aborted = || shared.abort.load(Ordering::SeqCst);
    allocate_flow_until(side, ipcp, ring, &aborted, now, give_up)
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
