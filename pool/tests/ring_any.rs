//! Sleeping on many rings at once (`RingReader::arm`, `wait_any`, `Bell`): a write or a flag on
//! any armed ring wakes the sleeper at once, also from another process; nothing is missed
//! between arming and sleeping; a disarmed ring costs its writer nothing.

mod util;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use o7s_pool::{Bell, Error, PoolConfig, RingFlags, WAIT_ANY_MAX, wait_any};
use util::{assert_verified, create};

fn me() -> u32 {
    std::process::id()
}

/// Long enough that a test only passes this way if the wake-up failed.
const LONG: Duration = Duration::from_secs(10);

#[test]
fn a_write_on_any_armed_ring_wakes_the_sleeper() {
    let (_n, pool) = create("any-write", &PoolConfig::small());
    let rings: Vec<u32> = (0..3)
        .map(|_| pool.ring_create(me(), me()).expect("ring"))
        .collect();
    let readers: Vec<_> = rings
        .iter()
        .map(|&r| pool.ring_reader(r).expect("reader"))
        .collect();
    let writer = pool.ring_writer(rings[2]).expect("writer");
    let bell = Bell::new();
    let arms: Vec<_> = readers.iter().map(|r| r.arm()).collect();
    assert!(arms.iter().all(|a| !a.is_ready()), "nothing written yet");
    let mut words = vec![bell.word()];
    words.extend(arms.iter().map(|a| a.word()));
    let woke = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            let p = pool.try_alloc(10).expect("alloc");
            writer.try_write(p).expect("write");
        });
        let start = Instant::now();
        let woke = wait_any(&words, Some(LONG)).expect("wait_any");
        (woke, start.elapsed())
    });
    assert_eq!(woke.0, Some(3), "woken by the third ring (word 3)");
    assert!(
        woke.1 >= Duration::from_millis(40) && woke.1 < LONG / 2,
        "slept {:?}",
        woke.1
    );
    assert!(arms[2].is_ready() && !arms[0].is_ready() && !arms[1].is_ready());
    drop(arms);
    let p = readers[2].try_read().expect("the packet is there");
    assert_eq!(p.len(), 10);
    drop(p);
    assert_verified(&pool);
}

#[test]
fn a_flag_on_an_armed_ring_wakes_the_sleeper() {
    let (_n, pool) = create("any-flag", &PoolConfig::small());
    let r = pool.ring_create(me(), me()).expect("ring");
    let reader = pool.ring_reader(r).expect("reader");
    let arm = reader.arm();
    let words = [arm.word()];
    let woke = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(30));
            pool.ring_set_flags(r, RingFlags::FLOW_DOWN).expect("flag");
        });
        wait_any(&words, Some(LONG)).expect("wait_any")
    });
    assert_eq!(woke, Some(0));
    assert!(
        arm.is_ready(),
        "a ring that is down is ready (its read fails at once)"
    );
}

#[test]
fn a_write_between_arming_and_sleeping_is_not_missed() {
    let (_n, pool) = create("any-race", &PoolConfig::small());
    let r = pool.ring_create(me(), me()).expect("ring");
    let reader = pool.ring_reader(r).expect("reader");
    let writer = pool.ring_writer(r).expect("writer");
    for _ in 0..200 {
        let arm = reader.arm();
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let p = pool.try_alloc(1).expect("alloc");
                writer.try_write(p).expect("write");
                done.store(true, Ordering::SeqCst);
            });
            // Whenever the write lands (before the check, during it, or after it): either
            // the check sees it or the wait returns for it; never the full timeout.
            if !arm.is_ready() {
                let start = Instant::now();
                let woke = wait_any(&[arm.word()], Some(LONG)).expect("wait_any");
                assert_eq!(woke, Some(0), "after {:?}", start.elapsed());
            }
        });
        assert!(done.load(Ordering::SeqCst));
        drop(arm);
        drop(reader.try_read().expect("read the packet"));
    }
    assert_verified(&pool);
}

#[test]
fn a_disarmed_ring_costs_its_writer_nothing() {
    let (_n, pool) = create("any-disarm", &PoolConfig::small());
    let r = pool.ring_create(me(), me()).expect("ring");
    let reader = pool.ring_reader(r).expect("reader");
    let writer = pool.ring_writer(r).expect("writer");
    // Armed: a write moves the word (the writer wakes it).
    let arm = reader.arm();
    let armed_word = arm.word();
    writer
        .try_write(pool.try_alloc(1).expect("alloc"))
        .expect("write");
    assert!(armed_word.changed(), "an armed ring's write moves its word");
    drop(arm);
    drop(reader.try_read().expect("read"));
    // Disarmed: writes leave the word alone (no futex wake-up for the writer).
    let word = reader.arm().word(); // armed and dropped at once: the word as it is now
    for _ in 0..5 {
        writer
            .try_write(pool.try_alloc(1).expect("alloc"))
            .expect("write");
    }
    assert!(
        !word.changed(),
        "a disarmed ring's writes must not touch its word"
    );
    for _ in 0..5 {
        drop(reader.try_read().expect("read"));
    }
    // Two arms at once (say, two sleeping threads): dropping one keeps the other armed.
    let a = reader.arm();
    let b = reader.arm();
    drop(a);
    let word = b.word();
    writer
        .try_write(pool.try_alloc(1).expect("alloc"))
        .expect("write");
    assert!(word.changed(), "the remaining arm still gets wake-ups");
    drop(b);
    drop(reader.try_read().expect("read"));
    assert_verified(&pool);
}

