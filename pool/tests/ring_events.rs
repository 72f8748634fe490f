//! Rings posting to event sets: a reader watching its ring hears of every packet a writer
//! process publishes and of the flow's end; a writer waiting for room hears once when there is
//! some; a full queue is flagged, never silently short.

mod util;

use std::process::Command;
use std::time::{Duration, Instant};

use o7s_pool::{Event, EventSet, EventSetConfig, POST_LOCK_PATIENCE, PoolConfig, RingFlags};
use proptest::prelude::*;
use util::{assert_verified, create, spawn_with_stdin, tell, wait_ok};

fn me() -> u32 {
    std::process::id()
}

fn cfg(capacity: u32) -> EventSetConfig {
    EventSetConfig {
        queues: 4,
        capacity,
        max_flows: 64,
    }
}

/// Takes every pending event of queue 0.
fn take(set: &EventSet) -> (Vec<Event>, bool) {
    let mut out = Vec::new();
    let o = set.try_take(0, &mut out).expect("take");
    (out, o.overflowed)
}

fn packets(key: u32, n: usize) -> Vec<Event> {
    vec![
        Event {
            flow: key,
            kind: Event::PACKET,
        };
        n
    ]
}

/// The pid of a process that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait");
    pid
}

fn shm_exists(name: &str) -> bool {
    std::path::Path::new("/dev/shm").join(name).exists()
}

#[test]
fn a_writer_process_posts_one_event_per_packet_to_the_readers_set() {
    const COUNT: usize = 3000;
    let (_n, pool) = create("ev-writer", &PoolConfig::small());
    let set = EventSet::create_for(&pool, cfg(1024)).expect("set");
    set.add(0, 7).expect("add");
    let mut child = spawn_with_stdin(&["produce", pool.name(), "-", &COUNT.to_string()]);
    let ring = pool.ring_create(child.id(), me()).expect("ring");
    pool.ring_watch(ring, &set, 7).expect("watch");
    assert_eq!(pool.ring_watcher(ring).expect("watcher"), set.token());
    tell(&mut child, ring);
    // Read as events come: the producer runs ahead of us by at most the free blocks.
    let reader = pool.ring_reader(ring).expect("reader");
    let (mut events, mut read) = (Vec::new(), 0usize);
    let deadline = Instant::now() + Duration::from_secs(30);
    while read < COUNT {
        assert!(
            Instant::now() < deadline,
            "{read} read, {} events",
            events.len()
        );
        let o = set
            .wait(0, &mut events, Some(Duration::from_secs(10)))
            .expect("events come");
        assert!(!o.overflowed, "the reader keeps up: no overflow");
        while reader.try_read().is_ok() {
            read += 1;
        }
    }
    wait_ok(child, Duration::from_secs(10));
    set.try_take(0, &mut events).expect("take");
    assert_eq!(events, packets(7, COUNT), "exactly one event per packet");
    pool.ring_destroy(ring).expect("destroy");
    assert_verified(&pool);
}

#[test]
fn a_full_queue_is_flagged_overflowed() {
    let (_n, pool) = create("ev-overflow", &PoolConfig::small());
    let set = EventSet::create_for(&pool, cfg(8)).expect("set");
    set.add(0, 3).expect("add");
    let mut child = spawn_with_stdin(&["produce", pool.name(), "-", "20"]);
    let ring = pool.ring_create(child.id(), me()).expect("ring");
    pool.ring_watch(ring, &set, 3).expect("watch");
    tell(&mut child, ring);
    wait_ok(child, Duration::from_secs(10));
    let (events, overflowed) = take(&set);
    assert_eq!(events, packets(3, 8), "what fits is kept");
    assert!(overflowed, "the rest is flagged, not silently lost");
    assert_eq!(take(&set), (vec![], false), "the flag is reported once");
    pool.ring_destroy(ring).expect("destroy");
    assert_verified(&pool);
}

