//! Edge cases of the backends on a veth pair in fresh network namespaces: a full flow ring drops
//! and counts instead of blocking RX, and zero-copy AF_XDP (which veth lacks) fails cleanly —
//! program detached, every lent block back in the pool — so `auto` falls back to AF_PACKET.
//!
//! Needs root; without it each test prints why and returns.

mod net;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant as StdInstant};

use net::{
    AbortOnPanic, BURST, NetnsPair, Shared, TestPool, allocate_flow, can_run, check_abort,
    check_sdu, clock, fill_sdu, run, sdu_len, spawn_in_netns,
};
use o7s_xdp_ipcp::backend::Error as BackendError;
use o7s_xdp_ipcp::ipcp::Error as IpcpError;
use o7s_xdp_ipcp::{BackendKind, EthIpcp, IpcpConfig, ModeChoice, ZeroCopy};

const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn full_flow_ring_drops_and_counts_without_blocking_rx() {
    let test = "full_flow_ring_drops_and_counts_without_blocking_rx";
    if !can_run(test, true) {
        return;
    }
    let pair = NetnsPair::new(1500);
    let shared = Shared::new();
    shared.keep_going.store(true, Ordering::SeqCst);
    const TOTAL: u64 = 6000;

    // Side 1 receives with native XDP and never reads its ring.
    let receiver = {
        let (iface, shared) = (pair.veth[1].clone(), shared.clone());
        spawn_in_netns(&pair.ns[1], move || {
            let _guard = AbortOnPanic(shared.clone());
            let tp = TestPool::new("rx");
            let pool = &tp.pool;
            let capacity = u64::from(pool.layout().config.ring_capacity);
            {
                let mut config = IpcpConfig::new(&iface);
                config.backend.mode = ModeChoice::Native;
                let mut ipcp = EthIpcp::open(pool, &config).expect("open receiver");
                ipcp.layer_mut().register(&net::NAME).expect("register");
                let ring = pool.ring_create(pool.pid(), pool.pid()).expect("ring");
                let start = StdInstant::now();
                shared.barrier.wait();
                let eid =
                    allocate_flow(1, &mut ipcp, ring, &shared, &clock(start), start + DEADLINE);
                shared.barrier.wait();
                while shared.keep_going.load(Ordering::SeqCst) {
                    check_abort(&shared, "receiving");
                    let activity = ipcp.poll(clock(start)()).expect("poll");
                    let s = ipcp.stats();
                    shared.received[1].store(s.delivered + s.ring_full, Ordering::Release);
                    if activity.is_idle() {
                        ipcp.wait(Duration::from_millis(1)).expect("wait");
                    }
                }
                let s = ipcp.stats();
                assert_eq!(s.delivered, capacity, "{s:?}");
                assert_eq!(s.ring_full, TOTAL - capacity, "{s:?}");
                // What was queued is intact and in order.
                let reader = pool.ring_reader(ring).expect("reader");
                for seq in 0..capacity {
                    let packet = reader.try_read().expect("queued SDU");
                    check_sdu(seq, packet.data()).unwrap();
                }
                assert!(
                    reader.try_read().is_err(),
                    "nothing beyond the ring's capacity"
                );
                eprintln!("{test}: receiver {}: {s:?}", ipcp.backend_info());
                shared.barrier.wait();
                ipcp.unbind_flow(eid);
                drop(ipcp);
                pool.ring_destroy(ring).expect("ring_destroy");
            }
            tp.assert_all_free();
        })
    };

    // Side 0 sends over AF_PACKET, one burst at a time.
    let sender = {
        let (iface, shared) = (pair.veth[0].clone(), shared.clone());
        spawn_in_netns(&pair.ns[0], move || {
            let _guard = AbortOnPanic(shared.clone());
            let tp = TestPool::new("tx");
            let pool = &tp.pool;
            {
                let mut config = IpcpConfig::new(&iface);
                config.backend.mode = ModeChoice::Packet;
                let mut ipcp = EthIpcp::open(pool, &config).expect("open sender");
                let ring = pool.ring_create(pool.pid(), pool.pid()).expect("ring");
                let start = StdInstant::now();
                shared.barrier.wait();
                let eid =
                    allocate_flow(0, &mut ipcp, ring, &shared, &clock(start), start + DEADLINE);
                shared.barrier.wait();
                let mut sent = 0;
                while sent < TOTAL {
                    check_abort(&shared, "sending");
                    assert!(start.elapsed() < DEADLINE, "receiver saw only {sent}");
                    if shared.received[1].load(Ordering::Acquire) == sent {
                        for _ in 0..BURST.min(TOTAL - sent) {
                            let mut packet = pool.try_alloc(sdu_len(sent)).expect("alloc");
                            fill_sdu(sent, packet.data_mut());
                            ipcp.send(eid, packet).map_err(|(_, e)| e).expect("send");
                            sent += 1;
                        }
                    }
                    ipcp.poll(clock(start)()).expect("poll");
                    std::thread::yield_now();
                }
                while shared.received[1].load(Ordering::Acquire) < TOTAL {
                    check_abort(&shared, "draining");
                    assert!(start.elapsed() < DEADLINE, "receiver stalled");
                    ipcp.poll(clock(start)()).expect("poll");
                    std::thread::sleep(Duration::from_millis(1));
                }
                shared.keep_going.store(false, Ordering::SeqCst);
                shared.barrier.wait();
                ipcp.unbind_flow(eid);
                drop(ipcp);
                pool.ring_destroy(ring).expect("ring_destroy");
            }
            tp.assert_all_free();
        })
    };
    let results = [sender.join(), receiver.join()];
    for r in results {
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
    }
}

