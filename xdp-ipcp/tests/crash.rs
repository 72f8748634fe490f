//! A layer process killed with SIGKILL in the middle of a flood leaves nothing behind: no XDP
//! program on its interface, and once the pool reclaims the dead pid's blocks (including those
//! it had lent to the kernel) the pool verifies and every block is free. A new instance then
//! attaches at once.
//!
//! The layer is the `o7s-eth-layer` binary (an echo server on one interface), started with
//! `ip netns exec` in one namespace of a fresh veth pair; the peer floods it from the other
//! namespace over AF_PACKET with this process's `EthIpcp`. One test per mode of the killed
//! process: native XDP, generic XDP, AF_PACKET.
//!
//! Needs root; without it each test prints why and returns.

mod net;

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant as StdInstant};

use net::{NetnsPair, Shared, TestPool, allocate_flow, can_run, clock, fill_sdu, run, sdu_len};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use o7s_xdp_ipcp::{EthIpcp, IpcpConfig, ModeChoice};

/// The layer binary under test.
const LAYER: &str = env!("CARGO_BIN_EXE_o7s-eth-layer");

/// How long a restarted layer may take to attach and say "ready", counted from the kill.
const RESTART_WITHIN: Duration = Duration::from_secs(2);

/// A running `o7s-eth-layer`, killed (and reaped) when dropped.
struct LayerProcess {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl LayerProcess {
    fn spawn(ns: &str, iface: &str, pool: &str, mode: &str) -> LayerProcess {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, LAYER, iface, pool, mode])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {LAYER}: {e}"));
        let (tx, lines) = channel();
        let stdout = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        LayerProcess {
            child,
            lines,
            stderr,
        }
    }

    /// `ip netns exec` execs the command in place, so this is the layer's own pid (the pid
    /// its pool handle records).
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `deadline` for the one line `ready <mode>`.
    fn wait_ready(&mut self, mode: &str, deadline: StdInstant) {
        let timeout = deadline.saturating_duration_since(StdInstant::now());
        match self.lines.recv_timeout(timeout) {
            Ok(line) => assert_eq!(line, format!("ready {mode}"), "{}", self.stderr()),
            Err(RecvTimeoutError::Timeout) => {
                panic!("layer not ready in time; stderr: {}", self.stderr())
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait();
                // Give the stderr thread a moment to collect the last words.
                thread::sleep(Duration::from_millis(50));
                panic!("layer exited ({status:?}): {}", self.stderr())
            }
        }
    }

    /// SIGKILL, then reap: once `wait` returns, the kernel has closed every file of the
    /// process (its AF_XDP sockets, its bpf_link), since a task releases its files before it
    /// becomes a zombie.
    fn kill(&mut self) -> StdInstant {
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGKILL).expect("kill -9");
        let killed = StdInstant::now();
        let status = self.child.wait().expect("waitpid");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "{status:?}: {}",
            self.stderr()
        );
        killed
    }
}

impl Drop for LayerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The peer: an `EthIpcp` over AF_PACKET in the other namespace that allocates a flow to the
/// layer and sends SDUs as fast as it can, counting the echoes, until stopped.
struct Flood {
    stop: Arc<AtomicBool>,
    echoes: Arc<AtomicU64>,
    handle: Option<JoinHandle<u64>>,
}

