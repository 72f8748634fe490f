//! Pool benchmark (custom harness, `cargo xtask bench pool`): every figure next to its
//! baseline, in one run.
//!
//! 1. alloc+free pairs in one process: `try_alloc(64)` then drop, against pop+push on an
//!    in-process `Mutex<Vec<u32>>` free list.
//! 2. alloc+free pairs with two processes on the same class at once (the bench binary re-runs
//!    itself as the second process, selected by `O7S_BENCH_CHILD`), against two threads sharing
//!    one `Mutex<Vec<u32>>`.
//! 3. A block index ping-pong between two processes over two flow rings, against the same
//!    4-byte ping-pong over two pipes (the child's stdin and stdout).
//!
//! Extra rows, for reading the figures: in 2., the two processes once more while the child
//! keeps a few blocks allocated (so the two sides' hot descriptors sit apart), and both on one
//! home shard; in 3., one atomic word bounced between two threads, the floor for any
//! shared-memory ping-pong on this machine. The header line reports
//! how many CPUs two busy threads really get: every two-sided figure depends on it.
//!
//! Without a `--bench` argument (`cargo test --all-targets` runs bench targets too) the run is a
//! smoke test of a fraction of a second whose figures mean nothing.
//!
//! The last line is the one-line summary `pool: alloc/mutex-baseline R1, ring/pipe R2`, where
//! R1 = pool ns per pair / mutex ns per pair (lower is better) and R2 = ring messages/s / pipe
//! messages/s (higher is better). Nothing here asserts on speed.

use std::fs::File;
use std::hint::black_box;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use o7s_pool::{Access, Pool, PoolConfig};
use o7s_testkit::bench::{cpus_for_two, load_average, quantile};

/// Set (to anything) in the re-executed child.
const CHILD_ENV: &str = "O7S_BENCH_CHILD";
/// The pool's shared-memory name, for the child.
const POOL_ENV: &str = "O7S_BENCH_POOL";
/// Payload bytes per allocation (the class is chosen with head- and tailroom added).
const PAYLOAD: usize = 64;

/// How long and how often to measure. `cargo bench` passes `--bench` and gets the full run;
/// without it (`cargo test --all-targets` runs this binary too) a tiny smoke run only checks
/// that every path works.
struct Plan {
    /// Repetitions of every measurement; the best one is reported.
    reps: usize,
    /// Pairs per repetition in the single-process test.
    single_pairs: u64,
    /// Length of each two-sided alloc+free window.
    window: Duration,
    /// Measured time per ping-pong repetition, after `warmup_trips` unmeasured round trips.
    pingpong_window: Duration,
    /// The same for the reference row (one atomic bounced between two threads).
    atomic_window: Duration,
    warmup_trips: usize,
}

const FULL: Plan = Plan {
    reps: 3,
    single_pairs: 5_000_000,
    window: Duration::from_millis(400),
    pingpong_window: Duration::from_millis(700),
    atomic_window: Duration::from_millis(300),
    warmup_trips: 2_000,
};

const SMOKE: Plan = Plan {
    reps: 1,
    single_pairs: 10_000,
    window: Duration::from_millis(10),
    pingpong_window: Duration::from_millis(10),
    atomic_window: Duration::from_millis(10),
    warmup_trips: 10,
};

static PLAN: std::sync::OnceLock<&'static Plan> = std::sync::OnceLock::new();

fn plan() -> &'static Plan {
    PLAN.get_or_init(|| {
        if std::env::args().any(|a| a == "--bench") {
            &FULL
        } else {
            &SMOKE
        }
    })
}

/// The ping-pong word that ends a repetition (echoed, then the child stops).
const STOP: [u8; 4] = u32::MAX.to_le_bytes();
/// How long either side waits on a ring before deciding its peer is gone.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Blocks the child keeps allocated in the "separate descriptor lines" case: 8 blocks of its
/// shard are 32 indices, i.e. 8 descriptor cache lines, away from the top of the stack.
const HOLD_APART: usize = 8;

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child_main();
    } else {
        parent_main();
    }
}

