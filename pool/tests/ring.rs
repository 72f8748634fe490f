//! Flow rings: single-process semantics, wrap-around, flags, and two real processes.

mod util;

use std::time::{Duration, Instant};

use o7s_pool::{Error, PoolConfig, RingFlags};
use proptest::prelude::*;
use util::{assert_verified, create};

fn me() -> u32 {
    std::process::id()
}

#[test]
fn write_then_read_keeps_bytes_and_order() {
    let (_n, pool) = create("ring-basic", &PoolConfig::small());
    let r = pool.ring_create(me(), me()).expect("ring");
    let w = pool.ring_writer(r).expect("writer");
    let rd = pool.ring_reader(r).expect("reader");
    for n in 0..10u8 {
        let mut p = pool.try_alloc(n as usize + 1).expect("alloc");
        p.data_mut().fill(n);
        w.try_write(p).expect("write");
    }
    assert_eq!(pool.ring_len(r).expect("len"), 10);
    assert_eq!(pool.verify().queued, 10);
    assert_verified(&pool);
    for n in 0..10u8 {
        let p = rd.try_read().expect("read");
        assert_eq!(p.data(), vec![n; n as usize + 1].as_slice());
    }
    assert!(matches!(rd.try_read(), Err(Error::WouldBlock { .. })));
    assert_verified(&pool);
}

#[test]
fn only_the_named_ends_get_handles() {
    let (_n, pool) = create("ring-ends", &PoolConfig::small());
    let r = pool.ring_create(1, 2).expect("ring");
    assert!(pool.ring_writer(r).is_err());
    assert!(pool.ring_reader(r).is_err());
    assert!(pool.ring_writer(999).is_err());
    pool.ring_destroy(r).expect("destroy");
    assert!(pool.ring_reader(r).is_err());
}

#[test]
fn full_ring_hands_the_packet_back() {
    let mut cfg = PoolConfig::small();
    cfg.classes[0].blocks = 2048;
    let (_n, pool) = create("ring-full", &cfg);
    let r = pool.ring_create(me(), me()).expect("ring");
    let w = pool.ring_writer(r).expect("writer");
    for _ in 0..1024 {
        w.try_write(pool.try_alloc_with(1, 0).expect("alloc"))
            .expect("write");
    }
    let p = pool.try_alloc_with(1, 0).expect("alloc");
    let index = p.index();
    let (p, e) = w.try_write(p).expect_err("full");
    assert!(e.is_would_block());
    assert_eq!(p.index(), index);
    let t = Instant::now();
    let (p, e) = w
        .write(p, Some(Duration::from_millis(30)))
        .expect_err("still full");
    assert!(matches!(e, Error::TimedOut { .. }) && t.elapsed() >= Duration::from_millis(30));
    drop(p);
    assert_eq!(pool.ring_destroy(r).expect("destroy"), 1024);
    assert_verified(&pool);
}

#[test]
fn flags_stop_writes_and_end_reads_after_draining() {
    let (_n, pool) = create("ring-flags", &PoolConfig::small());
    let r = pool.ring_create(me(), me()).expect("ring");
    let w = pool.ring_writer(r).expect("writer");
    let rd = pool.ring_reader(r).expect("reader");
    w.try_write(pool.try_alloc(1).expect("alloc"))
        .expect("write");
    pool.ring_set_flags(r, RingFlags::FLOW_DOWN).expect("flags");
    let (_p, e) = w
        .try_write(pool.try_alloc(1).expect("alloc"))
        .expect_err("down");
    assert!(matches!(e, Error::FlowDown));
    rd.try_read().expect("queued data still readable");
    assert!(matches!(rd.try_read(), Err(Error::FlowDown)));
    assert!(matches!(rd.read(None), Err(Error::FlowDown)));
    pool.ring_clear_flags(r, RingFlags::FLOW_DOWN)
        .expect("clear");
    pool.ring_set_flags(r, RingFlags::READ_ONLY).expect("ro");
    let (_p, e) = w
        .try_write(pool.try_alloc(1).expect("alloc"))
        .expect_err("ro");
    assert!(matches!(e, Error::ReadOnly));
    // A writer-side flag must not turn a blocking read into a spin past its deadline.
    let t = Instant::now();
    assert!(matches!(
        rd.read(Some(Duration::from_millis(50))),
        Err(Error::TimedOut { .. })
    ));
    assert!(t.elapsed() < Duration::from_secs(5));
    pool.ring_set_flags(r, RingFlags::PEER_GONE).expect("gone");
    assert!(matches!(rd.try_read(), Err(Error::PeerGone)));
    assert_verified(&pool);
}

#[test]
fn blocked_reader_is_woken_by_a_flag() {
    let (_n, pool) = create("ring-wake-flag", &PoolConfig::small());
    let r = pool.ring_create(me(), me()).expect("ring");
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let rd = pool.ring_reader(r).expect("reader");
            rd.read(Some(Duration::from_secs(10))).map(|p| p.index())
        });
        std::thread::sleep(Duration::from_millis(50));
        pool.ring_set_flags(r, RingFlags::FLOW_DOWN).expect("flag");
        let t = Instant::now();
        assert!(matches!(h.join().expect("join"), Err(Error::FlowDown)));
        assert!(t.elapsed() < Duration::from_secs(5));
    });
}

