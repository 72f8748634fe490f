//! The per-process limit on flow sets, and the life of the process's event set. In a test
//! binary of its own: it takes every set this process may have.

mod util;

use o7s::fqueue::MAX_SETS;
use o7s::{Error, FlowSet, FlowSetError};
use util::{client, irmd};

/// This process's event sets in /dev/shm.
fn own_event_sets() -> Vec<String> {
    let tag = format!(".ev.{}.", std::process::id());
    std::fs::read_dir("/dev/shm")
        .expect("/dev/shm")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.contains(&tag))
        .collect()
}

#[test]
fn a_process_has_at_most_32_flow_sets_over_one_event_set() {
    let host = irmd();
    let me = client(&host);
    let other_client = client(&host);
    let mut sets: Vec<FlowSet> = (0..MAX_SETS)
        .map(|k| {
            let c = if k % 2 == 0 { &me } else { &other_client };
            FlowSet::new(c).expect("set")
        })
        .collect();
    assert!(matches!(
        FlowSet::new(&me),
        Err(Error::FlowSet(FlowSetError::TooManySets))
    ));
    assert_eq!(
        own_event_sets().len(),
        1,
        "one event set for all: {:?}",
        own_event_sets()
    );
    sets.pop();
    let again = FlowSet::new(&me).expect("a dropped set's queue is free again");
    drop(sets);
    assert_eq!(own_event_sets().len(), 1);
    drop(again);
    assert_eq!(
        own_event_sets(),
        Vec::<String>::new(),
        "gone with the last set"
    );
}