// ---- shared loops -----------------------------------------------------------------------------

/// `pairs` alloc+free pairs on the pool; returns the elapsed time.
fn pool_pairs(pool: &Pool, pairs: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..pairs {
        let packet = pool
            .try_alloc(PAYLOAD)
            .expect("try_alloc(64) on the bench pool failed");
        black_box(&packet);
        drop(packet);
    }
    start.elapsed()
}

/// alloc+free pairs on the pool for about `window`; returns (pairs, elapsed).
fn pool_window(pool: &Pool, window: Duration) -> (u64, Duration) {
    let start = Instant::now();
    let mut pairs = 0;
    loop {
        for _ in 0..1024 {
            let packet = pool
                .try_alloc(PAYLOAD)
                .expect("try_alloc(64) on the bench pool failed");
            black_box(&packet);
            drop(packet);
        }
        pairs += 1024;
        let elapsed = start.elapsed();
        if elapsed >= window {
            return (pairs, elapsed);
        }
    }
}

/// One pop+push pair on a mutex-protected free list: two lock acquisitions, like the pool's
/// alloc and free.
#[inline(always)]
fn mutex_pair(list: &Mutex<Vec<u32>>) {
    let index = list
        .lock()
        .expect("baseline mutex poisoned")
        .pop()
        .expect("baseline list empty");
    black_box(index);
    list.lock().expect("baseline mutex poisoned").push(index);
}

fn mutex_pairs(list: &Mutex<Vec<u32>>, pairs: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..pairs {
        mutex_pair(list);
    }
    start.elapsed()
}

fn mutex_window(list: &Mutex<Vec<u32>>, window: Duration) -> (u64, Duration) {
    let start = Instant::now();
    let mut pairs = 0;
    loop {
        for _ in 0..1024 {
            mutex_pair(list);
        }
        pairs += 1024;
        let elapsed = start.elapsed();
        if elapsed >= window {
            return (pairs, elapsed);
        }
    }
}

// ---- the child process ------------------------------------------------------------------------

