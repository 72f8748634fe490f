//! The counters of [`EthIpcp::snapshot`] move as they should in a short exchange on a veth
//! pair: a native-XDP receiver and an AF_PACKET sender allocate a flow, the sender sends
//! numbered SDUs plus junk frames (unknown eid, runts, another destination MAC, another
//! EtherType) through a raw socket, then more SDUs after the receiver has unbound the flow.
//!
//! Needs root; without it the test prints why and returns.

mod net;

use std::os::fd::AsFd as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant as StdInstant};

use net::{AbortOnPanic, NetnsPair, Shared, TestPool, allocate_flow, can_run, clock, fill_sdu};
use o7s_proto::MacAddr;
use o7s_proto::dix::{self, HEADER_LEN};
use o7s_xdp_ipcp::{BackendKind, DropReason, EthIpcp, IpcpConfig, ModeChoice, Snapshot, sys};

const DEADLINE: Duration = Duration::from_secs(60);
/// SDUs sent while the flow is bound.
const N: u64 = 500;
/// SDUs sent after the receiver unbound the flow.
const M: u64 = 40;
/// Junk frames of each kind.
const K: u64 = 7;

fn sdu_len(seq: u64) -> usize {
    net::sdu_len(seq)
}

/// Frames that the receiving layer must drop (unknown eid, runt, not for us) and one the XDP
/// program must pass to the kernel (another EtherType).
fn junk(dst: MacAddr, src: MacAddr) -> [Vec<u8>; 4] {
    let header = |dst: MacAddr, ethertype: u16, eid: u16, len: u16| {
        let mut h = [0u8; HEADER_LEN];
        dix::Repr {
            dst_addr: dst,
            src_addr: src,
            ethertype,
            eid,
            payload_len: len,
        }
        .emit_header(&mut h);
        h
    };
    let mut unknown_eid = header(dst, dix::DEFAULT_ETHERTYPE, 999, 30).to_vec();
    unknown_eid.extend_from_slice(&[0x55; 30]);
    // 16 bytes: an Ethernet header (so the XDP program matches it) but no whole DIX header.
    let runt = header(dst, dix::DEFAULT_ETHERTYPE, 64, 0)[..16].to_vec();
    let mut not_for_us = header(
        MacAddr([0x02, 0, 0, 0, 0, 0x99]),
        dix::DEFAULT_ETHERTYPE,
        64,
        30,
    )
    .to_vec();
    not_for_us.extend_from_slice(&[0x66; 30]);
    let mut other = header(dst, 0x88b5, 0, 0).to_vec();
    other.resize(60, 0x77);
    [unknown_eid, runt, not_for_us, other]
}

/// Polls `ipcp` until `done(snapshot)` or the deadline.
fn poll_until(
    ipcp: &mut EthIpcp<'_>,
    now: &dyn Fn() -> o7s_xdp_ipcp::Instant,
    shared: &Shared,
    what: &str,
    done: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let start = StdInstant::now();
    loop {
        net::check_abort(shared, what);
        ipcp.poll(now()).expect("poll");
        let snap = ipcp.snapshot().expect("snapshot");
        if done(&snap) {
            return snap;
        }
        assert!(start.elapsed() < DEADLINE, "{what}: {snap:?}");
        ipcp.wait(Duration::from_millis(1)).expect("wait");
    }
}

/// Sends SDUs `seqs` on flow `eid` and flushes them all out.
fn send<'p>(
    pool: &'p o7s_pool::Pool,
    ipcp: &mut EthIpcp<'p>,
    eid: u16,
    seqs: std::ops::Range<u64>,
) {
    for seq in seqs {
        let mut packet = pool.try_alloc(sdu_len(seq)).expect("alloc");
        fill_sdu(seq, packet.data_mut());
        ipcp.send(eid, packet).map_err(|(_, e)| e).expect("send");
        if seq % 32 == 31 {
            while ipcp.flush().expect("flush") > 0 {
                std::thread::yield_now();
            }
        }
    }
    while ipcp.flush().expect("flush") > 0 {
        std::thread::yield_now();
    }
}

