//! Network-namespace plumbing shared by the root-only link tests (`tests/net`) and the Ethernet
//! benchmark (`benches/eth.rs`, which includes this file with `#[path]`): skip checks, two fresh
//! network namespaces joined by a veth pair (deleted on drop, so also when a panic unwinds),
//! threads entered into a namespace with `setns`, pools with unique names (unlinked on drop),
//! and the control phase of a flow between two `EthIpcp`s (name query, allocation, accept).
//!
//! All traffic stays on the veth pair between the namespaces created here.

use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant as StdInstant};

use o7s_pool::{Access, ClassConfig, FRAME_SIZE, Pool, PoolConfig};
use o7s_proto::eth_mgmt::QosSpec;
use o7s_testkit::netns::VethPair;
#[allow(
    unused_imports,
    reason = "the bench uses part of the shared test plumbing"
)]
pub use o7s_testkit::netns::{in_netns, run, spawn_in_netns};
use o7s_xdp_ipcp::{EthIpcp, Event, Instant, QueryStart};

/// Returns false, after one line saying why, when the test cannot run here.
pub fn can_run(test: &str, needs_xdp: bool) -> bool {
    if !o7s_testkit::netns::can_run(test, "network namespaces, raw sockets, BPF") {
        return false;
    }
    if needs_xdp && !o7s_ebpf::is_built() {
        eprintln!("skipping {test}: built with O7S_EBPF_SKIP=1, no XDP object");
        return false;
    }
    true
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Two fresh network namespaces joined by a veth pair, both ends up, IPv6 off. Dropping it
/// deletes both namespaces (and so the pair).
pub struct NetnsPair(VethPair);

/// IPv4 addresses of the two ends, for tests that give the pair addresses.
pub const ADDRS: [&str; 2] = ["10.198.0.1", "10.198.0.2"];

impl NetnsPair {
    pub fn new(mtu: u32) -> NetnsPair {
        NetnsPair(VethPair::new("o7s-xipcp", "o7x", mtu))
    }

    /// Each end with `queues` RX/TX queues.
    pub fn with_queues(mtu: u32, queues: u32) -> NetnsPair {
        NetnsPair(VethPair::with_queues("o7s-xipcp", "o7x", mtu, queues))
    }

    /// Gives the ends the addresses [`ADDRS`] (/24).
    pub fn with_addresses(self) -> NetnsPair {
        NetnsPair(self.0.with_addresses(ADDRS))
    }
}

impl Deref for NetnsPair {
    type Target = VethPair;
    fn deref(&self) -> &VethPair {
        &self.0
    }
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