/// The second process: opens the pool by name, then obeys one-line commands on stdin and
/// answers on stdout (the pipe ping-pong uses the same two pipes).
fn child_main() {
    let name = std::env::var(POOL_ENV).expect("O7S_BENCH_POOL not set for the bench child");
    let pool = Pool::open(&name).expect("bench child could not open the pool");
    let stdin = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("bench child: dup(stdin)");
    let stdout = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .expect("bench child: dup(stdout)");
    let mut input = BufReader::new(File::from(stdin));
    let mut out = File::from(stdout);
    let reply = |out: &mut File, line: String| {
        out.write_all(format!("{line}\n").as_bytes())
            .expect("bench child: write to parent");
    };
    reply(&mut out, format!("ready {}", pool.pid()));
    let mut line = String::new();
    loop {
        line.clear();
        if input
            .read_line(&mut line)
            .expect("bench child: read command")
            == 0
        {
            return; // the parent went away
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| -> u64 {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .expect("bench child: malformed command")
        };
        match words.first().copied() {
            Some("alloc") => {
                let (window, hold) = (Duration::from_millis(num(1)), num(2));
                let held: Vec<_> = (0..hold)
                    .map(|_| {
                        pool.try_alloc(PAYLOAD)
                            .expect("bench child: allocate held block")
                    })
                    .collect();
                let (pairs, elapsed) = pool_window(&pool, window);
                drop(held);
                reply(&mut out, format!("done {pairs} {}", elapsed.as_nanos()));
            }
            Some("ring") => {
                let (from, to) = (num(1) as u32, num(2) as u32);
                let reader = pool
                    .ring_reader(from)
                    .expect("bench child: take ring reader");
                let writer = pool.ring_writer(to).expect("bench child: take ring writer");
                reply(&mut out, "ready".into());
                let mut trips = 0u64;
                loop {
                    let packet = reader
                        .read(Some(IO_TIMEOUT))
                        .expect("bench child: ring read");
                    let stop = packet.data() == STOP;
                    writer
                        .try_write(packet)
                        .map_err(|(_, e)| e)
                        .expect("bench child: ring write");
                    trips += 1;
                    if stop {
                        break;
                    }
                }
                reply(&mut out, format!("done {trips}"));
            }
            Some("pipe") => {
                let mut buf = [0u8; 4];
                loop {
                    input.read_exact(&mut buf).expect("bench child: pipe read");
                    out.write_all(&buf).expect("bench child: pipe write");
                    if buf == STOP {
                        break;
                    }
                }
            }
            Some("quit") => return,
            _ => panic!("bench child: unknown command {line:?}"),
        }
    }
}

/// The parent's handle on a child: its pid and its stdin/stdout pipes. Dropping it kills the
/// child if it is still running (error paths).
struct Peer {
    child: Child,
    pid: u32,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl Peer {
    fn spawn(pool_name: &str) -> Peer {
        let exe = std::env::current_exe().expect("cannot find the bench executable to re-run");
        let mut child = Command::new(exe)
            .env(CHILD_ENV, "1")
            .env(POOL_ENV, pool_name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot spawn the bench child process");
        let to = child.stdin.take().expect("child stdin is piped");
        let from = BufReader::new(child.stdout.take().expect("child stdout is piped"));
        let pid = child.id();
        let mut peer = Peer {
            child,
            pid,
            to,
            from,
        };
        let hello = peer.recv();
        assert_eq!(
            hello,
            format!("ready {pid}"),
            "bench child greeted unexpectedly"
        );
        peer
    }

    fn send(&mut self, line: &str) {
        self.to
            .write_all(format!("{line}\n").as_bytes())
            .expect("cannot write to the bench child");
    }

    fn recv(&mut self) -> String {
        let mut line = String::new();
        let n = self
            .from
            .read_line(&mut line)
            .expect("cannot read from the bench child");
        assert!(
            n > 0,
            "the bench child exited unexpectedly (see its message above)"
        );
        line.trim_end().to_owned()
    }

    fn quit(mut self) {
        self.send("quit");
        let status = self.child.wait().expect("cannot wait for the bench child");
        if !status.success() {
            eprintln!("warning: bench child {} ended with {status}", self.pid);
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Unlinks the pool's name when the bench ends, also on a panic.
struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        if let Err(e) = Pool::unlink(&self.0) {
            eprintln!("warning: could not unlink the bench pool: {e}");
        }
    }
}

// ---- the parent -------------------------------------------------------------------------------

/// A (pairs, elapsed) measurement.
#[derive(Clone, Copy)]
struct Run {
    pairs: u64,
    secs: f64,
}

impl Run {
    fn ns_per_pair(self) -> f64 {
        self.secs * 1e9 / self.pairs as f64
    }
    fn rate(self) -> f64 {
        self.pairs as f64 / self.secs
    }
}

fn best(runs: impl IntoIterator<Item = Run>) -> Run {
    runs.into_iter()
        .max_by(|a, b| a.rate().total_cmp(&b.rate()))
        .expect("at least one repetition")
}

/// Two sides that ran for about the same window: total pairs over the longer elapsed time.
/// Also returns each side's own ns per pair.
#[derive(Clone, Copy)]
struct Duo {
    total: Run,
    sides: [f64; 2],
}

fn duo(a: (u64, Duration), b: (u64, Duration)) -> Duo {
    let secs = a.1.max(b.1).as_secs_f64();
    let side = |(n, d): (u64, Duration)| d.as_secs_f64() * 1e9 / n as f64;
    Duo {
        total: Run {
            pairs: a.0 + b.0,
            secs,
        },
        sides: [side(a), side(b)],
    }
}

fn best_duo(runs: impl IntoIterator<Item = Duo>) -> Duo {
    runs.into_iter()
        .max_by(|a, b| a.total.rate().total_cmp(&b.total.rate()))
        .expect("at least one repetition")
}

struct PingPong {
    trips: usize,
    secs: f64,
    median_ns: u64,
    p99_ns: u64,
}

impl PingPong {
    fn from_latencies(mut lat: Vec<u64>, secs: f64) -> Self {
        lat.sort_unstable();
        let trips = lat.len();
        let at = |q| quantile(&lat, q).expect("a ping-pong window measures at least one trip");
        let (median_ns, p99_ns) = (at(0.50), at(0.99));
        Self {
            trips,
            secs,
            median_ns,
            p99_ns,
        }
    }
    /// One-way messages per second (two per round trip).
    fn msgs_per_sec(&self) -> f64 {
        2.0 * self.trips as f64 / self.secs
    }
}

fn best_pingpong(runs: Vec<PingPong>) -> PingPong {
    runs.into_iter()
        .max_by(|a, b| a.msgs_per_sec().total_cmp(&b.msgs_per_sec()))
        .expect("at least one repetition")
}

fn mega(rate: f64) -> String {
    format!("{:.2} M", rate / 1e6)
}

fn micros(ns: u64) -> String {
    format!("{:.2} us", ns as f64 / 1e3)
}

/// Spawns children until one's home shard (`pid % shards`) is (or is not) ours.
fn spawn_with_shard(name: &str, me: u32, shards: u32, same: bool) -> Option<Peer> {
    for _ in 0..32 {
        let peer = Peer::spawn(name);
        if (peer.pid % shards == me % shards) == same {
            return Some(peer);
        }
        peer.quit();
    }
    None
}

/// Both processes allocate and free for one window at once; the child first holds `hold`
/// blocks.
fn contended(pool: &Pool, peer: &mut Peer, hold: usize) -> Duo {
    best_duo((0..plan().reps).map(|_| {
        peer.send(&format!("alloc {} {hold}", plan().window.as_millis()));
        let mine = pool_window(pool, plan().window);
        let reply = peer.recv();
        let words: Vec<&str> = reply.split_whitespace().collect();
        let num = |i: usize| -> u64 {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .expect("malformed reply from bench child")
        };
        assert_eq!(
            words.first(),
            Some(&"done"),
            "unexpected reply from bench child: {reply}"
        );
        duo(mine, (num(1), Duration::from_nanos(num(2))))
    }))
}

fn ring_pingpong(pool: &Pool, peer: &mut Peer) -> PingPong {
    let me = pool.pid();
    let there = pool
        .ring_create(me, peer.pid)
        .expect("cannot create ring parent -> child");
    let back = pool
        .ring_create(peer.pid, me)
        .expect("cannot create ring child -> parent");
    let writer = pool
        .ring_writer(there)
        .expect("cannot take the writer of ring parent -> child");
    let reader = pool
        .ring_reader(back)
        .expect("cannot take the reader of ring child -> parent");
    let mut runs = Vec::new();
    for _ in 0..plan().reps {
        peer.send(&format!("ring {there} {back}"));
        assert_eq!(
            peer.recv(),
            "ready",
            "bench child did not take its ring ends"
        );
        let mut packet = pool
            .try_alloc(4)
            .expect("cannot allocate the ping-pong block");
        packet.data_mut().copy_from_slice(&0u32.to_le_bytes());
        let mut lat = Vec::with_capacity(1 << 20);
        let mut trips = 0usize;
        let mut start = Instant::now();
        let mut prev = start;
        loop {
            writer
                .try_write(packet)
                .map_err(|(_, e)| e)
                .expect("ring write (parent -> child)");
            packet = reader
                .read(Some(IO_TIMEOUT))
                .expect("ring read (child -> parent)");
            let now = Instant::now();
            trips += 1;
            if trips > plan().warmup_trips {
                lat.push((now - prev).as_nanos() as u64);
                if now - start >= plan().pingpong_window {
                    break;
                }
            } else if trips == plan().warmup_trips {
                start = now;
            }
            prev = now;
        }
        let secs = (prev - start).as_secs_f64();
        packet.data_mut().copy_from_slice(&STOP);
        writer
            .try_write(packet)
            .map_err(|(_, e)| e)
            .expect("ring write (stop)");
        let packet = reader.read(Some(IO_TIMEOUT)).expect("ring read (stop)");
        if packet.data() != STOP {
            eprintln!(
                "warning: the ping-pong block came back as {:?}",
                packet.data()
            );
        }
        drop(packet);
        let done = peer.recv();
        if done != format!("done {}", trips + 1) {
            eprintln!(
                "warning: bench child answered {done:?} after {} round trips",
                trips + 1
            );
        }
        runs.push(PingPong::from_latencies(lat, secs));
    }
    for ring in [there, back] {
        if let Err(e) = pool.ring_destroy(ring) {
            eprintln!("warning: ring_destroy({ring}): {e}");
        }
    }
    best_pingpong(runs)
}

fn pipe_pingpong(peer: &mut Peer) -> PingPong {
    let mut runs = Vec::new();
    for _ in 0..plan().reps {
        peer.send("pipe");
        let mut lat = Vec::with_capacity(1 << 20);
        let mut buf = [0u8; 4];
        let mut trips = 0usize;
        let mut start = Instant::now();
        let mut prev = start;
        loop {
            let word = (trips as u32).to_le_bytes();
            peer.to
                .write_all(&word)
                .expect("pipe write (parent -> child)");
            peer.from
                .read_exact(&mut buf)
                .expect("pipe read (child -> parent)");
            let now = Instant::now();
            assert_eq!(buf, word, "pipe ping-pong out of step");
            trips += 1;
            if trips > plan().warmup_trips {
                lat.push((now - prev).as_nanos() as u64);
                if now - start >= plan().pingpong_window {
                    break;
                }
            } else if trips == plan().warmup_trips {
                start = now;
            }
            prev = now;
        }
        let secs = (prev - start).as_secs_f64();
        peer.to.write_all(&STOP).expect("pipe write (stop)");
        peer.from.read_exact(&mut buf).expect("pipe read (stop)");
        assert_eq!(buf, STOP, "pipe ping-pong out of step at the stop word");
        runs.push(PingPong::from_latencies(lat, secs));
    }
    best_pingpong(runs)
}

/// The floor for any shared-memory ping-pong here: one atomic word bounced between two
/// spinning threads (one cache-line transfer each way).
fn atomic_pingpong() -> PingPong {
    #[repr(align(64))]
    struct Line(AtomicU32);
    const DONE: u32 = u32::MAX;
    let line = Line(AtomicU32::new(0));
    best_pingpong(
        (0..plan().reps)
            .map(|_| {
                line.0.store(0, Ordering::Relaxed);
                std::thread::scope(|s| {
                    s.spawn(|| {
                        loop {
                            match line.0.load(Ordering::Acquire) {
                                DONE => break,
                                v if v & 1 == 1 => line.0.store(v + 1, Ordering::Release),
                                _ => std::hint::spin_loop(),
                            }
                        }
                    });
                    let mut lat = Vec::with_capacity(1 << 22);
                    let mut value = 0u32;
                    let mut trips = 0usize;
                    let mut start = Instant::now();
                    let mut prev = start;
                    loop {
                        line.0.store(value + 1, Ordering::Release);
                        value += 2;
                        while line.0.load(Ordering::Acquire) != value {
                            std::hint::spin_loop();
                        }
                        let now = Instant::now();
                        trips += 1;
                        if trips > plan().warmup_trips {
                            lat.push((now - prev).as_nanos() as u64);
                            if now - start >= plan().atomic_window {
                                break;
                            }
                        } else if trips == plan().warmup_trips {
                            start = now;
                        }
                        prev = now;
                    }
                    line.0.store(DONE, Ordering::Release);
                    PingPong::from_latencies(lat, (prev - start).as_secs_f64())
                })
            })
            .collect(),
    )
}

fn parent_main() {
    let wall = Instant::now();
    let me = std::process::id();
    let name = format!("o7s-bench-pool.{me}");
    // A leftover from an earlier run that had our pid and died before unlinking.
    let _ = Pool::unlink(&name);
    let config = PoolConfig::shared_default();
    let pool = Pool::create(&name, &config, Access::Shared).expect("cannot create the bench pool");
    let _unlink = Unlink(name.clone());
    let layout = pool.layout();
    let class = layout
        .class_for_len(PAYLOAD)
        .map(|c| layout.classes[c])
        .expect("a 64-byte payload fits some class");
    let shards = layout.config.shards;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load_before = load_average();
    // Other load shows up in every two-sided figure: the table says how much CPU two get.
    let cpu_check = cpus_for_two(30_000_000);

    println!("o7s-pool benchmark: pool {name:?} (PoolConfig::shared_default), pid {me}");
    println!(
        "try_alloc({PAYLOAD}) takes the {}-byte class: {} blocks in {shards} shards, home shard = \
         pid % {shards}",
        class.block_size, class.blocks
    );
    println!(
        "machine: {cpus} CPUs, load average {load_before}; two busy threads got {cpu_check:.2} \
         CPUs' worth (2.00 = both cores free for us)"
    );
    if cpu_check < 1.8 {
        println!(
            "WARNING: something else is using the CPUs; the two-sided figures (2. and 3.) measure \
             time-slicing more than the pool"
        );
    }
    if std::ptr::eq(plan(), &SMOKE) {
        println!("smoke run (no --bench argument): tiny sizes, the figures mean nothing");
    }
    let baseline_list = || Mutex::new((0..class.blocks).collect::<Vec<u32>>());

    // 1. One process.
    let phase = Instant::now();
    let _ = pool_pairs(&pool, plan().single_pairs / 10); // warm-up
    let single = best((0..plan().reps).map(|_| Run {
        pairs: plan().single_pairs,
        secs: pool_pairs(&pool, plan().single_pairs).as_secs_f64(),
    }));
    let list = baseline_list();
    let _ = mutex_pairs(&list, plan().single_pairs / 10);
    let single_base = best((0..plan().reps).map(|_| Run {
        pairs: plan().single_pairs,
        secs: mutex_pairs(&list, plan().single_pairs).as_secs_f64(),
    }));
    let r1 = single.ns_per_pair() / single_base.ns_per_pair();
    let phase1 = phase.elapsed();

    // 2. Two at once.
    let phase = Instant::now();
    let mut apart = spawn_with_shard(&name, me, shards, false);
    let apart_shard = apart.as_ref().map(|p| (p.pid % shards).to_string());
    let two_apart = apart.as_mut().map(|peer| contended(&pool, peer, 0));
    let two_apart_lines = apart
        .as_mut()
        .map(|peer| contended(&pool, peer, HOLD_APART));
    let two_same = spawn_with_shard(&name, me, shards, true).map(|mut peer| {
        let d = contended(&pool, &mut peer, 0);
        peer.quit();
        d
    });
    let list = baseline_list();
    let barrier = Barrier::new(2);
    let two_threads = best_duo((0..plan().reps).map(|_| {
        std::thread::scope(|s| {
            let other = s.spawn(|| {
                barrier.wait();
                mutex_window(&list, plan().window)
            });
            barrier.wait();
            let mine = mutex_window(&list, plan().window);
            duo(mine, other.join().expect("baseline thread panicked"))
        })
    }));
    let phase2 = phase.elapsed();

    // 3. Ping-pong, with a child whichever shard it has.
    let phase = Instant::now();
    let mut peer = match apart {
        Some(peer) => peer,
        None => Peer::spawn(&name),
    };
    let rings = ring_pingpong(&pool, &mut peer);
    let pipes = pipe_pingpong(&mut peer);
    let floor = atomic_pingpong();
    peer.quit();
    let r2 = rings.msgs_per_sec() / pipes.msgs_per_sec();
    let phase3 = phase.elapsed();

    // The table.
    let (reps, single_pairs) = (plan().reps, plan().single_pairs);
    println!();
    println!(
        "1. alloc+free pairs, one process (best of {reps} x {single_pairs} pairs; took {:.1} s)",
        phase1.as_secs_f64()
    );
    println!("   {:<52} {:>10} {:>12}", "case", "ns/pair", "pairs/s");
    for (label, run) in [
        (format!("pool: try_alloc({PAYLOAD}) + drop"), single),
        (
            "baseline: Mutex<Vec<u32>> pop + push".to_owned(),
            single_base,
        ),
    ] {
        println!(
            "   {label:<52} {:>10.1} {:>12}",
            run.ns_per_pair(),
            mega(run.rate())
        );
    }
    println!("   R1 = pool ns/pair / baseline ns/pair = {r1:.2}");

    println!();
    println!(
        "2. alloc+free pairs, two at once on one class (best of {reps} x {} ms; took {:.1} s)",
        plan().window.as_millis(),
        phase2.as_secs_f64()
    );
    println!(
        "   ns/pair = wall time per pair done by both together; per side = each side's own ns/pair"
    );
    println!(
        "   {:<68} {:>8} {:>10} {:>16}",
        "case", "ns/pair", "pairs/s", "per side"
    );
    let row = |label: String, d: Option<Duo>| match d {
        Some(d) => println!(
            "   {label:<68} {:>8.1} {:>10} {:>7.1} / {:>6.1}",
            d.total.ns_per_pair(),
            mega(d.total.rate()),
            d.sides[0],
            d.sides[1]
        ),
        None => println!("   {label:<68} (no child with a fitting pid in 32 spawns)"),
    };
    let apart_shard = apart_shard.as_deref().unwrap_or("?");
    row(
        format!(
            "pool: 2 processes, home shards {} and {apart_shard}",
            me % shards
        ),
        two_apart,
    );
    row(
        format!("pool: as above, child holds {HOLD_APART} blocks (hot descriptors apart)"),
        two_apart_lines,
    );
    row(
        format!("pool: 2 processes, both home shard {}", me % shards),
        two_same,
    );
    row(
        "baseline: 2 threads, one Mutex<Vec<u32>>".to_owned(),
        Some(two_threads),
    );
    println!(
        "   (one process alone, for scale: pool {:.1} ns/pair, baseline {:.1} ns/pair)",
        single.ns_per_pair(),
        single_base.ns_per_pair()
    );

    println!();
    println!(
        "3. ping-pong between two processes (best of {reps} x {} ms, last row {} ms; a message \
         is one direction, two per round trip; took {:.1} s)",
        plan().pingpong_window.as_millis(),
        plan().atomic_window.as_millis(),
        phase3.as_secs_f64()
    );
    println!(
        "   {:<44} {:>12} {:>12} {:>12} {:>12}",
        "case", "round trips", "messages/s", "median RTT", "p99 RTT"
    );
    for (label, p) in [
        ("pool: block index over two flow rings", &rings),
        ("baseline: 4 bytes over two pipes", &pipes),
        ("for scale: one atomic between two threads", &floor),
    ] {
        println!(
            "   {label:<44} {:>12} {:>12} {:>12} {:>12}",
            p.trips,
            mega(p.msgs_per_sec()),
            micros(p.median_ns),
            micros(p.p99_ns)
        );
    }
    println!("   R2 = ring messages/s / pipe messages/s = {r2:.2}");
    println!(
        "   (medians alone: pipe RTT / ring RTT = {:.2}; messages/s also counts each side's slow \
         round trips, e.g. sleeping and waking)",
        pipes.median_ns as f64 / rings.median_ns as f64
    );

    println!();
    pool.flush_caches();
    let report = pool.verify();
    if report.is_ok() {
        println!(
            "pool.verify(): ok, {} blocks free of {}",
            report.free,
            report.total()
        );
    } else {
        println!(
            "pool.verify(): {} problems: {:?}",
            report.problems.len(),
            report.problems
        );
    }
    println!(
        "total bench time {:.1} s; load average {load_before} before, {} after",
        wall.elapsed().as_secs_f64(),
        load_average()
    );
    println!("pool: alloc/mutex-baseline {r1:.2}, ring/pipe {r2:.2}");
}
