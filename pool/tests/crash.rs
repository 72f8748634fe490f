//! Crash safety: processes SIGKILLed at random moments (and one inside a critical section)
//! never corrupt the pool or wedge the survivors, and `reclaim` + `verify` account for every
//! block afterwards.

mod util;

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::time::{Duration, Instant};

use o7s_pool::{Pool, PoolConfig};
use rand::{Rng, SeedableRng, rngs::StdRng};
use util::{ShmName, assert_verified, create, spawn, spawn_with_stdin, tell};

fn crash_config() -> PoolConfig {
    let mut cfg = PoolConfig::small();
    cfg.classes[0].blocks = 256;
    cfg.classes[2].blocks = 2048;
    cfg
}

#[test]
fn killed_inside_a_critical_section_is_repaired() {
    let (name, pool) = create("crash-lock", &crash_config());
    let mut child = spawn(&["hang-in-lock", &name.0]);
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "locked");
    child.kill().expect("kill");
    child.wait().expect("wait");
    // The dead process left shard 0 of the smallest class locked, its stack scribbled on and
    // one block half-allocated. The next user must repair, not just carry on.
    assert!(
        pool.reclaim(child.id()) >= 1,
        "the half-allocated block comes back"
    );
    assert_verified(&pool);
    let all: Vec<_> = std::iter::from_fn(|| pool.try_alloc_with(1, 0).ok())
        .take_while(|p| p.capacity() == 256)
        .collect();
    assert_eq!(
        all.len(),
        256,
        "every block of the class is allocatable again"
    );
    drop(all);
    assert_verified(&pool);
}

struct RingPair {
    ring: u32,
    producer: Child,
    consumer: Child,
}

fn start_pair(pool: &Pool, name: &str) -> RingPair {
    let mut producer = spawn_with_stdin(&["produce", name, "-", "1000000000"]);
    let mut consumer = spawn_with_stdin(&["consume", name, "-", "1000000000"]);
    let ring = pool
        .ring_create(producer.id(), consumer.id())
        .expect("ring");
    tell(&mut producer, ring);
    tell(&mut consumer, ring);
    RingPair {
        ring,
        producer,
        consumer,
    }
}

/// Waits for a child that should end by itself; a hang fails the test.
fn wait_exit(mut child: Child, limit: Duration, what: &str) -> String {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} hung");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = child.wait_with_output().expect("output");
    assert_ne!(out.status.code(), Some(3), "{what} saw corrupt data");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn two_hundred_random_sigkills() {
    let cfg = crash_config();
    let (name, pool) = create("crash-storm", &cfg);
    let stop = ShmName::new("stop");
    let stopfile = std::env::temp_dir().join(&stop.0);
    let stopfile = stopfile.to_str().expect("utf-8 temp dir").to_owned();
    let seed = rand::rng().random::<u64>();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let storm = |rng: &mut StdRng| {
        spawn(&[
            "storm",
            &name.0,
            &rng.random::<u64>().to_string(),
            &stopfile,
        ])
    };
    let mut storms: Vec<Child> = (0..3).map(|_| storm(&mut rng)).collect();
    let mut pair = start_pair(&pool, &name.0);
    let mut kills = 0;
    while kills < 200 {
        std::thread::sleep(Duration::from_micros(rng.random_range(200..8000)));
        let victim = rng.random_range(0..5);
        if victim < 3 {
            let mut child = std::mem::replace(&mut storms[victim], storm(&mut rng));
            child.kill().expect("kill");
            child.wait().expect("wait");
            pool.reclaim(child.id());
        } else {
            let old = std::mem::replace(&mut pair, start_pair(&pool, &name.0));
            let (mut dead, survivor, what) = if victim == 3 {
                (old.producer, old.consumer, "consumer")
            } else {
                (old.consumer, old.producer, "producer")
            };
            dead.kill().expect("kill");
            dead.wait().expect("wait");
            pool.reclaim(dead.id());
            // The survivor sees the peer gone and ends by itself, having lost nothing it had.
            let err = wait_exit(survivor, Duration::from_secs(20), what);
            assert!(
                err.is_empty() || err.contains("gone") || err.contains("down"),
                "{what}: {err}"
            );
            pool.ring_destroy(old.ring).expect("destroy");
        }
        kills += 1;
    }
    std::fs::write(&stopfile, b"stop").expect("stop file");
    for child in storms {
        let out = wait_exit(child, Duration::from_secs(30), "storm");
        assert!(out.is_empty(), "storm failed: {out}");
    }
    let _ = std::fs::remove_file(&stopfile);
    for mut child in [pair.producer, pair.consumer] {
        child.kill().expect("kill");
        child.wait().expect("wait");
        pool.reclaim(child.id());
    }
    pool.ring_destroy(pair.ring).expect("destroy");
    assert_verified(&pool);
    pool.flush_caches();
    let report = pool.verify();
    assert_eq!(report.free, pool.layout().total_blocks, "{report:?}");
}

#[test]
fn reclaim_leaves_blocks_queued_for_a_live_reader() {
    let (name, pool) = create("crash-queued", &crash_config());
    let mut producer = spawn_with_stdin(&["produce", &name.0, "-", "1000000000"]);
    let r = pool
        .ring_create(producer.id(), std::process::id())
        .expect("ring");
    tell(&mut producer, r);
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.ring_len(r).expect("len") < 1024 {
        assert!(Instant::now() < deadline, "producer never filled the ring");
        std::thread::sleep(Duration::from_millis(1));
    }
    producer.kill().expect("kill");
    producer.wait().expect("wait");
    pool.reclaim(producer.id());
    // Everything it queued is still there, intact and in order; only then does the flow end.
    let reader = pool.ring_reader(r).expect("reader");
    for n in 0..1024u64 {
        let p = reader
            .try_read()
            .expect("queued packet survives its writer");
        assert_eq!(p.data()[..8], n.to_le_bytes(), "packet {n}");
        assert_eq!(p.len(), 8 + (n % 1500) as usize);
    }
    assert!(matches!(reader.try_read(), Err(o7s_pool::Error::PeerGone)));
    pool.ring_destroy(r).expect("destroy");
    assert_verified(&pool);
    pool.flush_caches(); // the packets read here went to this process's local cache
    assert_eq!(pool.verify().free, pool.layout().total_blocks);
}

/// A process that holds every shard lock (stopped, or malicious: a per-user pool is writable by
/// its user) cannot make `try_alloc_nowait` wait; once it dies, the same call repairs the
/// shards (EOWNERDEAD) and finds every block.
#[test]
fn nowait_allocation_skips_held_shard_locks_and_repairs_after_death() {
    let (name, pool) = create("nowait", &PoolConfig::small());
    let mut child = spawn(&["hold-locks", &name.0]);
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "locked", "the holder says it holds every lock");
    for _ in 0..1000 {
        let start = Instant::now();
        let got = pool.try_alloc_nowait(1);
        assert!(
            matches!(got, Err(ref e) if e.is_would_block()),
            "every shard is held: {got:?}"
        );
        assert!(start.elapsed() < Duration::from_millis(100), "did not wait");
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    // Headroom 256 + 1 byte + tailroom: every class but the smallest fits.
    let fitting: u32 = pool.layout().classes[1..].iter().map(|c| c.blocks).sum();
    let all: Vec<_> = std::iter::from_fn(|| pool.try_alloc_nowait(1).ok())
        .take(fitting as usize + 1)
        .collect();
    assert_eq!(
        all.len(),
        fitting as usize,
        "every shard repaired and usable again"
    );
    drop(all);
    assert_verified(&pool);
}
