//! Flow sets and event queues over a real IRMd: one process waits on flows written by other
//! processes and gets exactly their events; a wait times out empty; a killed peer is a flow
//! end; what the reference promises about `fset_add`, one set per flow and full queues.

mod util;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use o7s::{Error, Flow, FlowEvent, FlowQueue, FlowSet, FlowSetError};
use util::{Helper, TIMEOUT, client, irmd, local_ipcp, pair, stdin_line};

const WRITER: &str = "O7S_TEST_FQUEUE_WRITER";

/// Helper process (run by the tests below): `O7S_TEST_FQUEUE_WRITER="NAME COUNT..."` allocates
/// one flow to NAME per COUNT and prints `flow ID COUNT` for each, then `ready`; on a line
/// from stdin writes COUNT SDUs `ID:SEQ` on each flow and prints `wrote`; at the next line or
/// EOF deallocates its flows and exits. Does nothing when run directly.
#[test]
#[ignore = "helper process for the fqueue tests"]
fn writer_process() {
    let Ok(spec) = std::env::var(WRITER) else {
        return;
    };
    let mut words = spec.split_whitespace();
    let name = words.next().expect("a name");
    let client = o7s::Client::connect().expect("helper connects");
    let flows: Vec<(Flow, u32)> = words
        .map(|count| {
            let flow = client
                .flow_alloc(name, None, Some(TIMEOUT))
                .expect("helper allocates");
            (flow, count.parse().expect("a count"))
        })
        .collect();
    for (flow, count) in &flows {
        println!("flow {} {count}", flow.id());
    }
    println!("ready");
    stdin_line();
    for (flow, count) in &flows {
        for seq in 0..*count {
            flow.write(format!("{}:{seq}", flow.id()).as_bytes())
                .expect("helper writes");
        }
    }
    println!("wrote");
    stdin_line();
    drop(flows);
    println!("done");
}

/// The `(flow id, count)`s a writer announced.
fn announced(helper: &Helper) -> Vec<(u32, u32)> {
    helper
        .lines
        .seen
        .iter()
        .filter_map(|l| {
            // The test harness may print its own words before ours on the first line.
            let mut w = l[l.find("flow ")? + 5..].split(' ');
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect()
}

/// Waits on `set` until `done` says so (or [`TIMEOUT`]), returning every event seen.
fn collect(
    set: &FlowSet,
    queue: &mut FlowQueue,
    mut done: impl FnMut(&[(u32, FlowEvent)]) -> bool,
) -> Vec<(u32, FlowEvent)> {
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = Vec::new();
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "events missing; got {seen:?}");
        set.wait(queue, Some(left)).expect("wait");
        assert!(!queue.overflowed(), "no queue overflow expected");
        seen.extend(&mut *queue);
    }
    seen
}

fn count_of(events: &[(u32, FlowEvent)], id: u32, kind: FlowEvent) -> usize {
    events.iter().filter(|&&e| e == (id, kind)).count()
}

#[test]
fn a_set_of_three_flows_gets_exactly_what_two_writer_processes_wrote() {
    let host = irmd();
    let me = client(&host);
    me.bind("fq-three").expect("bind");
    let mut a = Helper::spawn(&host, "writer_process", (WRITER, "fq-three 40 25"));
    let mut b = Helper::spawn(&host, "writer_process", (WRITER, "fq-three 60"));
    let flows: HashMap<u32, Flow> = (0..3)
        .map(|_| {
            let f = me.flow_accept(Some(TIMEOUT)).expect("accept");
            (f.id(), f)
        })
        .collect();
    a.wait_for("ready");
    b.wait_for("ready");
    let expected: HashMap<u32, u32> = announced(&a).into_iter().chain(announced(&b)).collect();
    assert_eq!(expected.len(), 3, "three flows: {expected:?}");
    assert!(expected.keys().all(|id| flows.contains_key(id)));

    let set = FlowSet::new(&me).expect("set");
    for f in flows.values() {
        set.add(f).expect("add");
        assert!(set.has(f));
    }
    assert_eq!(set.len(), 3);
    let mut queue = FlowQueue::new();
    assert_eq!(
        set.wait(&mut queue, Some(Duration::from_millis(50)))
            .expect("wait"),
        0,
        "nothing written yet"
    );
    a.send("go");
    b.send("go");
    let total: usize = expected.values().map(|&c| c as usize).sum();
    let events = collect(&set, &mut queue, |seen| seen.len() >= total);
    a.wait_for("wrote");
    b.wait_for("wrote");
    assert_eq!(
        set.wait(&mut queue, Some(Duration::from_millis(200)))
            .expect("wait"),
        0,
        "no event beyond the packets: {:?}",
        queue.by_ref().collect::<Vec<_>>()
    );
    assert_eq!(events.len(), total);
    for (&id, &count) in &expected {
        assert_eq!(
            count_of(&events, id, FlowEvent::Packet),
            count as usize,
            "flow {id}"
        );
    }
    // Each event stood for a packet: the flows hold exactly that, in order.
    let mut buf = [0u8; 64];
    for (&id, &count) in &expected {
        let flow = &flows[&id];
        flow.set_read_nonblocking(true);
        for seq in 0..count {
            let n = flow.read(&mut buf).expect("read");
            assert_eq!(&buf[..n], format!("{id}:{seq}").as_bytes());
        }
        assert!(matches!(flow.read(&mut buf), Err(Error::WouldBlock { .. })));
    }

    // The writers deallocate, then exit: per flow one Dealloc, then one Peer (the process
    // is gone), and the flows read as ended.
    a.send("exit");
    b.send("exit");
    a.finish();
    b.finish();
    let ends = collect(&set, &mut queue, |seen| seen.len() >= 6);
    assert_eq!(
        set.wait(&mut queue, Some(Duration::from_millis(200)))
            .expect("wait"),
        0,
        "nothing more"
    );
    for &id in expected.keys() {
        let of_flow: Vec<FlowEvent> = ends
            .iter()
            .filter(|(f, _)| *f == id)
            .map(|&(_, e)| e)
            .collect();
        assert_eq!(of_flow, [FlowEvent::Dealloc, FlowEvent::Peer], "{ends:?}");
    }
    for f in flows.values() {
        assert!(f.read(&mut buf).is_err_and(|e| e.is_flow_end()));
        set.remove(f);
    }
    assert!(set.is_empty());
}

