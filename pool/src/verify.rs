//! The invariant checker behind [`Pool::verify`](crate::Pool::verify).

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use crate::desc::{DescWord, Place};
use crate::pool::{Pool, Report};
use crate::sys;

pub(crate) fn run(pool: &Pool) -> Report {
    let mut r = Report::default();
    let layout = pool.layout();
    let shards = layout.config.shards;

    // Free lists: each entry is a block of the class, of that shard, marked free, once.
    let mut stacked = HashSet::new();
    for (c, class) in layout.classes.iter().enumerate() {
        for s in 0..shards {
            let _guard = pool.lock_shard(c, s);
            let n = pool.shard_count(c, s);
            if n > class.stack_capacity {
                r.problems.push(format!(
                    "class {} shard {s}: count {n} > capacity",
                    class.block_size
                ));
                continue;
            }
            for k in 0..n {
                let index = pool.stack_slot(class, s, k).load(Ordering::Relaxed);
                if !class.contains(index) || class.shard_of(index) != s {
                    r.problems.push(format!(
                        "class {} shard {s}: stray entry {index}",
                        class.block_size
                    ));
                    continue;
                }
                let place = pool.place(index).map(|w| w.place);
                if place.as_ref().ok() != Some(&Place::Free { shard: s }) {
                    r.problems.push(format!(
                        "block {index} on shard {s}'s free list but is {place:?}"
                    ));
                }
                if !stacked.insert(index) {
                    r.problems
                        .push(format!("block {index} on a free list twice"));
                }
            }
        }
    }

    let queued = crate::ring::verify_rings(pool, &mut r.problems);
    let mut alive = std::collections::HashMap::new();
    let mut is_alive = |pid: u32| *alive.entry(pid).or_insert_with(|| sys::process_alive(pid));

    for index in 0..layout.total_blocks {
        let raw = pool.desc(index).word.load(Ordering::Acquire);
        let Some(w) = DescWord::decode(raw) else {
            r.problems
                .push(format!("block {index}: undecodable descriptor {raw:#x}"));
            continue;
        };
        if w.holds == 0 && w.holder != 0 {
            r.problems
                .push(format!("block {index}: holder {} with no holds", w.holder));
        }
        if w.holds > 0 && !is_alive(w.holder) {
            r.problems
                .push(format!("block {index}: held by dead process {}", w.holder));
        }
        match w.place {
            Place::Free { .. } => {
                r.free += 1;
                if !stacked.contains(&index) {
                    r.problems
                        .push(format!("block {index} is marked free but on no free list"));
                }
                if w.holds != 0 {
                    r.problems
                        .push(format!("block {index} is free with {} holds", w.holds));
                }
            }
            Place::Owned { pid } => {
                r.owned += 1;
                if !is_alive(pid) {
                    r.problems
                        .push(format!("block {index} owned by dead process {pid}"));
                }
            }
            Place::Kernel { pid } => {
                r.lent += 1;
                if !is_alive(pid) {
                    r.problems.push(format!(
                        "block {index} lent to the kernel by dead process {pid}"
                    ));
                }
            }
            Place::Ring { ring } => {
                r.queued += 1;
                if !queued.contains(&index) {
                    // A writer killed between marking a block queued and publishing it leaves
                    // this; `reclaim` of that writer returns the block.
                    match pool.ring_ends(ring) {
                        Ok((producer, _)) if !is_alive(producer) => r.problems.push(format!(
                            "block {index} marked queued on ring {ring} but not in it, left by \
                             its writer, dead process {producer}"
                        )),
                        _ => r.problems.push(format!(
                            "block {index} marked queued on ring {ring} but not in it"
                        )),
                    }
                }
            }
            Place::Cached { pid } => {
                r.cached += 1;
                if !is_alive(pid) {
                    r.problems
                        .push(format!("block {index} cached by dead process {pid}"));
                }
                if w.holds != 0 {
                    r.problems
                        .push(format!("block {index} is cached with {} holds", w.holds));
                }
            }
            Place::Held => {
                r.held += 1;
                if w.holds == 0 {
                    r.problems.push(format!("block {index} held with no holds"));
                }
            }
        }
    }
    r
}
