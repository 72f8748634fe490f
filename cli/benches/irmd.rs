//! IRMd benchmark (custom harness, `cargo xtask bench irmd`): flow allocation and round trips
//! through a real `irmd` and `ipcpd-local`, next to a plain Unix-socket ping-pong in the same
//! run.
//!
//! The bench starts an `irmd` on a temporary run directory (its own shared memory, its own
//! socket; no root needed), creates and bootstraps a local IPCP, registers two names in its
//! layer and starts a server process (this binary re-run, selected by `O7S_BENCH_CHILD`) that
//! binds four names and accepts flows: to `bench` and `bench-direct` it deallocates at once, on
//! `bench-echo` and `bench-echo-direct` it sends every SDU back without a copy. Then, from
//! this process:
//!
//! 1. flow allocation + deallocation, one after the other for a fixed window, through the local
//!    IPCP (`bench`, registered in its layer) and as a direct local flow (`bench-direct`, only
//!    bound: the IRMd joins the two processes itself);
//! 2. 64-byte SDU round trips (write, then read the echo) over a flow through the local IPCP
//!    and over a direct flow;
//! 3. the baseline: the same 64-byte ping-pong over a Unix stream socket to another process.
//!
//! Without a `--bench` argument (`cargo test --all-targets` runs bench targets too) the run is
//! a smoke test of about a second whose figures mean nothing.
//!
//! The last line is the one-line summary `irmd: allocs/s N, rtt/unix-socket R`, where N is
//! the allocation+deallocation pairs per second through the local IPCP and R = the median
//! round trip over the local IPCP / the median Unix-socket round trip (lower is better; 1 means
//! as fast as a Unix socket). Nothing here asserts on speed.

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use o7s_proto::irm::IpcpType;
use o7s_testkit::bench::{cpus_for_two, load_average, quantile, us};
use o7s_testkit::{Irmd, Options, Stop, build_bins, temp_dir};

/// Set in the re-executed child: `server` or `unix`.
const CHILD_ENV: &str = "O7S_BENCH_CHILD";
/// The local IPCP's layer.
const LAYER: &str = "bench-layer";
/// Names: allocated and deallocated (through the IPCP / direct), and echoed on.
const ALLOC_IPCP: &str = "bench";
const ALLOC_DIRECT: &str = "bench-direct";
const ECHO_IPCP: &str = "bench-echo";
const ECHO_DIRECT: &str = "bench-echo-direct";
/// SDU size of every ping-pong.
const SDU: usize = 64;
/// How long any single step may take before the bench gives up.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long and how often to measure.
struct Plan {
    full: bool,
    /// Repetitions of every measurement; the best (allocations) or the one with the lowest
    /// median (round trips) is reported.
    reps: usize,
    /// Length of one allocation window.
    alloc_window: Duration,
    /// Unmeasured round trips before each ping-pong window.
    warmup_trips: usize,
    /// Length of one ping-pong window.
    rtt_window: Duration,
}

const FULL: Plan = Plan {
    full: true,
    reps: 3,
    alloc_window: Duration::from_secs(2),
    warmup_trips: 2_000,
    rtt_window: Duration::from_millis(1500),
};

const SMOKE: Plan = Plan {
    full: false,
    reps: 1,
    alloc_window: Duration::from_millis(50),
    warmup_trips: 10,
    rtt_window: Duration::from_millis(50),
};

fn plan() -> &'static Plan {
    static PLAN: std::sync::OnceLock<&'static Plan> = std::sync::OnceLock::new();
    PLAN.get_or_init(|| {
        if std::env::args().any(|a| a == "--bench") {
            &FULL
        } else {
            &SMOKE
        }
    })
}

fn main() {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("server") => server_main(),
        Ok("unix") => unix_main(),
        Ok(other) => panic!("unknown bench child role {other:?}"),
        Err(_) => parent_main(),
    }
}

// ---- the child processes ------------------------------------------------------------------------

