//! Single-process behaviour of the pool, packets and references.

mod util;

use std::time::{Duration, Instant};

use o7s_pool::{Error, FRAME_SIZE, Place, Pool, PoolConfig};
use util::{assert_verified, create};

#[test]
fn create_open_and_layout() {
    let (name, pool) = create("layout", &PoolConfig::small());
    let other = Pool::open(&name.0).expect("open");
    assert_eq!(other.layout(), pool.layout());
    let umem = pool.umem();
    assert_eq!(umem.chunk_size, FRAME_SIZE);
    assert_eq!(umem.base as usize % 4096, 0);
    assert_eq!(umem.len % 4096, 0);
    assert_eq!(umem.frames, 128);
    assert_verified(&pool);
    let free = pool.verify().free;
    assert_eq!(free, pool.layout().total_blocks);
}

#[test]
fn create_twice_fails_and_open_missing_names_the_object() {
    let (name, _pool) = create("twice", &PoolConfig::small());
    let err = Pool::create(&name.0, &PoolConfig::small(), o7s_pool::Access::Shared).unwrap_err();
    assert!(err.to_string().contains(&name.0), "{err}");
    let err = Pool::open("o7s-test-no-such-pool").unwrap_err();
    assert!(err.to_string().contains("o7s-test-no-such-pool"), "{err}");
}

#[test]
fn open_rejects_a_foreign_object() {
    let name = util::ShmName::new("foreign");
    let path = format!("/dev/shm/{}", name.0);
    std::fs::write(&path, vec![7u8; 8192]).expect("write");
    match Pool::open(&name.0) {
        Err(Error::NotReady { .. } | Error::Corrupt { .. }) => {}
        other => panic!("expected a clear refusal, got {other:?}"),
    }
}

#[test]
fn allocation_picks_the_smallest_fitting_class() {
    let (_n, pool) = create("classes", &PoolConfig::small());
    let h = 256 + 32;
    for (len, size) in [
        (0, 1024usize),
        (1, 1024),
        (1024 - h, 1024),
        (1024 - h + 1, 4096),
        (65536 - h, 65536),
    ] {
        let p = pool.try_alloc(len).expect("alloc");
        assert_eq!(p.capacity(), size, "len {len}");
        assert_eq!(p.len(), len);
        assert_eq!(p.headroom(), 256);
        assert!(p.tailroom() >= 32);
    }
    let err = pool.try_alloc(65536).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { len: 65536, max } if max == 65536 - h),
        "{err}"
    );
    assert_verified(&pool);
}

#[test]
fn smallest_class_can_hold_small_packets() {
    let (_n, pool) = create("tiny", &PoolConfig::small());
    // With the default 256-byte headroom nothing fits the 256-byte class; a small headroom does.
    let p = pool.try_alloc_with(100, 64).expect("alloc");
    assert_eq!((p.capacity(), p.headroom(), p.len()), (256, 64, 100));
    assert!(matches!(
        pool.try_alloc_with(usize::MAX, 64),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn headroom_and_tailroom_push_and_pull() {
    let (_n, pool) = create("room", &PoolConfig::small());
    let mut p = pool.try_alloc(100).expect("alloc");
    p.data_mut().fill(0xab);
    p.push_head(18)
        .expect("eth header")
        .copy_from_slice(&[1; 18]);
    assert_eq!(p.len(), 118);
    assert_eq!(p.data()[0], 1);
    p.push_tail(16).expect("tag").fill(2);
    assert_eq!(p.len(), 134);
    p.pull_head(18).expect("strip");
    p.pull_tail(16).expect("strip");
    assert!(p.data().iter().all(|&b| b == 0xab));
    assert!(matches!(
        p.push_head(1000),
        Err(Error::NoRoom {
            what: "headroom",
            ..
        })
    ));
    let room = p.tailroom();
    assert!(matches!(
        p.push_tail(room + 1),
        Err(Error::NoRoom {
            what: "tailroom",
            ..
        })
    ));
    assert!(matches!(p.pull_head(101), Err(Error::NoRoom { .. })));
    p.truncate(10);
    assert_eq!(p.len(), 10);
    let cap = p.capacity();
    p.set_bounds(0, cap).expect("whole block");
    assert_eq!(p.len(), cap);
    assert!(p.set_bounds(5, 4).is_err());
    assert!(p.set_bounds(0, cap + 1).is_err());
}

#[test]
fn exhaustion_would_block_then_recovers() {
    let (_n, pool) = create("exhaust", &PoolConfig::small());
    let mut held = Vec::new();
    loop {
        match pool.try_alloc(3000) {
            Ok(p) => held.push(p),
            Err(e) => {
                assert!(e.is_would_block(), "{e}");
                break;
            }
        }
    }
    // 4096 class (128) then the 64 KiB class (8) as fallback.
    assert_eq!(held.len(), 136);
    let t = Instant::now();
    assert!(matches!(
        pool.alloc(3000, Some(Duration::from_millis(50))),
        Err(Error::TimedOut { .. })
    ));
    assert!(t.elapsed() >= Duration::from_millis(50));
    held.pop();
    pool.try_alloc(3000).expect("freed block is reusable");
    drop(held);
    assert_verified(&pool);
}

#[test]
fn blocking_alloc_is_woken_by_a_free() {
    let (_n, pool) = create("wake", &PoolConfig::small());
    let mut held: Vec<_> = std::iter::from_fn(|| pool.try_alloc(3000).ok()).collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(30));
            held.pop();
        });
        let t = Instant::now();
        pool.alloc(3000, Some(Duration::from_secs(5)))
            .expect("woken");
        assert!(t.elapsed() < Duration::from_secs(4));
    });
}