#[test]
fn a_wait_times_out_empty() {
    let host = irmd();
    let me = client(&host);
    let set = FlowSet::new(&me).expect("set");
    let mut queue = FlowQueue::new();
    let t = Instant::now();
    assert_eq!(
        set.wait(&mut queue, Some(Duration::from_millis(100)))
            .expect("wait"),
        0
    );
    assert!(t.elapsed() >= Duration::from_millis(100), "empty set");
    let (alloc, accept) = pair(&me, "fq-idle");
    set.add(&accept).expect("add");
    let t = Instant::now();
    assert_eq!(
        set.wait(&mut queue, Some(Duration::from_millis(150)))
            .expect("wait"),
        0
    );
    assert!(t.elapsed() >= Duration::from_millis(150), "idle flow");
    assert_eq!(queue.next(), None);
    assert!(!queue.overflowed());
    set.remove(&accept);
    drop((alloc, accept));
}

#[test]
fn a_killed_peer_is_a_flow_end_after_its_packets() {
    let host = irmd();
    let me = client(&host);
    me.bind("fq-kill").expect("bind");
    let mut writer = Helper::spawn(&host, "writer_process", (WRITER, "fq-kill 3"));
    let flow = me.flow_accept(Some(TIMEOUT)).expect("accept");
    writer.wait_for("ready");
    let set = FlowSet::new(&me).expect("set");
    set.add(&flow).expect("add");
    writer.send("go");
    writer.wait_for("wrote");
    writer.kill();
    let mut queue = FlowQueue::new();
    let events = collect(&set, &mut queue, |seen| {
        seen.iter().any(|(_, e)| e.is_flow_end())
    });
    let id = flow.id();
    assert_eq!(
        events,
        [
            (id, FlowEvent::Packet),
            (id, FlowEvent::Packet),
            (id, FlowEvent::Packet),
            (id, FlowEvent::Peer)
        ]
    );
    let mut buf = [0u8; 64];
    for seq in 0..3 {
        let n = flow.read(&mut buf).expect("what it sent is still there");
        assert_eq!(&buf[..n], format!("{id}:{seq}").as_bytes());
    }
    assert!(matches!(flow.read(&mut buf), Err(Error::PeerGone)));
    set.remove(&flow);
}

#[test]
fn adding_a_flow_with_packets_waiting_queues_one_event() {
    let host = irmd();
    let me = client(&host);
    let (alloc, accept) = pair(&me, "fq-waiting");
    for _ in 0..3 {
        alloc.write(b"x").expect("write");
    }
    let set = FlowSet::new(&me).expect("set");
    set.add(&accept).expect("add");
    let mut queue = FlowQueue::new();
    assert_eq!(set.wait(&mut queue, Some(TIMEOUT)).expect("wait"), 1);
    assert_eq!(queue.next(), Some((accept.id(), FlowEvent::Packet)));
    alloc.write(b"y").expect("write");
    assert_eq!(set.wait(&mut queue, Some(TIMEOUT)).expect("wait"), 1);
    assert_eq!(queue.next(), Some((accept.id(), FlowEvent::Packet)));
    set.remove(&accept);
}

