//! Fuzz oracle: interprets bytes as a sequence of pool calls, many with arbitrary indices,
//! lengths and offsets, on a small pool; no call may panic, and after everything it took is
//! given back the pool must verify with every block free. Used by `pool/fuzz` and by a property
//! test, so `cargo test` exercises it too.

use crate::{Access, Pool, PoolConfig, RingFlags};

/// Runs the byte-driven call sequence on a fresh pool named `name` (unlinked afterwards).
/// Panics (the fuzz failure) only if an invariant is broken.
pub fn run_ops(name: &str, data: &[u8]) {
    let _ = Pool::unlink(name);
    // The frame class is large enough to have a local cache, so cached blocks are fuzzed too.
    let mut config = PoolConfig::small();
    config.classes[2].blocks = 1024;
    let pool = match Pool::create(name, &config, Access::Shared) {
        Ok(p) => p,
        Err(e) => panic!("cannot create fuzz pool {name}: {e}"),
    };
    let _ = Pool::unlink(name);
    let me = pool.pid();
    let ring = pool.ring_create(me, me).ok();
    let mut live = Vec::new();
    let mut loose: Vec<u32> = Vec::new();
    let mut held: Vec<u32> = Vec::new();
    let mut lent: Vec<u32> = Vec::new();
    let mut bytes = data.chunks_exact(5);
    for chunk in &mut bytes {
        let op = chunk[0];
        let a = u32::from_le_bytes([chunk[1], chunk[2], chunk[3], chunk[4]]);
        let n = a as usize;
        match op % 16 {
            0 | 1 => {
                if let Ok(p) = pool.try_alloc(n % 70_000) {
                    live.push(p);
                }
            }
            2 => {
                if !live.is_empty() {
                    live.swap_remove(n % live.len());
                }
            }
            3 => {
                if let Some(p) = live.last_mut() {
                    let _ = p.push_head(n % 5000);
                }
            }
            4 => {
                if let Some(p) = live.last_mut() {
                    let _ = p.push_tail(n % 70_000);
                }
            }
            5 => {
                if let Some(p) = live.last_mut() {
                    let _ = p.pull_head(n % 5000);
                    let _ = p.pull_tail((n >> 8) % 5000);
                }
            }
            6 => {
                if let Some(p) = live.last_mut() {
                    let _ = p.set_bounds(n & 0xffff, (n >> 16) & 0xffff);
                    assert!(p.head() <= p.tail() && p.tail() as usize <= p.capacity());
                }
            }
            7 => {
                if let Some(p) = live.last()
                    && p.hold().is_ok()
                {
                    held.push(p.index());
                }
            }
            8 => {
                if !held.is_empty() {
                    let index = held.swap_remove(n % held.len());
                    assert!(pool.unhold(index).is_ok(), "unhold of a held block failed");
                }
            }
            9 => {
                // Arbitrary index: every ownership call must be refused or be legitimate.
                let _ = pool.place(a);
                let _ = pool.umem_addr(a, a >> 3);
                let _ = pool.block_at_umem_addr(u64::from(a) * 7);
                if pool.release(a).is_ok() {
                    // Only possible for a block we own: drop our handle's claim on it.
                    if let Some(pos) = live.iter().position(|p| p.index() == a) {
                        std::mem::forget(live.swap_remove(pos));
                    } else if let Some(pos) = loose.iter().position(|&i| i == a) {
                        loose.swap_remove(pos);
                    } else {
                        panic!("released block {a} that this run never owned");
                    }
                }
            }
            10 => {
                if let (Some(r), Some(p)) = (ring, live.pop())
                    && let Ok(w) = pool.ring_writer(r)
                    && let Err((p, _)) = w.try_write(p)
                {
                    live.push(p);
                }
            }
            11 => {
                if let Some(r) = ring
                    && let Ok(rd) = pool.ring_reader(r)
                {
                    let mut out = [0u32; 8];
                    let k = rd.try_read_batch(&mut out[..n % 8]).unwrap_or(0);
                    loose.extend_from_slice(&out[..k]);
                }
            }
            12 => {
                if let Some(p) = live.pop() {
                    let index = p.into_index();
                    if pool.lend_to_kernel(index).is_ok() {
                        lent.push(index);
                    } else {
                        loose.push(index);
                    }
                }
            }
            13 => {
                if !lent.is_empty() {
                    let index = lent.swap_remove(n % lent.len());
                    let p = pool.take_from_kernel(index);
                    assert!(p.is_ok(), "take back a lent block");
                    if let Ok(p) = p {
                        live.push(p);
                    }
                }
            }
            14 => {
                if let Some(r) = ring {
                    let _ = pool.ring_set_flags(r, a & 7);
                    let _ = pool.ring_clear_flags(r, (a >> 3) & 7);
                }
            }
            _ => {
                if pool.hold(a).is_ok() {
                    assert!(pool.unhold(a).is_ok(), "unhold right after hold");
                }
                let _ = pool.packet(a).map(std::mem::forget);
            }
        }
    }
    drop(live);
    for index in loose {
        assert!(
            pool.release(index).is_ok(),
            "release of a block read from the ring"
        );
    }
    for index in lent {
        let _ = pool.take_from_kernel(index);
    }
    for index in held {
        assert!(pool.unhold(index).is_ok(), "final unhold");
    }
    if let Some(r) = ring {
        let _ = pool.ring_clear_flags(
            r,
            RingFlags::FLOW_DOWN | RingFlags::READ_ONLY | RingFlags::PEER_GONE,
        );
        let _ = pool.ring_destroy(r);
    }
    let report = pool.verify();
    assert!(report.is_ok(), "verify: {:?}", report.problems);
    pool.flush_caches();
    let report = pool.verify();
    assert_eq!(report.free, pool.layout().total_blocks, "{report:?}");
}