#[test]
fn batches() {
    let mut cfg = PoolConfig::small();
    cfg.classes[0].blocks = 2048;
    let (_n, pool) = create("ring-batch", &cfg);
    let r = pool.ring_create(me(), me()).expect("ring");
    let w = pool.ring_writer(r).expect("writer");
    let rd = pool.ring_reader(r).expect("reader");
    let indices: Vec<u32> = (0..1500)
        .map(|_| pool.try_alloc_with(4, 0).expect("alloc").into_index())
        .collect();
    assert_eq!(w.try_write_batch(&indices).expect("batch"), 1024);
    assert!(
        w.try_write_batch(&indices[1024..])
            .expect_err("full")
            .is_would_block()
    );
    let mut out = vec![0u32; 700];
    assert_eq!(rd.try_read_batch(&mut out).expect("read"), 700);
    assert_eq!(&out[..], &indices[..700]);
    assert_eq!(w.try_write_batch(&indices[1024..]).expect("batch"), 476);
    let mut rest = vec![0u32; 2000];
    assert_eq!(rd.try_read_batch(&mut rest).expect("read"), 800);
    assert_eq!(&rest[..324], &indices[700..1024]);
    assert_eq!(&rest[324..800], &indices[1024..]);
    // A block not owned by the writer is refused, and nothing is queued for it.
    assert!(
        w.try_write_batch(&[indices[0]]).is_ok(),
        "reader owns it now, in this process"
    );
    for index in out.iter().chain(&rest[..800]).skip(1) {
        pool.release(*index).expect("release");
    }
    assert!(w.try_write_batch(&[indices[5]]).is_err());
    assert_eq!(pool.ring_destroy(r).expect("destroy"), 1);
    assert_verified(&pool);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Positions near u32::MAX wrap correctly: counts, order and fullness all hold.
    #[test]
    fn positions_wrap_around(start in (u32::MAX - 3000)..=u32::MAX, ops in prop::collection::vec(0u16..1100, 1..12)) {
        let mut cfg = PoolConfig::small();
        cfg.classes[0].blocks = 1100;
        let (_n, pool) = create("ring-wrap", &cfg);
        let r = pool.ring_create(me(), me()).expect("ring");
        pool.ring_set_position(r, start).expect("position");
        let w = pool.ring_writer(r).expect("writer");
        let rd = pool.ring_reader(r).expect("reader");
        let mut model = std::collections::VecDeque::new();
        let mut out = vec![0u32; 1100];
        for (k, n) in ops.into_iter().enumerate() {
            if k % 2 == 0 {
                let mut batch = Vec::new();
                for _ in 0..n {
                    match pool.try_alloc_with(1, 0) {
                        Ok(p) => batch.push(p.into_index()),
                        Err(_) => break,
                    }
                }
                let pushed = w.try_write_batch(&batch).unwrap_or(0);
                prop_assert_eq!(pushed, batch.len().min(1024 - model.len()));
                model.extend(&batch[..pushed]);
                for &i in &batch[pushed..] { pool.release(i).expect("release"); }
            } else {
                let got = rd.try_read_batch(&mut out[..n as usize]).expect("read");
                prop_assert_eq!(got, (n as usize).min(model.len()));
                for &i in &out[..got] {
                    prop_assert_eq!(Some(i), model.pop_front());
                    pool.release(i).expect("release");
                }
            }
            prop_assert_eq!(pool.ring_len(r).expect("len") as usize, model.len());
        }
        let report = pool.verify();
        prop_assert!(report.is_ok(), "{:?}", report.problems);
        prop_assert_eq!(pool.ring_destroy(r).expect("destroy"), model.len());
    }
}

#[test]
fn two_processes_move_100k_packets_in_order() {
    let mut cfg = PoolConfig::small();
    cfg.classes[2].blocks = 2048; // the frame class
    let (name, pool) = create("ring-2proc", &cfg);
    let count = "100000";
    let mut producer = util::spawn_with_stdin(&["produce", &name.0, "-", count]);
    let mut consumer = util::spawn_with_stdin(&["consume", &name.0, "-", count]);
    let r = pool
        .ring_create(producer.id(), consumer.id())
        .expect("ring");
    util::tell(&mut producer, r);
    util::tell(&mut consumer, r);
    let p = util::wait_ok(producer, Duration::from_secs(120));
    let c = util::wait_ok(consumer, Duration::from_secs(120));
    assert!(c.contains("consumed 100000"), "{p}{c}");
    pool.ring_destroy(r).expect("destroy");
    assert_verified(&pool);
    pool.flush_caches();
    assert_eq!(pool.verify().free, pool.layout().total_blocks);
}