#[test]
fn a_flow_is_in_one_set_and_a_removed_flow_is_silent() {
    let host = irmd();
    let me = client(&host);
    let (alloc, accept) = pair(&me, "fq-one-set");
    let first = FlowSet::new(&me).expect("set");
    let second = FlowSet::new(&me).expect("set");
    first.add(&accept).expect("add");
    first
        .add(&accept)
        .expect("adding again to the same set is fine");
    assert!(matches!(
        second.add(&accept),
        Err(Error::FlowSet(FlowSetError::InAnotherSet { flow })) if flow == accept.id()
    ));
    first.remove(&accept);
    assert!(!first.has(&accept));
    alloc.write(b"unseen").expect("write");
    let mut queue = FlowQueue::new();
    assert_eq!(
        first
            .wait(&mut queue, Some(Duration::from_millis(100)))
            .expect("wait"),
        0
    );
    second.add(&accept).expect("now it may move");
    assert_eq!(second.wait(&mut queue, Some(TIMEOUT)).expect("wait"), 1);
    assert_eq!(queue.next(), Some((accept.id(), FlowEvent::Packet)));
    second.clear();
    assert!(second.is_empty());
}

#[test]
fn a_wait_is_woken_from_another_thread() {
    let host = irmd();
    let me = client(&host);
    let set = FlowSet::new(&me).expect("set");
    let mut queue = FlowQueue::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            set.wake().expect("wake");
        });
        // A wake and a time-out both return 0 events: only the time tells them apart (a
        // broken wake returns at TIMEOUT instead of hanging the test).
        let t = Instant::now();
        assert_eq!(set.wait(&mut queue, Some(TIMEOUT)).expect("wait"), 0);
        assert!(t.elapsed() < TIMEOUT, "woken, not timed out");
    });
}

#[test]
fn a_full_queue_reports_overflow_and_keeps_what_fits() {
    let host = irmd();
    let me = client(&host);
    let (alloc, accept) = pair(&me, "fq-overflow");
    let set = FlowSet::new(&me).expect("set");
    set.add(&accept).expect("add");
    let capacity = o7s::fqueue::QUEUE_CAPACITY as usize;
    for _ in 0..capacity + 10 {
        alloc.write(b"z").expect("write");
    }
    let mut queue = FlowQueue::new();
    assert_eq!(set.wait(&mut queue, Some(TIMEOUT)).expect("wait"), capacity);
    assert!(queue.overflowed(), "the rest is flagged");
    assert_eq!(accept.rx_queue_len().expect("len"), (capacity + 10) as u32);
    // Left-over events are handed out first, without waiting.
    assert!(queue.next().is_some());
    assert_eq!(set.wait(&mut queue, None).expect("wait"), capacity - 1);
    set.remove(&accept);
}

#[test]
fn a_deallocated_peer_and_a_flow_already_down_show_as_dealloc() {
    let host = irmd();
    let me = client(&host);
    let set = FlowSet::new(&me).expect("set");
    let mut queue = FlowQueue::new();
    let (alloc, accept) = pair(&me, "fq-dealloc");
    set.add(&accept).expect("add");
    alloc.dealloc().expect("dealloc");
    assert_eq!(set.wait(&mut queue, Some(TIMEOUT)).expect("wait"), 1);
    assert_eq!(queue.next(), Some((accept.id(), FlowEvent::Dealloc)));
    set.remove(&accept);

    // Added after the fact: the end is queued at once.
    let (alloc, late) = pair(&me, "fq-dealloc-late");
    alloc.dealloc().expect("dealloc");
    set.add(&late).expect("add");
    assert_eq!(set.wait(&mut queue, Some(TIMEOUT)).expect("wait"), 1);
    assert_eq!(queue.next(), Some((late.id(), FlowEvent::Dealloc)));
    set.remove(&late);
}

#[test]
fn packets_relayed_by_the_local_ipcp_are_events_too() {
    let host = irmd();
    let me = client(&host);
    let ipcp = local_ipcp(&host, "fq-ipcp");
    let (alloc, accept) = pair(&me, "fq-ipcp");
    assert_eq!(accept.peer_pid(), ipcp, "the flow runs through the IPCP");
    let set = FlowSet::new(&me).expect("set");
    set.add(&accept).expect("add");
    for seq in 0..50u32 {
        alloc.write(&seq.to_le_bytes()).expect("write");
    }
    let mut queue = FlowQueue::new();
    let id = accept.id();
    let events = collect(&set, &mut queue, |seen| seen.len() >= 50);
    assert_eq!(events, vec![(id, FlowEvent::Packet); 50]);
    let mut buf = [0u8; 8];
    for seq in 0..50u32 {
        let n = accept.read(&mut buf).expect("read");
        assert_eq!(&buf[..n], seq.to_le_bytes());
    }
    // The allocating end goes: the IPCP deallocates its side towards us.
    alloc.dealloc().expect("dealloc");
    let end = collect(&set, &mut queue, |seen| {
        seen.iter().any(|(_, e)| e.is_flow_end())
    });
    assert_eq!(end, [(id, FlowEvent::Dealloc)]);
    set.remove(&accept);
}