#[test]
fn required_zero_copy_fails_cleanly_on_veth_and_auto_falls_back_to_packet() {
    let test = "required_zero_copy_fails_cleanly_on_veth_and_auto_falls_back_to_packet";
    if !can_run(test, true) {
        return;
    }
    let pair = NetnsPair::new(1500);
    let (ns, iface) = (pair.ns[0].clone(), pair.veth[0].clone());
    spawn_in_netns(&ns, move || {
        let tp = TestPool::new("zc");
        let mut config = IpcpConfig::new(&iface);
        config.backend.zero_copy = ZeroCopy::Require;
        for mode in [ModeChoice::Native, ModeChoice::Generic] {
            config.backend.mode = mode;
            match EthIpcp::open(&tp.pool, &config) {
                Err(IpcpError::Backend(BackendError::Xsk { step, source })) => {
                    assert_eq!(step, "bind", "{source}");
                    assert_eq!(source.raw_os_error(), Some(libc::EOPNOTSUPP), "{source}");
                }
                other => panic!("{mode:?} with zero-copy required on veth: {other:?}"),
            }
            // Every block the failed attempt put on the fill ring is back.
            tp.assert_all_free();
        }
        config.backend.mode = ModeChoice::Auto;
        let ipcp = EthIpcp::open(&tp.pool, &config).expect("auto");
        assert_eq!(ipcp.backend_info().kind, BackendKind::Packet);
        drop(ipcp);
        // The failed attempts detached their program.
        let out = run(&["ip", "-d", "link", "show", "dev", &iface]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("prog/xdp"), "{text}");
        tp.assert_all_free();
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

#[test]
fn exhausted_pool_drops_and_counts_in_packet_mode() {
    let test = "exhausted_pool_drops_and_counts_in_packet_mode";
    if !can_run(test, false) {
        return;
    }
    let pair = NetnsPair::new(1500);
    let shared = Shared::new();
    shared.keep_going.store(true, Ordering::SeqCst);
    const EACH: u64 = 100;

    // Side 1 receives over AF_PACKET; between the two batches it holds every block of its pool.
    let receiver = {
        let (iface, shared) = (pair.veth[1].clone(), shared.clone());
        spawn_in_netns(&pair.ns[1], move || {
            let _guard = AbortOnPanic(shared.clone());
            let tp = TestPool::new("rx");
            let pool = &tp.pool;
            {
                let mut config = IpcpConfig::new(&iface);
                config.backend.mode = ModeChoice::Packet;
                let mut ipcp = EthIpcp::open(pool, &config).expect("open receiver");
                ipcp.layer_mut().register(&net::NAME).expect("register");
                let ring = pool.ring_create(pool.pid(), pool.pid()).expect("ring");
                let reader = pool.ring_reader(ring).expect("reader");
                let start = StdInstant::now();
                shared.barrier.wait();
                let eid =
                    allocate_flow(1, &mut ipcp, ring, &shared, &clock(start), start + DEADLINE);
                // Take every free block (the backend keeps a few spares of its own).
                let mut hoard = Vec::new();
                while let Ok(p) = pool.try_alloc(1) {
                    hoard.push(p);
                }
                shared.barrier.wait();
                let (mut received, mut first_batch) = (0, 0);
                for batch in 0..2u64 {
                    // Let the sender send the batch, then wait for it to be all in.
                    shared.barrier.wait();
                    shared.barrier.wait();
                    let goal = (batch + 1) * EACH;
                    loop {
                        check_abort(&shared, "receiving");
                        assert!(start.elapsed() < DEADLINE, "{:?}", ipcp.backend_stats());
                        ipcp.poll(clock(start)()).expect("poll");
                        while let Ok(p) = reader.try_read() {
                            // Batch 0 loses frames while the pool is empty; batch 1 loses none.
                            let seq = u64::from_le_bytes(p.data()[..8].try_into().unwrap());
                            let expected = if batch == 0 {
                                seq.max(received)
                            } else {
                                received
                            };
                            check_sdu(expected, p.data()).unwrap_or_else(|e| {
                                panic!("batch {batch}: {e}; {:?}", ipcp.backend_stats())
                            });
                            received = seq + 1;
                            if batch == 0 {
                                first_batch += 1;
                            }
                        }
                        let b = ipcp.backend_stats();
                        if b.rx_frames + b.rx_no_buffer >= goal + 2 {
                            break;
                        }
                        ipcp.wait(Duration::from_millis(1)).expect("wait");
                    }
                    if batch == 0 {
                        drop(std::mem::take(&mut hoard));
                        received = EACH;
                    }
                }
                let b = ipcp.backend_stats();
                eprintln!("{test}: {b:?}, {:?}", ipcp.stats());
                // The first batch found no block beyond the backend's few spares; every frame
                // was counted either way and RX kept going.
                assert!(b.rx_no_buffer > 0, "{b:?}");
                assert_eq!(b.rx_frames + b.rx_no_buffer, 2 * EACH + 2, "{b:?}");
                assert!(
                    first_batch < EACH,
                    "{first_batch} delivered from an empty pool"
                );
                assert_eq!(received, 2 * EACH, "the second batch is delivered whole");
                ipcp.unbind_flow(eid);
                drop(ipcp);
                pool.ring_destroy(ring).expect("ring_destroy");
            }
            tp.assert_all_free();
        })
    };

    let sender = {
        let (iface, shared) = (pair.veth[0].clone(), shared.clone());
        spawn_in_netns(&pair.ns[0], move || {
            let _guard = AbortOnPanic(shared.clone());
            let tp = TestPool::new("tx");
            let pool = &tp.pool;
            {
                let mut config = IpcpConfig::new(&iface);
                config.backend.mode = ModeChoice::Packet;
                let mut ipcp = EthIpcp::open(pool, &config).expect("open sender");
                let ring = pool.ring_create(pool.pid(), pool.pid()).expect("ring");
                let start = StdInstant::now();
                shared.barrier.wait();
                let eid =
                    allocate_flow(0, &mut ipcp, ring, &shared, &clock(start), start + DEADLINE);
                shared.barrier.wait();
                for batch in 0..2u64 {
                    shared.barrier.wait();
                    for seq in batch * EACH..(batch + 1) * EACH {
                        let mut packet = pool.try_alloc(sdu_len(seq)).expect("alloc");
                        fill_sdu(seq, packet.data_mut());
                        ipcp.send(eid, packet).map_err(|(_, e)| e).expect("send");
                        ipcp.flush().expect("flush");
                    }
                    shared.barrier.wait();
                }
                ipcp.unbind_flow(eid);
                drop(ipcp);
                pool.ring_destroy(ring).expect("ring_destroy");
            }
            tp.assert_all_free();
        })
    };
    let results = [sender.join(), receiver.join()];
    for r in results {
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
    }
}