#[test]
#[allow(clippy::too_many_lines, reason = "one linear script per side")]
fn counters_move_as_expected_in_a_short_exchange() {
    let test = "counters_move_as_expected_in_a_short_exchange";
    if !can_run(test, true) {
        return;
    }
    let pair = NetnsPair::new(1500);
    let shared = Shared::new();

    let receiver = {
        let (iface, shared) = (pair.veth[1].clone(), shared.clone());
        net::spawn_in_netns(&pair.ns[1], move || {
            let _guard = AbortOnPanic(shared.clone());
            let tp = TestPool::new("rx");
            let pool = &tp.pool;
            {
                let mut config = IpcpConfig::new(&iface);
                config.backend.mode = ModeChoice::Native;
                let mut ipcp = EthIpcp::open(pool, &config).expect("open receiver");
                ipcp.layer_mut().register(&net::NAME).expect("register");
                let ring = pool.ring_create(pool.pid(), pool.pid()).expect("ring");
                let reader = pool.ring_reader(ring).expect("reader");
                let start = StdInstant::now();
                let now = clock(start);
                shared.barrier.wait();
                let eid = allocate_flow(1, &mut ipcp, ring, &shared, &now, start + DEADLINE);
                shared.barrier.wait();
                // Phase 1: N SDUs and the junk.
                shared.barrier.wait();
                let bytes: u64 = (0..N).map(|s| sdu_len(s) as u64).sum();
                let snap = poll_until(&mut ipcp, &now, &shared, "phase 1", |s| {
                    s.ipcp.delivered == N
                        && s.dropped(DropReason::UnknownEid) == K
                        && s.dropped(DropReason::Runt) == K
                        && s.dropped(DropReason::NotForUs) == K
                });
                let mut seq = 0;
                while let Ok(p) = reader.try_read() {
                    net::check_sdu(seq, p.data()).expect("SDU intact");
                    seq += 1;
                }
                assert_eq!(seq, N);
                eprintln!("{test}: receiver after phase 1: {snap:?}");

                assert_eq!(snap.backend.kind, BackendKind::Xdp(o7s_ebpf::Mode::Native));
                assert!(!snap.zero_copy(), "veth AF_XDP is copy mode");
                let flow = snap.flow(eid).expect("the flow");
                assert!(flow.bound);
                assert_eq!(flow.stats.rx_packets, N);
                assert_eq!(flow.stats.rx_bytes, bytes);
                assert_eq!(flow.stats.rx_dropped, 0);
                assert_eq!(flow.stats.tx_packets, 0);
                assert_eq!(snap.layer.data_rx, N);
                assert_eq!(snap.ipcp.ring_full + snap.ipcp.no_ring, 0);
                // Every other drop reason stayed at zero.
                let junk_drops = 3 * K;
                assert_eq!(snap.layer.dropped_total(), junk_drops, "{:?}", snap.layer);
                // Management: the query and the flow request in, their replies out.
                assert!(
                    snap.mgmt_in() >= 2 && snap.mgmt_out() >= 2,
                    "{:?}",
                    snap.ipcp
                );
                assert_eq!(snap.mgmt_in(), snap.layer.mgmt_rx.iter().sum::<u64>());
                assert_eq!(snap.mgmt_out(), snap.layer.mgmt_tx.iter().sum::<u64>());
                // Every frame handed out by the backend is accounted for exactly once.
                let b = snap.backend_stats;
                let i = snap.ipcp;
                assert_eq!(
                    b.rx_frames,
                    i.delivered + i.ring_full + i.no_ring + i.layer_drops + i.mgmt_rx,
                    "{b:?} {i:?}"
                );
                assert_eq!(i.layer_drops, junk_drops);
                // The XDP program saw every one of them, and passed the foreign EtherType.
                let prog = snap.program.expect("program counters in XDP mode");
                assert!(prog.matched >= b.rx_frames, "{prog:?} {b:?}");
                assert!(prog.passed >= K, "{prog:?}");
                assert_eq!(prog.redirect_failed, 0, "{prog:?}");
                let xsk = snap.xsk.expect("socket statistics in XDP mode");
                // Nothing was lost on the way: every matched frame reached user space.
                assert_eq!(xsk.rx_invalid + xsk.tx_invalid, 0, "{xsk:?}");
                assert_eq!(xsk.rx_dropped + xsk.rx_ring_full, 0, "{xsk:?}");
                assert_eq!(prog.matched, b.rx_frames, "{prog:?} {b:?}");

                // Phase 2: the flow is unbound; M more SDUs are dropped on it and counted.
                assert_eq!(ipcp.unbind_flow(eid), Some(ring));
                shared.barrier.wait();
                shared.barrier.wait();
                let snap = poll_until(&mut ipcp, &now, &shared, "phase 2", |s| s.ipcp.no_ring == M);
                let flow = snap.flow(eid).expect("the flow");
                assert!(!flow.bound);
                assert_eq!(flow.stats.rx_packets, N + M);
                assert_eq!(flow.stats.rx_dropped, M);
                assert_eq!(snap.ipcp.delivered, N);
                assert!(reader.try_read().is_err(), "nothing delivered unbound");
                shared.barrier.wait();
                drop(ipcp);
                pool.ring_destroy(ring).expect("ring_destroy");
            }
            tp.assert_all_free();
        })
    };

    let sender = {
        let (iface, shared) = (pair.veth[0].clone(), shared.clone());
        net::spawn_in_netns(&pair.ns[0], move || {
            let _guard = AbortOnPanic(shared.clone());
            let tp = TestPool::new("tx");
            let pool = &tp.pool;
            {
                let mut config = IpcpConfig::new(&iface);
                config.backend.mode = ModeChoice::Packet;
                let mut ipcp = EthIpcp::open(pool, &config).expect("open sender");
                let ring = pool.ring_create(pool.pid(), pool.pid()).expect("ring");
                let start = StdInstant::now();
                let now = clock(start);
                shared.barrier.wait();
                let eid = allocate_flow(0, &mut ipcp, ring, &shared, &now, start + DEADLINE);
                shared.barrier.wait();
                send(pool, &mut ipcp, eid, 0..N);
                // The junk, through a raw socket of our own.
                let snap = ipcp.snapshot().expect("snapshot");
                let peer = snap.flow(eid).expect("flow").remote_mac;
                let mac = MacAddr(sys::if_hwaddr(&iface).expect("MAC"));
                let ifindex = nix::net::if_::if_nametoindex(iface.as_str()).expect("ifindex");
                let raw = sys::packet_socket(ifindex, dix::DEFAULT_ETHERTYPE).expect("socket");
                let frames = junk(peer, mac);
                for _ in 0..K {
                    let batch: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
                    let mut sent = 0;
                    while sent < batch.len() {
                        sent += sys::send_batch(raw.as_fd(), &batch[sent..]).expect("send junk");
                    }
                }
                shared.barrier.wait();
                // Phase 2, once the receiver has unbound the flow.
                shared.barrier.wait();
                send(pool, &mut ipcp, eid, N..N + M);
                shared.barrier.wait();
                let snap = ipcp.snapshot().expect("snapshot");
                eprintln!("{test}: sender: {snap:?}");
                assert_eq!(snap.backend.kind, BackendKind::Packet);
                assert!(snap.program.is_none() && snap.xsk.is_none());
                let flow = snap.flow(eid).expect("flow").stats;
                assert_eq!(flow.tx_packets, N + M);
                assert_eq!(
                    flow.tx_bytes,
                    (0..N + M).map(|s| sdu_len(s) as u64).sum::<u64>()
                );
                assert_eq!(snap.ipcp.sent, N + M);
                assert_eq!(snap.backend_stats.tx_frames, N + M + snap.mgmt_out());
                shared.barrier.wait();
                ipcp.unbind_flow(eid);
                drop(ipcp);
                pool.ring_destroy(ring).expect("ring_destroy");
            }
            tp.assert_all_free();
        })
    };
    let results = [sender.join(), receiver.join()];
    assert!(!shared.abort.load(Ordering::SeqCst) || results.iter().any(Result::is_err));
    for r in results {
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
    }
}