/// The flow server: binds the four names, then accepts flows forever (the parent kills it).
fn server_main() {
    let client = o7s::Client::connect().expect("bench server: connect to the irmd");
    for name in [ALLOC_IPCP, ALLOC_DIRECT, ECHO_IPCP, ECHO_DIRECT] {
        client
            .bind(name)
            .unwrap_or_else(|e| panic!("bench server: bind {name}: {e}"));
    }
    println!("ready {}", std::process::id());
    loop {
        let flow = match client.flow_accept(None) {
            Ok(flow) => flow,
            Err(e) => {
                eprintln!("bench server: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if flow.name() == ECHO_IPCP || flow.name() == ECHO_DIRECT {
            std::thread::spawn(move || {
                // Zero-copy echo until the other end deallocates.
                while let Ok(packet) = flow.read_packet() {
                    if flow.write_packet(packet).is_err() {
                        break;
                    }
                }
            });
        }
        // Any other flow is deallocated at once (dropped).
    }
}

/// The Unix-socket peer: listens on the path given, echoes 64-byte messages until EOF.
fn unix_main() {
    let path = std::env::args()
        .nth(1)
        .expect("bench unix child: no socket path");
    let listener = UnixListener::bind(&path).expect("bench unix child: bind");
    println!("ready {}", std::process::id());
    let (mut stream, _) = listener.accept().expect("bench unix child: accept");
    let mut buf = [0u8; SDU];
    while stream.read_exact(&mut buf).is_ok() {
        if stream.write_all(&buf).is_err() {
            break;
        }
    }
}

// ---- measurements -------------------------------------------------------------------------------

/// Sorted per-operation latencies of one window, with its length.
struct Sample {
    lat: Vec<Duration>,
    secs: f64,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.lat.len() as f64 / self.secs
    }
    fn quantile(&self, q: f64) -> Duration {
        quantile(&self.lat, q).expect("a window measures at least one run")
    }
    fn p50(&self) -> Duration {
        self.quantile(0.50)
    }
    fn p99(&self) -> Duration {
        self.quantile(0.99)
    }
}

/// Runs `op` back to back for one window (after `warmup` unmeasured runs) and records each
/// run's time.
fn window(warmup: usize, length: Duration, mut op: impl FnMut()) -> Sample {
    for _ in 0..warmup {
        op();
    }
    let mut lat = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    let mut prev = start;
    loop {
        op();
        let now = Instant::now();
        lat.push(now - prev);
        prev = now;
        if now - start >= length {
            break;
        }
    }
    lat.sort_unstable();
    Sample {
        lat,
        secs: (prev - start).as_secs_f64(),
    }
}

/// Allocation + deallocation pairs to `name`, back to back: the best of the repetitions.
fn allocs(client: &o7s::Client, name: &str) -> Sample {
    let mut op = || {
        let flow = client
            .flow_alloc(name, None, Some(IO_TIMEOUT))
            .unwrap_or_else(|e| panic!("flow_alloc({name}): {e}"));
        black_box(flow.id());
        flow.dealloc()
            .unwrap_or_else(|e| panic!("dealloc ({name}): {e}"));
    };
    (0..plan().reps)
        .map(|_| window(plan().warmup_trips.min(50), plan().alloc_window, &mut op))
        .max_by(|a, b| a.rate().total_cmp(&b.rate()))
        .expect("at least one repetition")
}

/// Keeps the sample with the lowest median.
fn best_rtt(samples: impl Iterator<Item = Sample>) -> Sample {
    samples
        .min_by_key(Sample::p50)
        .expect("at least one repetition")
}

/// 64-byte round trips over a flow to the server's echo name `name`.
fn flow_rtt(client: &o7s::Client, name: &str) -> Sample {
    let flow = client
        .flow_alloc(name, None, Some(IO_TIMEOUT))
        .unwrap_or_else(|e| panic!("flow_alloc({name}): {e}"));
    flow.set_timeout(Some(IO_TIMEOUT));
    let msg = [0xa5u8; SDU];
    let mut buf = [0u8; SDU];
    let mut op = || {
        flow.write(&msg).expect("write the ping");
        let n = flow.read(&mut buf).expect("read the echo");
        assert_eq!(n, SDU, "the echo came back with {n} bytes");
    };
    let best =
        best_rtt((0..plan().reps).map(|_| window(plan().warmup_trips, plan().rtt_window, &mut op)));
    flow.dealloc().expect("dealloc the ping-pong flow");
    best
}

/// The same ping-pong over a Unix stream socket to another process.
fn unix_rtt(dir: &Path) -> Sample {
    let path = dir.join("pingpong.sock");
    let mut child = spawn_child("unix", &[path.as_os_str()]);
    let stream = UnixStream::connect(&path).expect("connect to the unix-socket child");
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("socket read timeout");
    let msg = [0xa5u8; SDU];
    let mut buf = [0u8; SDU];
    let mut s = &stream;
    let mut op = || {
        s.write_all(&msg).expect("unix socket write");
        s.read_exact(&mut buf).expect("unix socket read");
    };
    let best =
        best_rtt((0..plan().reps).map(|_| window(plan().warmup_trips, plan().rtt_window, &mut op)));
    drop(stream);
    let _ = child.0.wait();
    best
}

/// A child process that is killed if still running when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Re-runs this binary as `role` and waits for its `ready` line.
fn spawn_child(role: &str, args: &[&std::ffi::OsStr]) -> ChildGuard {
    let exe = std::env::current_exe().expect("cannot find the bench executable to re-run");
    let mut child = Command::new(exe)
        .args(args)
        .env(CHILD_ENV, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn the bench {role} child: {e}"));
    let mut out = child.stdout.take().expect("child stdout is piped");
    let guard = ChildGuard(child);
    let mut line = Vec::new();
    let mut byte = [0u8];
    while byte[0] != b'\n' {
        match out.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => panic!("the bench {role} child exited before it was ready"),
        }
    }
    assert!(
        line.starts_with(b"ready"),
        "bench {role} child said {:?}",
        String::from_utf8_lossy(&line)
    );
    guard
}

// ---- setup and report ---------------------------------------------------------------------------

/// `irmd` and `ipcpd-local`, built next to this package's binaries (the IRMd finds the IPCP
/// beside itself).
fn bin_dir() -> PathBuf {
    let oping = Path::new(env!("CARGO_BIN_EXE_oping"));
    let dir = oping.parent().expect("oping has a directory");
    build_bins(dir, &[("o7s-irmd", "irmd"), ("o7s-ipcpd", "ipcpd-local")])
}

/// Creates and bootstraps `ipcpd-local` and registers the IPCP names in its layer; returns
/// its pid.
fn local_ipcp(host: &Irmd) -> u32 {
    let pid = host.ipcp(IpcpType::Local, "local", LAYER, None).pid;
    for name in [ALLOC_IPCP, ECHO_IPCP] {
        host.register_in(LAYER, name);
    }
    pid
}

fn parent_main() {
    let bins = bin_dir();
    let wall = Instant::now();
    // Every figure involves two or three processes: the header says how much CPU two get.
    let iterations = if plan().full { 30_000_000 } else { 1_000_000 };
    let (load, cpus) = (load_average(), cpus_for_two(iterations));
    let mut host = Irmd::start(
        temp_dir("bench-irmd"),
        Options::new(bins.join("irmd"))
            .rust_log("warn")
            .stop(Stop::Term),
    );
    let ipcp = local_ipcp(&host);
    let server = std::env::current_exe().expect("cannot find the bench executable to re-run");
    let mut command = Command::new(server);
    command
        .env(CHILD_ENV, "server")
        .env("O7S_RUNDIR", &host.rundir)
        .stdin(Stdio::null());
    let (server_pid, _server_out) = host.spawn(command, "ready");
    println!(
        "irmd bench ({}): irmd pid {} on {}, local IPCP pid {ipcp} in layer {LAYER:?}, server \
         pid {server_pid}; {} repetitions, allocation window {:?}, round-trip window {:?} of \
         {SDU}-byte SDUs",
        if plan().full {
            "full"
        } else {
            "smoke run, figures mean nothing"
        },
        host.pid(),
        host.rundir.display(),
        plan().reps,
        plan().alloc_window,
        plan().rtt_window,
    );
    println!(
        "machine: {} CPUs, load average {load}; two busy threads got {cpus:.2} CPUs' worth \
         (2.00 = both cores free for us)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    if cpus < 1.8 {
        println!(
            "WARNING: something else is using the CPUs; every figure below measures \
             time-slicing as much as the IRMd"
        );
    }

    let client = o7s::Client::connect_to(&host.rundir).expect("connect to the irmd");
    let alloc_ipcp = allocs(&client, ALLOC_IPCP);
    let alloc_direct = allocs(&client, ALLOC_DIRECT);
    let rtt_ipcp = flow_rtt(&client, ECHO_IPCP);
    let rtt_direct = flow_rtt(&client, ECHO_DIRECT);
    let rtt_unix = unix_rtt(&host.dir);
    drop(client);
    drop(host);

    println!();
    println!(
        "{:<40} {:>10} {:>10} {:>10} {:>9}",
        "what", "per second", "p50", "p99", "count"
    );
    let row = |what: &str, s: &Sample, per_second: f64| {
        println!(
            "{what:<40} {per_second:>10.0} {:>10} {:>10} {:>9}",
            us(s.p50()),
            us(s.p99()),
            s.lat.len()
        );
    };
    row(
        "flow alloc+dealloc, local IPCP",
        &alloc_ipcp,
        alloc_ipcp.rate(),
    );
    row(
        "flow alloc+dealloc, direct local flow",
        &alloc_direct,
        alloc_direct.rate(),
    );
    // Round trips per second (one trip = two SDUs).
    row("64 B round trip, local IPCP", &rtt_ipcp, rtt_ipcp.rate());
    row(
        "64 B round trip, direct flow",
        &rtt_direct,
        rtt_direct.rate(),
    );
    row(
        "64 B round trip, unix socket (baseline)",
        &rtt_unix,
        rtt_unix.rate(),
    );
    let ratio = |a: &Sample| a.p50().as_secs_f64() / rtt_unix.p50().as_secs_f64();
    println!();
    println!(
        "median round trip / unix socket's: local IPCP {:.2}, direct flow {:.2} (lower is \
         better; below 1 = faster than a Unix socket); total {:.1?}",
        ratio(&rtt_ipcp),
        ratio(&rtt_direct),
        wall.elapsed()
    );
    println!(
        "irmd: allocs/s {:.0}, rtt/unix-socket {:.2}",
        alloc_ipcp.rate(),
        ratio(&rtt_ipcp)
    );
}