#[test]
fn holds_keep_a_block_alive_and_double_free_is_an_error() {
    let (_n, pool) = create("holds", &PoolConfig::small());
    let p = pool.try_alloc(10).expect("alloc");
    let index = p.index();
    p.hold().expect("hold");
    p.hold().expect("hold twice");
    drop(p);
    let w = pool.place(index).expect("place");
    assert_eq!((w.place, w.holds), (Place::Held, 2));
    assert!(matches!(pool.release(index), Err(Error::NotOwner { .. })));
    pool.unhold(index).expect("unhold");
    assert_verified(&pool);
    pool.unhold(index).expect("last unhold frees");
    assert!(matches!(
        pool.place(index).expect("place").place,
        Place::Free { .. }
    ));
    assert!(pool.unhold(index).is_err());
    assert!(pool.hold(index).is_err());
    assert!(matches!(pool.release(index), Err(Error::NotOwner { .. })));
    assert!(matches!(pool.release(u32::MAX), Err(Error::BadIndex(_))));
    assert_verified(&pool);
}

#[test]
fn kernel_lending_round_trip() {
    let (_n, pool) = create("kernel", &PoolConfig::small());
    let p = pool.try_alloc_frame().expect("frame");
    assert_eq!(p.capacity(), 4096);
    let index = p.into_index();
    pool.lend_to_kernel(index).expect("lend");
    assert_eq!(pool.verify().lent, 1);
    assert!(
        pool.release(index).is_err(),
        "a lent block cannot be released"
    );
    let addr = pool.umem_addr(index, 256).expect("addr");
    assert_eq!(addr, u64::from(index) * 4096 + 256);
    assert_eq!(pool.block_at_umem_addr(addr).expect("block"), (index, 256));
    let mut p = pool.take_from_kernel(index).expect("take");
    p.set_bounds(256 + 18, 256 + 100).expect("bounds");
    assert_eq!(p.len(), 82);
    drop(p);
    assert_verified(&pool);
}

#[test]
fn umem_addresses_cover_every_class_without_straddling_chunks() {
    let (_n, pool) = create("umem", &PoolConfig::small());
    let umem = pool.umem();
    for index in 0..pool.layout().total_blocks {
        let addr = pool.umem_addr(index, 0).expect("addr");
        assert!(addr < umem.len as u64);
        let (_, class) = pool.layout().class_of(index).expect("class");
        if class.block_size <= FRAME_SIZE {
            let last = addr + u64::from(class.block_size) - 1;
            assert_eq!(addr / 4096, last / 4096, "block {index} straddles a chunk");
        }
        assert_eq!(pool.block_at_umem_addr(addr + 7).expect("back"), (index, 7));
    }
    assert!(pool.block_at_umem_addr(umem.len as u64).is_err());
    assert!(pool.umem_addr(pool.layout().total_blocks, 0).is_err());
    assert!(pool.umem_addr(0, 4096).is_err());
}

#[test]
fn config_defaults_create() {
    let (_n, pool) = create("defaults", &PoolConfig::shared_default());
    assert_eq!(pool.umem().frames, 16384);
    assert_verified(&pool);
}

#[test]
fn local_cache_serves_repeat_allocations_and_gives_everything_back() {
    let mut cfg = PoolConfig::small();
    cfg.classes[2].blocks = 1024; // the frame class: a 16-block local cache
    let (name, pool) = create("cache", &cfg);
    let p = pool.try_alloc(3000).expect("alloc");
    let first = p.index();
    drop(p);
    let report = pool.verify();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(report.cached >= 1, "{report:?}");
    // The block just freed is reused first, without a trip through the shared lists.
    assert_eq!(pool.try_alloc(3000).expect("alloc").index(), first);
    // A cached block is free: no one may hold, release or claim it.
    assert!(pool.hold(first).is_err());
    assert!(pool.release(first).is_err());
    assert!(pool.packet(first).is_err());
    // Everything remains allocatable from this handle, cache included.
    let all: Vec<_> = std::iter::from_fn(|| pool.try_alloc(3000).ok()).collect();
    assert_eq!(all.len(), 1024 + 8, "every 4096 and 64 KiB block");
    drop(all);
    pool.flush_caches();
    let report = pool.verify();
    assert_eq!(
        (report.cached, report.free),
        (0, pool.layout().total_blocks)
    );
    // Dropping a handle flushes its cache too.
    let other = Pool::open(&name.0).expect("open");
    drop(other.try_alloc(3000).expect("alloc"));
    assert!(pool.verify().cached >= 1);
    drop(other);
    assert_eq!(pool.verify().cached, 0);
}