#[test]
fn flags_post_dealloc_up_and_peer_once_each() {
    let (_n, pool) = create("ev-flags", &PoolConfig::small());
    let set = EventSet::create_for(&pool, cfg(64)).expect("set");
    set.add(0, 1).expect("add");
    set.add(0, 2).expect("add");
    let ring = pool.ring_create(me(), me()).expect("ring");
    pool.ring_watch(ring, &set, 1).expect("watch");
    pool.ring_set_flags(ring, RingFlags::FLOW_DOWN)
        .expect("down");
    pool.ring_set_flags(ring, RingFlags::FLOW_DOWN)
        .expect("down again");
    pool.ring_set_flags(ring, RingFlags::READ_ONLY)
        .expect("read-only");
    pool.ring_clear_flags(ring, RingFlags::FLOW_DOWN | RingFlags::READ_ONLY)
        .expect("up");
    let ev = |flow, kind| Event { flow, kind };
    assert_eq!(
        take(&set),
        (vec![ev(1, Event::DEALLOC), ev(1, Event::UP)], false)
    );

    // A dead writer: reclaim flags the ring PEER_GONE and the live reader hears it.
    let dead = dead_pid();
    let from_dead = pool.ring_create(dead, me()).expect("ring");
    pool.ring_watch(from_dead, &set, 2).expect("watch");
    pool.reclaim(dead);
    assert_eq!(take(&set), (vec![ev(2, Event::PEER)], false));
    for r in [ring, from_dead] {
        pool.ring_destroy(r).expect("destroy");
    }
    assert_verified(&pool);
}

#[test]
fn unwatched_rings_post_nothing() {
    let (_n, pool) = create("ev-unwatch", &PoolConfig::small());
    let set = EventSet::create_for(&pool, cfg(64)).expect("set");
    set.add(0, 5).expect("add");
    let ring = pool.ring_create(me(), me()).expect("ring");
    let w = pool.ring_writer(ring).expect("writer");
    w.try_write(pool.try_alloc(1).expect("alloc"))
        .expect("write");
    assert_eq!(take(&set), (vec![], false), "not watched yet");
    pool.ring_watch(ring, &set, 5).expect("watch");
    w.try_write(pool.try_alloc(1).expect("alloc"))
        .expect("write");
    pool.ring_unwatch(ring, &set, 6)
        .expect("another key: still watched");
    assert_eq!(pool.ring_watcher(ring).expect("watcher"), set.token());
    pool.ring_unwatch(ring, &set, 5).expect("unwatch");
    w.try_write(pool.try_alloc(1).expect("alloc"))
        .expect("write");
    assert_eq!(take(&set), (packets(5, 1), false));
    assert_eq!(pool.ring_watcher(ring).expect("watcher"), 0);
    pool.ring_destroy(ring).expect("destroy");
    assert_verified(&pool);
}

#[test]
fn only_the_own_set_of_the_right_end_may_watch() {
    let (_n, pool) = create("ev-who", &PoolConfig::small());
    let (other_name, other_pool) = create("ev-who-other", &PoolConfig::small());
    let set = EventSet::create_for(&pool, cfg(64)).expect("set");
    let foreign = EventSet::create_for(&other_pool, cfg(64)).expect("set");
    let plain_name = util::ShmName::new("ev-plain");
    let plain = EventSet::create(&plain_name.0, cfg(64), None).expect("set");
    let not_mine = pool.ring_create(1, 2).expect("ring");
    let mine = pool.ring_create(me(), me()).expect("ring");
    assert!(
        pool.ring_watch(not_mine, &set, 1).is_err(),
        "not its reader"
    );
    assert!(
        pool.ring_watch_space(not_mine, &set, 1).is_err(),
        "not its writer"
    );
    assert!(
        pool.ring_watch(mine, &foreign, 1).is_err(),
        "another pool's"
    );
    assert!(pool.ring_watch(mine, &plain, 1).is_err(), "not a ring set");
    assert!(pool.ring_watch(99, &set, 1).is_err(), "no such ring");
    pool.ring_watch(mine, &set, 1).expect("watch");
    drop(other_name);
}