impl Flood {
    fn start(ns: &str, iface: &str) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let echoes = Arc::new(AtomicU64::new(0));
        let (iface, stop2, echoes2) = (iface.to_owned(), stop.clone(), echoes.clone());
        let handle = net::spawn_in_netns(ns, move || flood(&iface, &stop2, &echoes2));
        Flood {
            stop,
            echoes,
            handle: Some(handle),
        }
    }

    /// Waits until at least `n` SDUs came back.
    fn wait_echoes(&self, n: u64, within: Duration) {
        let start = StdInstant::now();
        while self.echoes.load(Ordering::Relaxed) < n {
            assert!(
                self.handle.as_ref().is_some_and(|h| !h.is_finished()),
                "the flood thread ended"
            );
            assert!(
                start.elapsed() < within,
                "only {} echoes in {within:?}",
                self.echoes.load(Ordering::Relaxed)
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the flood; returns how many SDUs it sent.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(sent)) => sent,
            Some(Err(p)) => std::panic::resume_unwind(p),
            None => 0,
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn flood(iface: &str, stop: &AtomicBool, echoes: &AtomicU64) -> u64 {
    let tp = TestPool::new("peer");
    let pool = &tp.pool;
    let mut config = IpcpConfig::new(iface);
    config.backend.mode = ModeChoice::Packet;
    let mut sent = 0u64;
    {
        let mut ipcp = EthIpcp::open(pool, &config).expect("open the peer");
        let ring = pool.ring_create(pool.pid(), pool.pid()).expect("ring");
        let reader = pool.ring_reader(ring).expect("reader");
        let start = StdInstant::now();
        let now = clock(start);
        let shared = Shared::new();
        let eid = allocate_flow(
            0,
            &mut ipcp,
            ring,
            &shared,
            &now,
            start + Duration::from_secs(20),
        );
        let mut indices = [0u32; 256];
        while !stop.load(Ordering::SeqCst) {
            for _ in 0..64 {
                let Ok(mut packet) = pool.try_alloc(sdu_len(sent)) else {
                    break;
                };
                fill_sdu(sent, packet.data_mut());
                match ipcp.send(eid, packet) {
                    Ok(()) => sent += 1,
                    Err((_, e)) if e.is_would_block() => break,
                    Err((_, e)) => panic!("peer send: {e}"),
                }
            }
            ipcp.poll(now()).expect("peer poll");
            let got = reader.try_read_batch(&mut indices).expect("peer ring");
            for &index in &indices[..got] {
                drop(pool.packet(index).expect("echoed packet"));
            }
            echoes.fetch_add(got as u64, Ordering::Relaxed);
            thread::yield_now();
        }
        ipcp.unbind_flow(eid);
        drop(ipcp);
        pool.ring_destroy(ring).expect("ring_destroy");
    }
    tp.assert_all_free();
    sent
}

/// Asserts no XDP program is attached to `iface` in `ns`.
fn assert_no_xdp(ns: &str, iface: &str) {
    let out = run(&["ip", "-n", ns, "-d", "link", "show", "dev", iface]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("prog/xdp"),
        "XDP program left behind: {text}"
    );
}

/// Asserts an XDP program is attached to `iface` in `ns`.
fn assert_xdp(ns: &str, iface: &str) {
    let out = run(&["ip", "-n", ns, "-d", "link", "show", "dev", iface]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("prog/xdp"), "no XDP program attached: {text}");
}

/// Returns the dead layer's blocks to the pool and checks that the pool is whole again.
fn reclaim_after_death(tp: &TestPool, pid: u32, xdp: bool) {
    let pool = &tp.pool;
    let before = pool.verify();
    assert!(
        before.owned + before.lent + before.queued + before.cached > 0,
        "the layer held no block at all when killed: {before:?}"
    );
    let reclaimed = pool.reclaim(pid);
    // Safe only now that `pid` is dead and reaped: blocks it lent to the kernel (its fill ring,
    // frames in flight on RX, frames on TX or completion) were registered through its AF_XDP
    // sockets, and the kernel writes into (or reads from) them only while those sockets are
    // bound. The process's death closed them: socket release unbinds from the device and waits
    // (synchronize_net) for any RX or TX in flight, and the bpf_link's close detached the
    // program, so nothing redirects into this UMEM any more. While the process lived, freeing
    // those blocks would let the kernel write a frame into a block someone else now owns. No
    // other process shares these sockets (the pool's UMEM is registered per socket), so the
    // dead pid's `Kernel` blocks are free for good.
    let lent = pool.reclaim_lent(pid);
    eprintln!(
        "reclaimed after the kill: {reclaimed} blocks, {lent} lent to the kernel (before: \
         {} owned, {} lent, {} queued, {} cached; {} problems, all about pid {pid})",
        before.owned,
        before.lent,
        before.queued,
        before.cached,
        before.problems.len()
    );
    assert!(
        before
            .problems
            .iter()
            .all(|p| p.ends_with(&format!("dead process {pid}"))),
        "{:?}",
        before.problems
    );
    if xdp {
        assert!(lent > 0, "an AF_XDP layer always has its fill ring lent");
    } else {
        assert_eq!(lent, 0);
    }
    let report = pool.verify();
    assert!(report.is_ok(), "{:?}", report.problems);
    tp.assert_all_free();
    // The layer's flow rings (both ends were the dead pid) are drained and flagged; free them
    // as the IRMd would.
    let mut rings = 0;
    for r in 0..pool.layout().config.rings {
        if let Ok(flags) = pool.ring_flags(r) {
            assert!(flags.0 & o7s_pool::RingFlags::PEER_GONE != 0, "ring {r}");
            assert_eq!(pool.ring_destroy(r).expect("ring_destroy"), 0);
            rings += 1;
        }
    }
    assert!(rings > 0, "the layer had a flow ring");
    tp.assert_all_free();
}

fn crash_and_restart(test: &str, mode: &str) {
    let xdp = mode != "packet";
    if !can_run(test, xdp) {
        return;
    }
    let started = StdInstant::now();
    let pair = NetnsPair::new(1500);
    let tp = TestPool::new("crash");
    let (ns, iface) = (pair.ns[1].clone(), pair.veth[1].clone());

    let mut layer = LayerProcess::spawn(&ns, &iface, &tp.name, mode);
    layer.wait_ready(mode, StdInstant::now() + Duration::from_secs(20));
    if xdp {
        assert_xdp(&ns, &iface);
    }
    for round in 0..2 {
        // Traffic both ways, still running at the kill.
        let flood = Flood::start(&pair.ns[0], &pair.veth[0]);
        flood.wait_echoes(2000, Duration::from_secs(30));
        let pid = layer.pid();
        let killed = layer.kill();
        assert_no_xdp(&ns, &iface);
        reclaim_after_death(&tp, pid, xdp);
        let checked = killed.elapsed();

        // The flood goes on while the new instance starts (it drops the old flow's frames).
        let mut next = LayerProcess::spawn(&ns, &iface, &tp.name, mode);
        next.wait_ready(mode, killed + RESTART_WITHIN);
        let restart = killed.elapsed();
        assert!(restart < RESTART_WITHIN, "restart took {restart:?}");
        if xdp {
            assert_xdp(&ns, &iface);
        }
        let sent = flood.stop();
        eprintln!(
            "{test}: round {round}: killed pid {pid} during a flood ({sent} SDUs sent); \
             reclaimed and checked {checked:.2?} after the kill, new instance ready \
             {restart:.2?} after the kill"
        );
        layer = next;
    }
    // The last instance serves a new peer, then goes the same way.
    let flood = Flood::start(&pair.ns[0], &pair.veth[0]);
    flood.wait_echoes(1000, Duration::from_secs(30));
    let pid = layer.pid();
    layer.kill();
    flood.stop();
    assert_no_xdp(&ns, &iface);
    reclaim_after_death(&tp, pid, xdp);
    eprintln!("{test}: done in {:.2?}", started.elapsed());
}

#[test]
fn killed_native_xdp_layer_leaves_nothing_behind() {
    crash_and_restart("killed_native_xdp_layer_leaves_nothing_behind", "native");
}

#[test]
fn killed_generic_xdp_layer_leaves_nothing_behind() {
    crash_and_restart("killed_generic_xdp_layer_leaves_nothing_behind", "generic");
}

#[test]
fn killed_packet_layer_leaves_nothing_behind() {
    crash_and_restart("killed_packet_layer_leaves_nothing_behind", "packet");
}