#[test]
fn an_arm_outliving_its_ring_leaves_the_next_flows_sleepers_counted() {
    let (_n, pool) = create("any-remade", &PoolConfig::small());
    let r = pool.ring_create(me(), me()).expect("ring");
    let stale = pool.ring_reader(r).expect("reader").arm();
    pool.ring_destroy(r).expect("destroy");
    // The same ring made anew for another flow, whose reader arms it.
    let again = pool.ring_create(me(), me()).expect("ring again");
    assert_eq!(again, r, "the freed ring is the first free one");
    let reader = pool.ring_reader(again).expect("reader");
    let writer = pool.ring_writer(again).expect("writer");
    let arm = reader.arm();
    // The old flow's arm goes: it must not take the new sleeper out of the count.
    drop(stale);
    let word = arm.word();
    writer
        .try_write(pool.try_alloc(1).expect("alloc"))
        .expect("write");
    assert!(word.changed(), "the new flow's sleeper still gets wake-ups");
    drop(arm);
    drop(reader.try_read().expect("read"));
    pool.ring_destroy(again).expect("destroy");
    assert_verified(&pool);
}

#[test]
fn the_bell_wakes_and_a_quiet_wait_times_out() {
    let (_n, pool) = create("any-bell", &PoolConfig::small());
    let r = pool.ring_create(me(), me()).expect("ring");
    let reader = pool.ring_reader(r).expect("reader");
    let arm = reader.arm();
    let bell = Bell::new();
    let start = Instant::now();
    let quiet = wait_any(&[bell.word(), arm.word()], Some(Duration::from_millis(60)));
    let slept = start.elapsed();
    assert_eq!(quiet.expect("wait_any"), None);
    assert!(
        slept >= Duration::from_millis(55),
        "a quiet wait lasts its timeout, slept {slept:?}"
    );
    let words = [bell.word(), arm.word()];
    let woke = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(30));
            bell.ring();
        });
        wait_any(&words, Some(LONG)).expect("wait_any")
    });
    assert_eq!(woke, Some(0));
    // A word that moved before the wait returns at once.
    let stale = bell.word();
    bell.ring();
    let start = Instant::now();
    assert_eq!(wait_any(&[stale], Some(LONG)).expect("wait_any"), Some(0));
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn word_counts_outside_the_kernel_limit_are_refused() {
    let bell = Bell::new();
    assert!(matches!(wait_any(&[], None), Err(Error::BadConfig(_))));
    let many = vec![bell.word(); WAIT_ANY_MAX + 1];
    assert!(matches!(
        wait_any(&many, Some(Duration::ZERO)),
        Err(Error::BadConfig(_))
    ));
    let most = vec![bell.word(); WAIT_ANY_MAX];
    assert_eq!(
        wait_any(&most, Some(Duration::from_millis(1))).expect("128 words are fine"),
        None
    );
}

#[test]
fn a_write_from_another_process_wakes_the_sleeper() {
    let mut cfg = PoolConfig::small();
    cfg.classes[2].blocks = 256;
    let (name, pool) = create("any-2proc", &cfg);
    let mut producer = util::spawn_with_stdin(&["produce", &name.0, "-", "1"]);
    // Four rings the child could write; it is told the third.
    let rings: Vec<u32> = (0..4)
        .map(|_| pool.ring_create(producer.id(), me()).expect("ring"))
        .collect();
    let readers: Vec<_> = rings
        .iter()
        .map(|&r| pool.ring_reader(r).expect("reader"))
        .collect();
    let arms: Vec<_> = readers.iter().map(|r| r.arm()).collect();
    let words: Vec<_> = arms.iter().map(|a| a.word()).collect();
    util::tell(&mut producer, rings[2]);
    let start = Instant::now();
    let woke = loop {
        // A spurious return (a signal) would be None; the child writes within seconds.
        match wait_any(&words, Some(LONG)).expect("wait_any") {
            Some(i) => break i,
            None => assert!(start.elapsed() < LONG, "no wake-up from the child"),
        }
    };
    assert_eq!(woke, 2);
    assert!(start.elapsed() < LONG);
    drop(arms);
    util::wait_ok(producer, Duration::from_secs(30));
    let p = readers[2].try_read().expect("the child's packet");
    assert_eq!(p.len(), 8);
    drop(p);
    for &r in &rings {
        pool.ring_destroy(r).expect("destroy");
    }
    assert_verified(&pool);
}
