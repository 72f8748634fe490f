//! Liveness allocates nothing per packet or per timer: a keepalive frame's header written and
//! classified (an empty SDU), and a table of 200 flows driven through 5 s of receptions,
//! sends, keepalives, blocked keepalives and peer timeouts, all under a counting global
//! allocator.
//!
//! This binary holds a single test, and only the test thread's allocations count: the code
//! under test runs on it alone, and the harness's main thread may allocate meanwhile (its first
//! wait for the test, late on a loaded machine, made this test fail now and then).

mod util;

use o7s_testkit::CountingAlloc;
use o7s_xdp_ipcp::Instant;
use o7s_xdp_ipcp::RxAction;
use o7s_xdp_ipcp::liveness::{Action, LivenessTable};
use util::{Pair, RAW_QOS};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

#[test]
fn liveness_does_not_allocate() {
    let mut p = Pair::new();
    let (ea, eb) = p.allocate(&[7; 32], RAW_QOS);
    let mut keepalive = [0u8; 18];
    let mut table = LivenessTable::default();
    for i in 0..200u16 {
        // Timeouts 0, 50, 100, … ms: some never act, some time out, all interleave.
        table.insert(64 + i * 19, u32::from(i % 8) * 50, Instant::ZERO);
    }

    ALLOC.start_this_thread();
    let mut empties = 0;
    for _ in 0..1000 {
        p.a.write_header(ea, 0, &mut keepalive).expect("header");
        match p.b.classify_rx(&keepalive) {
            RxAction::Data { eid, payload } if eid == eb && payload.is_empty() => empties += 1,
            other => panic!("a keepalive classified as {other:?}"),
        }
    }
    let (mut keepalives, mut gone) = (0u32, 0u32);
    for ms in 1..=5000u64 {
        let now = Instant::from_millis(ms);
        for i in (0..200u16).step_by(7) {
            // A third of the flows hear their peer every 10 ms; some send data now and then.
            if ms % 10 == 0 && i % 3 == 0 {
                table.on_rx(64 + i * 19, now);
            }
            if ms % 37 == 0 {
                table.on_tx(64 + i * 19, now);
            }
        }
        while let Some((eid, action)) = table.next_due(now) {
            match action {
                Action::Keepalive if eid % 2 == 0 => {
                    keepalives += 1;
                    table.on_tx(eid, now);
                }
                Action::Keepalive => table.keepalive_blocked(eid, now),
                Action::PeerGone => gone += 1,
            }
        }
    }
    let allocs = ALLOC.stop();
    assert_eq!(empties, 1000);
    assert!(
        keepalives > 200 && gone > 50,
        "{keepalives} keepalives, {gone} gone"
    );
    assert_eq!(allocs, 0, "liveness allocated");
}
