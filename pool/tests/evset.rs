//! Event sets: many flows, one waiter, and no silent loss when a queue fills.

mod util;

use std::time::{Duration, Instant};

use o7s_pool::{Event, EventSet, EventSetConfig, Notified};
use util::ShmName;

fn set(cfg: EventSetConfig) -> (ShmName, EventSet) {
    let name = ShmName::new("evset");
    let set = EventSet::create(&name.0, cfg, None).expect("create");
    (name, set)
}

#[test]
fn events_reach_the_queue_watching_the_flow() {
    let (name, set) = set(EventSetConfig::default());
    let other = EventSet::open(&name.0).expect("open");
    set.add(0, 7).expect("add");
    set.add(1, 8).expect("add");
    assert!(set.add(1, 7).is_err(), "a flow is in one queue only");
    assert_eq!(other.notify(7, 1).expect("notify"), Notified::Queued);
    assert_eq!(other.notify(8, 2).expect("notify"), Notified::Queued);
    assert_eq!(other.notify(9, 3).expect("notify"), Notified::NotWatched);
    let mut out = Vec::new();
    let o = set
        .wait(0, &mut out, Some(Duration::from_secs(1)))
        .expect("wait");
    assert_eq!(
        (out.as_slice(), o.overflowed),
        (&[Event { flow: 7, kind: 1 }][..], false)
    );
    out.clear();
    set.try_take(1, &mut out).expect("take");
    assert_eq!(out, [Event { flow: 8, kind: 2 }]);
    set.remove(7).expect("remove");
    assert_eq!(other.notify(7, 1).expect("notify"), Notified::NotWatched);
    assert!(set.add(99, 1).is_err());
    assert!(set.add(0, 1 << 30).is_err());
}

#[test]
fn a_full_queue_flags_overflow_instead_of_losing_silently() {
    let (_n, set) = set(EventSetConfig {
        queues: 1,
        capacity: 4,
        max_flows: 16,
    });
    set.add(0, 1).expect("add");
    for _ in 0..4 {
        assert_eq!(set.notify(1, 1).expect("notify"), Notified::Queued);
    }
    assert_eq!(set.notify(1, 1).expect("notify"), Notified::Overflowed);
    let mut out = Vec::new();
    let o = set.wait(0, &mut out, None).expect("wait");
    assert!(o.overflowed);
    assert_eq!(out.len(), 4);
    out.clear();
    let t = Instant::now();
    assert!(
        set.wait(0, &mut out, Some(Duration::from_millis(30)))
            .is_err(),
        "times out when idle"
    );
    assert!(t.elapsed() >= Duration::from_millis(30));
}

#[test]
fn a_waiter_is_woken_from_another_thread() {
    let (name, set) = set(EventSetConfig::default());
    set.add(3, 42).expect("add");
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(30));
            let writer = EventSet::open(&name.0).expect("open");
            writer.notify(42, 5).expect("notify");
        });
        let mut out = Vec::new();
        set.wait(3, &mut out, Some(Duration::from_secs(10)))
            .expect("woken");
        assert_eq!(out, [Event { flow: 42, kind: 5 }]);
    });
}

#[test]
fn bad_configs_are_refused() {
    let name = ShmName::new("evset-bad");
    assert!(
        EventSet::create(
            &name.0,
            EventSetConfig {
                queues: 0,
                capacity: 1,
                max_flows: 1
            },
            None
        )
        .is_err()
    );
    assert!(EventSet::open(&name.0).is_err());
}
