//! Network-namespace plumbing shared by the root-only link tests (`tests/net`) and the Ethernet
//! benchmark (`benches/eth.rs`, which includes this file with `#[path]`): skip checks, two fresh
//! network namespaces joined by a veth pair (deleted on drop, so also when a panic unwinds),
//! threads entered into a namespace with `setns`, pools with unique names (unlinked on drop),
//! and the control phase of a flow between two `EthIpcp`s (name query, allocation, accept).
//!
//! All traffic stays on the veth pair between the namespaces created here.

use std::fs::File;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant as StdInstant};

use nix::sched::{CloneFlags, setns};
use o7s_pool::{Access, ClassConfig, FRAME_SIZE, Pool, PoolConfig};
use o7s_proto::eth_mgmt::QosSpec;
use o7s_xdp_ipcp::{EthIpcp, Event, Instant, QueryStart};

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
        TestPool::with_config(
            tag,
            &PoolConfig {
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
            },
        )
    }

    /// A pool of `config` under a unique name (with `tag` in it).
    pub fn with_config(tag: &str, config: &PoolConfig) -> TestPool {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("o7s-xipcp-{}-{n}-{tag}", std::process::id());
        let pool = Pool::create(&name, config, Access::Shared)
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

/// The name side 1 registers.
pub const NAME: [u8; 32] = [0x42; 32];

/// Milliseconds since `start`, as the layer's clock.
pub fn clock(start: StdInstant) -> impl Fn() -> Instant {
    move || Instant::from_millis(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX))
}

/// The control phase of one side: side 0 queries [`NAME`] and allocates a flow to it, side 1
/// (which must have registered it) accepts. Both bind the flow to `ring`. Panics when
/// `aborted()` turns true (the other side failed) or at `give_up`. Returns the flow's eid.
pub fn allocate_flow_until(
    side: usize,
    ipcp: &mut EthIpcp<'_>,
    ring: u32,
    aborted: &dyn Fn() -> bool,
    now: &dyn Fn() -> Instant,
    give_up: StdInstant,
) -> u16 {
    if side == 0 {
        let q = ipcp.layer_mut().query(&NAME, now()).expect("query");
        assert!(matches!(q, QueryStart::Pending(_)), "{q:?}");
    }
    let mut eid = None;
    while eid.is_none() {
        assert!(!aborted(), "the other side failed (allocation)");
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
