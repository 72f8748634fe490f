//! Property tests over every index, address and length conversion: no input panics, and every
//! accepted value stays inside the pool.

mod util;

use std::sync::OnceLock;

use o7s_pool::{ClassConfig, Layout, Pool, PoolConfig};
use proptest::prelude::*;
use util::{ShmName, assert_verified};

fn shared_pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        // A static is never dropped: unlink the name now, the mapping stays valid.
        let (name, pool) = util::create("conv", &PoolConfig::small());
        drop(name);
        pool
    })
}

fn config() -> impl Strategy<Value = PoolConfig> {
    (
        prop::collection::btree_map(8u32..21, 0u32..3000, 0..8),
        1u32..3000,
        prop_oneof![4 => 1u32..17, 1 => 0u32..100],
        0u32..40,
        prop_oneof![4 => Just(1024u32), 4 => Just(4096), 1 => any::<u32>()],
        0u32..5000,
        0u32..100,
    )
        .prop_map(
            |(mut classes, frames, shards, rings, ring_capacity, headroom, tailroom)| PoolConfig {
                classes: {
                    classes.insert(12, frames);
                    classes
                        .into_iter()
                        .map(|(log, blocks)| ClassConfig {
                            block_size: 1 << log,
                            blocks,
                        })
                        .collect()
                },
                shards,
                rings,
                ring_capacity,
                headroom,
                tailroom,
            },
        )
}

proptest! {
    #[test]
    fn layouts_keep_blocks_apart_and_inside(cfg in config()) {
        let valid_shape = cfg.shards >= 1 && cfg.shards <= 16 && cfg.ring_capacity.is_power_of_two()
            && cfg.ring_capacity >= 1024 && cfg.ring_capacity <= 1 << 20 && cfg.headroom + cfg.tailroom < 1 << 12;
        let l = match Layout::compute(&cfg) {
            Ok(l) => l,
            Err(e) => {
                prop_assert!(!valid_shape, "valid config refused: {e}");
                return Ok(());
            }
        };
        let mut spans: Vec<(u64, u64)> = l.classes.iter()
            .map(|k| (k.data_offset, k.data_offset + u64::from(k.block_size) * u64::from(k.blocks)))
            .collect();
        spans.sort();
        for w in spans.windows(2) {
            prop_assert!(w[0].1 <= w[1].0, "classes overlap");
        }
        prop_assert!(spans.last().map_or(0, |s| s.1) <= l.data_len as u64);
        prop_assert_eq!(l.data_offset % 4096, 0);
        prop_assert!(l.data_offset + l.data_len <= l.total_len);
        let frame = l.classes[l.frame_class];
        prop_assert_eq!((frame.first_index, frame.data_offset), (0, 0));
        for k in &l.classes {
            for i in [0, k.blocks / 2, k.blocks - 1] {
                let index = k.first_index + i;
                let off = l.block_offset(index).expect("offset");
                prop_assert_eq!(l.block_at(off), Some((index, 0)));
                prop_assert_eq!(l.block_at(off + u64::from(k.block_size) - 1), Some((index, k.block_size - 1)));
            }
        }
        prop_assert_eq!(l.block_offset(l.total_blocks), None);
    }

    #[test]
    fn foreign_indices_and_addresses_are_refused(index: u32, addr: u64, offset: u32) {
        let pool = shared_pool();
        let total = pool.layout().total_blocks;
        if index >= total {
            prop_assert!(pool.place(index).is_err());
            prop_assert!(pool.release(index).is_err());
            prop_assert!(pool.hold(index).is_err());
            prop_assert!(pool.unhold(index).is_err());
            prop_assert!(pool.packet(index).is_err());
            prop_assert!(pool.take_from_kernel(index).is_err());
            prop_assert!(pool.lend_to_kernel(index).is_err());
            prop_assert!(pool.umem_addr(index, offset).is_err());
        } else {
            // A free block belongs to nobody: every ownership call is refused.
            prop_assert!(pool.release(index).is_err());
            prop_assert!(pool.packet(index).is_err());
            prop_assert!(pool.take_from_kernel(index).is_err());
            if let Ok(a) = pool.umem_addr(index, offset) {
                prop_assert!(a < pool.umem().len as u64);
            }
        }
        match pool.block_at_umem_addr(addr) {
            Ok((i, off)) => {
                prop_assert!(i < total);
                prop_assert_eq!(pool.umem_addr(i, off).expect("inverse"), addr);
            }
            Err(_) => prop_assert!(addr >= pool.umem().len as u64 || pool.layout().block_at(addr).is_none()),
        }
    }

    #[test]
    fn packet_window_operations_never_escape_the_block(
        len in 0usize..70000,
        ops in prop::collection::vec((0u8..6, 0usize..70000, 0usize..70000), 0..40),
    ) {
        let pool = shared_pool();
        let Ok(mut p) = pool.try_alloc(len) else { return Ok(()) };
        let cap = p.capacity();
        for (op, a, b) in ops {
            let before = (p.head(), p.tail());
            let ok = match op {
                0 => p.push_head(a).map(|s| s.len() == a).unwrap_or(false),
                1 => p.pull_head(a).is_ok(),
                2 => p.push_tail(a).map(|s| s.len() == a).unwrap_or(false),
                3 => p.pull_tail(a).is_ok(),
                4 => { p.truncate(a); true }
                _ => p.set_bounds(a, b).is_ok(),
            };
            if !ok {
                prop_assert_eq!((p.head(), p.tail()), before, "a refused call changes nothing");
            }
            prop_assert!(p.head() <= p.tail() && p.tail() as usize <= cap);
            prop_assert_eq!(p.data().len(), p.len());
        }
        drop(p);
    }
}

#[test]
fn the_shared_test_pool_is_consistent_after_the_properties() {
    assert_verified(shared_pool());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// The fuzz oracle over random call sequences (the cargo-fuzz target runs the same).
    #[test]
    fn random_call_sequences_keep_the_pool_consistent(data in prop::collection::vec(any::<u8>(), 0..2000)) {
        let name = ShmName::new("fuzz-ops");
        o7s_pool::fuzzing::run_ops(&name.0, &data);
    }
}