#[test]
fn a_space_watch_fires_once_when_the_reader_takes() {
    let mut pool_cfg = PoolConfig::small();
    pool_cfg.classes[0].blocks = 2048;
    let (_n, pool) = create("ev-space", &pool_cfg);
    let set = EventSet::create_for(&pool, cfg(64)).expect("set");
    set.add(0, 9).expect("add");
    let ring = pool.ring_create(me(), me()).expect("ring");
    assert!(
        pool.ring_watch_space(ring, &set, 9).expect("arm"),
        "room already: nothing armed"
    );
    let w = pool.ring_writer(ring).expect("writer");
    let r = pool.ring_reader(ring).expect("reader");
    let cap = pool.layout().config.ring_capacity;
    let mut batch = Vec::new();
    for _ in 0..cap {
        batch.push(pool.try_alloc_with(1, 0).expect("alloc").into_index());
    }
    assert_eq!(w.try_write_batch(&batch).expect("fill"), cap as usize);
    assert!(!pool.ring_writable(ring).expect("writable"));
    assert!(!pool.ring_watch_space(ring, &set, 9).expect("arm"), "armed");
    assert_eq!(take(&set), (vec![], false));
    drop(r.try_read().expect("read"));
    let writable = Event {
        flow: 9,
        kind: Event::WRITABLE,
    };
    assert_eq!(take(&set), (vec![writable], false), "fired once");
    drop(r.try_read().expect("read"));
    assert_eq!(take(&set), (vec![], false), "one-shot");

    // Armed again on a full ring, then the flow goes down: the waiting writer hears it.
    let p = pool.try_alloc_with(1, 0).expect("alloc");
    w.try_write(p).expect("write");
    let p = pool.try_alloc_with(1, 0).expect("alloc");
    w.try_write(p).expect("write");
    assert!(!pool.ring_watch_space(ring, &set, 9).expect("arm"));
    pool.ring_set_flags(ring, RingFlags::FLOW_DOWN)
        .expect("down");
    assert_eq!(take(&set), (vec![writable], false));
    assert!(
        pool.ring_writable(ring).expect("writable"),
        "writes fail at once"
    );
    pool.ring_destroy(ring).expect("destroy");
    assert_verified(&pool);
}

#[test]
fn sets_are_unlinked_on_drop_and_a_dead_process_sets_by_reclaim() {
    let (_n, pool) = create("ev-names", &PoolConfig::small());
    let set = EventSet::create_for(&pool, cfg(4)).expect("set");
    let name = set.name().to_owned();
    assert_eq!(name, EventSet::name_for(pool.name(), me(), set.token()));
    assert!(shm_exists(&name));
    drop(set);
    assert!(!shm_exists(&name), "unlinked with its handle");

    let dead = dead_pid();
    let left = EventSet::name_for(pool.name(), dead, 0xabc);
    let _guard = util::ShmName(left.clone());
    drop(EventSet::create(&left, cfg(4), None).expect("set"));
    assert!(shm_exists(&left));
    pool.reclaim(dead);
    assert!(!shm_exists(&left), "reclaim removes a dead process's sets");
}

#[test]
fn a_set_the_ring_names_but_that_is_gone_costs_nothing_and_loses_nothing_live() {
    // The reader's set disappears (its handle dropped without unwatching): writes still work.
    let (_n, pool) = create("ev-gone", &PoolConfig::small());
    let set = EventSet::create_for(&pool, cfg(4)).expect("set");
    set.add(0, 1).expect("add");
    let ring = pool.ring_create(me(), me()).expect("ring");
    pool.ring_watch(ring, &set, 1).expect("watch");
    drop(set);
    let w = pool.ring_writer(ring).expect("writer");
    for _ in 0..3 {
        w.try_write(pool.try_alloc(1).expect("alloc"))
            .expect("write");
    }
    assert_eq!(pool.ring_len(ring).expect("len"), 3);
    pool.ring_destroy(ring).expect("destroy");
    assert_verified(&pool);
}

