//! The data path allocates nothing per packet: writes, the events they post, waits on a flow
//! set and reads, blocking and async, run under a counting global allocator after a warm-up
//! (the first post to a set maps it once).
//!
//! This binary holds a single test so no other test thread allocates while counting.

mod util;

use o7s::aio::AsyncClient;
use o7s::{FlowEvent, FlowQueue, FlowSet};
use o7s_testkit::CountingAlloc;
use util::{TIMEOUT, client, irmd, pair};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

#[test]
fn the_data_path_does_not_allocate() {
    let host = irmd();
    let me = client(&host);

    // Blocking: write, event, wait, read.
    let (a, b) = pair(&me, "no-alloc");
    let set = FlowSet::new(&me).expect("set");
    set.add(&b).expect("add");
    let mut queue = FlowQueue::new();
    let mut buf = [0u8; 64];
    let mut round = || {
        a.write(b"sdu").expect("write");
        assert_eq!(set.wait(&mut queue, Some(TIMEOUT)).expect("wait"), 1);
        assert_eq!(queue.next(), Some((b.id(), FlowEvent::Packet)));
        assert_eq!(b.read(&mut buf).expect("read"), 3);
    };
    for _ in 0..10 {
        round();
    }
    let ((), blocking) = ALLOC.count(|| (0..1000).for_each(|_| round()));
    set.remove(&b);
    drop((a, b, set));

    // Async: write and read on a current_thread runtime, woken by the waiter thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let aio = runtime.block_on(async {
        let client = AsyncClient::new(me.clone()).expect("async client");
        let (a, b) = pair(&me, "no-alloc-async");
        let (a, b) = (
            client.adopt(a).expect("adopt"),
            client.adopt(b).expect("adopt"),
        );
        let mut buf = [0u8; 64];
        for round in 0..1010 {
            // After 10 rounds of warm-up (tokio's deferred-wake list grows once), count.
            if round == 10 {
                ALLOC.start();
            }
            // The read waits first, so each round goes through an event and a wake-up.
            let (read, written) = tokio::join!(b.read(&mut buf), async {
                tokio::task::yield_now().await;
                a.write(b"sdu").await
            });
            read.expect("read");
            written.expect("write");
        }
        ALLOC.stop()
    });
    assert_eq!(
        (blocking, aio),
        (0, 0),
        "allocations in 1000 rounds (blocking, async)"
    );
}