/// After posts to `set` (watching `ring` with key 2) gave up on its lock: nothing was stored
/// and the queue says events were lost; the next post gets the lock and delivers (the set is
/// not stuck any more). Then the ring goes and the pool verifies.
fn the_loss_was_flagged_and_the_next_post_delivers(
    pool: &o7s_pool::Pool,
    set: &EventSet,
    w: &o7s_pool::RingWriter<'_>,
    ring: u32,
) {
    assert_eq!(take(set), (vec![], true));
    w.try_write(pool.try_alloc(1).expect("alloc"))
        .expect("write");
    assert_eq!(take(set), (packets(2, 1), false));
    pool.ring_destroy(ring).expect("destroy");
    assert_verified(pool);
}

/// Runs `f` while another thread holds `set`'s lock (as a stopped process inside a post
/// would), and lets go after it, also when `f` panics.
fn while_another_thread_holds_the_lock(set: &EventSet, f: impl FnOnce()) {
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        // Moved in: should `f` panic, unwinding drops it and the holder lets go (else the
        // scope would wait for the holder forever).
        let release_tx = release_tx;
        s.spawn(move || {
            set.debug_with_lock_held(|| {
                locked_tx.send(()).expect("send");
                let _ = release_rx.recv();
            });
        });
        locked_rx.recv().expect("the holder has the lock");
        f();
        drop(release_tx);
    });
}

#[test]
fn a_post_never_hangs_on_a_set_whose_lock_stays_taken() {
    let (_n, pool) = create("ev-stuck", &PoolConfig::small());
    let set = EventSet::create_for(&pool, cfg(8)).expect("set");
    set.add(0, 2).expect("add");
    let ring = pool.ring_create(me(), me()).expect("ring");
    pool.ring_watch(ring, &set, 2).expect("watch");
    let w = pool.ring_writer(ring).expect("writer");
    while_another_thread_holds_the_lock(&set, || {
        let t = Instant::now();
        w.try_write(pool.try_alloc(1).expect("alloc"))
            .expect("the write itself succeeds");
        let first = t.elapsed();
        assert!(
            first >= POST_LOCK_PATIENCE && first < Duration::from_secs(1),
            "the first post tried for the lock, then gave up: {first:?}"
        );
        // The set is now stuck for this process: later posts try the lock once, no more (20
        // waiting posts would take 20 x 50 ms).
        let t = Instant::now();
        for _ in 0..20 {
            w.try_write(pool.try_alloc(1).expect("alloc"))
                .expect("write");
        }
        assert!(
            t.elapsed() < POST_LOCK_PATIENCE * 10,
            "20 posts to a stuck set took {:?} (each waited?)",
            t.elapsed()
        );
        assert_eq!(
            set.notify(2, Event::PACKET).expect("notify"),
            o7s_pool::Notified::Overflowed
        );
    });
    the_loss_was_flagged_and_the_next_post_delivers(&pool, &set, &w, ring);
}

#[test]
fn a_post_to_another_users_set_gives_up_on_its_lock_at_once() {
    if !util::is_root() {
        eprintln!("skipped: needs root to give the set to another uid");
        return;
    }
    let (_n, pool) = create("ev-untrusted", &PoolConfig::small());
    let set = EventSet::create_for(&pool, cfg(8)).expect("set");
    set.add(0, 2).expect("add");
    // The set's object belongs to another user, who could hold its lock on purpose.
    std::os::unix::fs::chown(format!("/dev/shm/{}", set.name()), Some(65534), None).expect("chown");
    let ring = pool.ring_create(me(), me()).expect("ring");
    pool.ring_watch(ring, &set, 2).expect("watch");
    let w = pool.ring_writer(ring).expect("writer");
    while_another_thread_holds_the_lock(&set, || {
        let t = Instant::now();
        w.try_write(pool.try_alloc(1).expect("alloc"))
            .expect("the write itself succeeds");
        let took = t.elapsed();
        assert!(
            took < POST_LOCK_PATIENCE / 2,
            "the post waited {took:?} for another user's lock (patience {:?})",
            o7s_pool::UNTRUSTED_POST_PATIENCE
        );
    });
    the_loss_was_flagged_and_the_next_post_delivers(&pool, &set, &w, ring);
}

#[test]
fn a_set_that_could_not_be_opened_is_tried_again_and_the_loss_flagged() {
    let (_n, pool) = create("ev-retry", &PoolConfig::small());
    let set = EventSet::create_for(&pool, cfg(8)).expect("set");
    set.add(0, 3).expect("add");
    let ring = pool.ring_create(me(), me()).expect("ring");
    pool.ring_watch(ring, &set, 3).expect("watch");
    let w = pool.ring_writer(ring).expect("writer");
    // The set's name is away: the writer cannot open it (first use).
    let path = format!("/dev/shm/{}", set.name());
    let away = format!("{path}.away");
    std::fs::rename(&path, &away).expect("rename away");
    let before = o7s_pool::undelivered_posts();
    w.try_write(pool.try_alloc(1).expect("alloc"))
        .expect("write");
    assert!(
        o7s_pool::undelivered_posts() > before,
        "the loss is counted"
    );
    std::fs::rename(&away, &path).expect("rename back");
    // Retried after OPEN_RETRY at the latest: the next posts are delivered, and the queue
    // says some were lost before.
    std::thread::sleep(o7s_pool::OPEN_RETRY + Duration::from_millis(20));
    w.try_write(pool.try_alloc(1).expect("alloc"))
        .expect("write");
    assert_eq!(take(&set), (packets(3, 1), true));
    w.try_write(pool.try_alloc(1).expect("alloc"))
        .expect("write");
    assert_eq!(take(&set), (packets(3, 1), false));
    pool.ring_destroy(ring).expect("destroy");
    assert_verified(&pool);
}

#[derive(Clone, Debug)]
enum Op {
    Write(u32),
    Read(u32),
    Watch,
    Unwatch,
    Take,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u32..12).prop_map(Op::Write),
        (1u32..12).prop_map(Op::Read),
        Just(Op::Watch),
        Just(Op::Unwatch),
        Just(Op::Take),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Against a model: while watched, each packet is one event; a queue past its capacity
    /// keeps what fits and says it overflowed; taking empties it.
    #[test]
    fn events_follow_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let (_n, pool) = create("ev-prop", &PoolConfig::small());
        let capacity = 16;
        let set = EventSet::create_for(&pool, cfg(capacity)).expect("set");
        set.add(0, 4).expect("add");
        let ring = pool.ring_create(me(), me()).expect("ring");
        let w = pool.ring_writer(ring).expect("writer");
        let r = pool.ring_reader(ring).expect("reader");
        let (mut watched, mut pending, mut overflowed) = (false, 0u32, false);
        for op in ops {
            match op {
                Op::Write(n) => {
                    // As many as the pool has blocks for (the model counts what was written).
                    let batch: Vec<u32> = (0..n)
                        .map_while(|_| pool.try_alloc_with(1, 0).ok().map(|p| p.into_index()))
                        .collect();
                    let n = batch.len() as u32;
                    if n > 0 {
                        prop_assert_eq!(w.try_write_batch(&batch).expect("write"), n as usize);
                    }
                    if watched {
                        let fit = n.min(capacity - pending);
                        overflowed |= fit < n;
                        pending += fit;
                    }
                }
                Op::Read(n) => {
                    for _ in 0..n {
                        if r.try_read().is_err() {
                            break;
                        }
                    }
                }
                Op::Watch => {
                    pool.ring_watch(ring, &set, 4).expect("watch");
                    watched = true;
                }
                Op::Unwatch => {
                    pool.ring_unwatch(ring, &set, 4).expect("unwatch");
                    watched = false;
                }
                Op::Take => {
                    prop_assert_eq!(take(&set), (packets(4, pending as usize), overflowed));
                    pending = 0;
                    overflowed = false;
                }
            }
        }
        prop_assert_eq!(take(&set), (packets(4, pending as usize), overflowed));
        pool.ring_destroy(ring).expect("destroy");
        assert_verified(&pool);
    }
}
