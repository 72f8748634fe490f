//! Flow liveness over `ipcpd-eth-dix`, end to end and on the wire: two "hosts" (network
//! namespaces joined by a veth pair, an IRMd each, an eth-dix IPCP each in `packet` mode, so a
//! raw socket in B's namespace sees every frame of the link).
//!
//! * QoS timeout 0: an idle flow carries no keepalive; empty SDUs injected for its eid (a raw
//!   socket in A's namespace, the DIX header with length 0) are counted and never delivered,
//!   while a non-empty SDU injected the same way is.
//! * QoS timeout 400 ms: an idle flow stays up for three timeouts; each side sends 18-byte
//!   frames with DIX length 0 (the reference's keepalive) to the peer's eid and counts them
//!   (`keepalives out`), the peer counts them in, the applications get nothing, and the flow
//!   still carries data afterwards.
//! * B's veth goes down: both applications read `PeerGone`, both IPCPs count it, and the flows
//!   end when the applications let go.
//! * SIGKILL of B's IPCP (on a new flow, the link up again): A's application reads `PeerGone`;
//!   A's IPCP logs each timeout once.
//!
//! No assertion is on elapsed time (a loaded box stretches every gap); deadlines only guard
//! against a hang. The timing rule (keepalive after timeout/4 without a send, gone after the
//! timeout without a reception) is checked by `liveness`'s unit and property tests.
//!
//! Root only (namespaces, raw sockets); skips with a reason otherwise. The test builds `irmd`
//! (`cargo build`, a no-op when up to date) next to `ipcpd-eth-dix`, where the IRMd looks for
//! it. Teardown (also on a panic) leaves no process, namespace or shared memory.

mod net;

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use o7s_proto::MacAddr;
use o7s_proto::dix::{self, Frame};
use o7s_proto::eth_mgmt::MgmtMsg;
use o7s_proto::irm::{EthMode, IpcpType};
use o7s_testkit::netns::{Capture, VethPair, in_netns, run};
use o7s_testkit::{Irmd, Leftovers, Options, Stop, TIMEOUT, eth_dix, temp_dir};
use o7s_xdp_ipcp::sys;

use net::{IRMD, bin_dir, can_run, inject};

const LAYER: &str = "eth-live";
const NAME: &str = "livesrv";
/// The layer's hash length (SHA3-256).
const HASH_LEN: usize = 32;
/// The QoS timeout of the watched flow.
const PEER_TIMEOUT: Duration = Duration::from_millis(400);

/// One host: an IRMd in a namespace with an eth-dix IPCP `eth` (packet mode) on its veth end.
struct Host(Irmd);

impl Host {
    fn start(ns: &str, dev: &str, mode: EthMode) -> Self {
        let irmd = Irmd::start(
            temp_dir("eth-liveness"),
            Options::new(bin_dir(&[IRMD]).join("irmd"))
                .netns(ns)
                .rust_log("info")
                .stop(Stop::Term),
        );
        irmd.ipcp(IpcpType::EthDix, "eth", LAYER, eth_dix(dev, mode));
        Self(irmd)
    }

    fn register(&self, name: &str) {
        self.0.register_in(LAYER, name);
    }

    /// The data path in effect, as `irm ipcp stats eth` names it.
    fn backend(&self) -> String {
        let stats = self.0.ipcp_stats("eth");
        stats
            .iter()
            .find_map(|(name, _)| name.strip_prefix("backend: ").map(str::to_owned))
            .unwrap_or_else(|| panic!("no backend in {stats:?}"))
    }

    /// One counter of `irm ipcp stats eth`.
    fn counter(&self, name: &str) -> u64 {
        self.0.ipcp_counter("eth", name)
    }

    fn wait_flows(&self, n: u64, what: &str) {
        self.0.wait_ipcp_counter("eth", "flows", n, what);
    }
}

/// The empty data frames (keepalives) `capture` saw after its first `since`, as (time, source,
/// eid, frame length).
fn empty_sdus(capture: &Capture, since: usize) -> Vec<(Duration, MacAddr, u16, usize)> {
    capture
        .frames()
        .iter()
        .skip(since)
        .filter_map(|s| {
            let f = Frame::new_checked(&s.bytes[..]).ok()?;
            (!f.is_mgmt() && f.length() == 0).then(|| (s.at, f.src_addr(), f.eid(), s.bytes.len()))
        })
        .collect()
}

/// The addresses of the last flow allocated: (A's MAC, B's MAC, A's eid, B's eid), from the
/// FLOW_REQ and FLOW_REPLY `capture` saw.
fn captured_flow(capture: &Capture) -> (MacAddr, MacAddr, u16, u16) {
    let mut req = None;
    let mut reply = None;
    for s in capture.frames() {
        let Ok(f) = Frame::new_checked(&s.bytes[..]) else {
            continue;
        };
        if !f.is_mgmt() {
            continue;
        }
        match MgmtMsg::parse_bytes(f.payload_ref(), HASH_LEN) {
            Ok(MgmtMsg::FlowReq { seid, .. }) => {
                req = Some((f.src_addr(), f.dst_addr(), seid));
            }
            Ok(MgmtMsg::FlowReply {
                seid,
                deid,
                response: 0,
                ..
            }) => reply = Some((deid, seid)),
            _ => {}
        }
    }
    let (a_mac, b_mac, a_eid) = req.expect("a FLOW_REQ captured");
    let (deid, b_eid) = reply.expect("a FLOW_REPLY captured");
    assert_eq!(deid, a_eid, "the reply answers the last request");
    (a_mac, b_mac, a_eid, b_eid)
}

/// A data frame from `src` to `dst` for `eid` carrying `sdu` (empty: a keepalive).
fn data_frame(src: MacAddr, dst: MacAddr, eid: u16, sdu: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; dix::HEADER_LEN + sdu.len()];
    dix::Repr {
        dst_addr: dst,
        src_addr: src,
        ethertype: dix::DEFAULT_ETHERTYPE,
        eid,
        payload_len: u16::try_from(sdu.len()).expect("short SDU"),
    }
    .emit(&mut frame)
    .expect("emit");
    frame[dix::HEADER_LEN..].copy_from_slice(sdu);
    frame
}

fn qos(timeout: Duration) -> o7s::QosSpec {
    o7s::QosSpec {
        timeout: u32::try_from(timeout.as_millis()).expect("ms"),
        ..o7s::qos::raw()
    }
}

/// Allocates a flow from `a` to [`NAME`] (accepted by `b`) with `qos`.
fn flow_pair(a: &o7s::Client, b: &o7s::Client, qos: o7s::QosSpec) -> (o7s::Flow, o7s::Flow) {
    let accepted = {
        let b = b.clone();
        std::thread::spawn(move || b.flow_accept(Some(TIMEOUT)))
    };
    let fa = a
        .flow_alloc(NAME, Some(qos), Some(TIMEOUT))
        .unwrap_or_else(|e| panic!("alloc: {e}"));
    let fb = accepted
        .join()
        .expect("accept thread")
        .unwrap_or_else(|e| panic!("accept: {e}"));
    (fa, fb)
}

/// Asserts that reading `flow` ends in `PeerGone` (within [`TIMEOUT`]).
#[track_caller]
fn expect_peer_gone(flow: &o7s::Flow, side: &str, host: &Host) {
    flow.set_read_timeout(Some(TIMEOUT));
    let mut buf = [0u8; 64];
    match flow.read(&mut buf) {
        Err(o7s::Error::PeerGone) => {}
        other => panic!("{side} read {other:?}, not PeerGone\n{}", host.0.log()),
    }
}

/// Asserts that `flow` has nothing to read for `wait`.
#[track_caller]
fn nothing_to_read(flow: &o7s::Flow, wait: Duration, what: &str) {
    flow.set_read_timeout(Some(wait));
    let mut buf = [0u8; 64];
    match flow.read(&mut buf) {
        Err(o7s::Error::TimedOut { .. }) => {}
        other => panic!("{what}: the application read {other:?}"),
    }
}

#[test]
fn keepalives_and_peer_timeout_over_eth_dix_packet() {
    if can_run("keepalives_and_peer_timeout_over_eth_dix_packet", false) {
        scenario(EthMode::Packet);
    }
}

/// The same over AF_XDP (native XDP on the veths, else generic): the keepalives leave from and
/// arrive in UMEM blocks. The link's frames bypass a raw capture here, so the checks on the
/// wire are left to the packet-mode test.
#[test]
fn keepalives_and_peer_timeout_over_eth_dix_xdp() {
    if can_run("keepalives_and_peer_timeout_over_eth_dix_xdp", false) {
        scenario(EthMode::Xdp);
    }
}

fn scenario(mode: EthMode) {
    bin_dir(&[IRMD]);
    let pair = VethPair::new("o7s-h7", "h7v", 1500);
    let a = Host::start(&pair.ns[0], &pair.veth[0], mode);
    let b = Host::start(&pair.ns[1], &pair.veth[1], mode);
    println!("{mode:?}: A {}, B {}", a.backend(), b.backend());
    b.register(NAME);
    // Packet mode: a raw socket in B's namespace sees every frame of the link.
    let capture = (mode == EthMode::Packet).then(|| Capture::start(&pair.ns[1]));
    let [a_mac, b_mac] = [0, 1].map(|i| {
        let dev = pair.veth[i].clone();
        in_netns(&pair.ns[i], move || {
            MacAddr(sys::if_hwaddr(&dev).expect("MAC"))
        })
    });
    let app_b = o7s::Client::connect_to(&b.0.rundir).expect("connect to B");
    app_b.bind(NAME).expect("bind");
    let app_a = o7s::Client::connect_to(&a.0.rundir).expect("connect to A");

    // --- QoS timeout 0: no keepalive; injected empty SDUs are not delivered --------------
    let (fa, fb) = flow_pair(&app_a, &app_b, qos(Duration::ZERO));
    // The first flow of each side has eid 64 (the lowest).
    let b_eid = 64;
    if let Some(capture) = &capture {
        assert_eq!(captured_flow(capture), (a_mac, b_mac, 64, b_eid));
    }
    std::thread::sleep(Duration::from_secs(1));
    for (host, side) in [(&a, "A"), (&b, "B")] {
        assert_eq!(host.counter("keepalives out"), 0, "{side}: timeout 0");
    }
    if let Some(capture) = &capture {
        assert!(
            empty_sdus(capture, 0).is_empty(),
            "no keepalive on the link with timeout 0"
        );
    }
    let mut frames = vec![data_frame(a_mac, b_mac, b_eid, b""); 5];
    frames.push(data_frame(a_mac, b_mac, b_eid, b"abc"));
    inject(&pair.ns[0], &pair.veth[0], frames);
    fb.set_read_timeout(Some(TIMEOUT));
    let mut buf = [0u8; 64];
    let n = fb.read(&mut buf).expect("the injected SDU arrives");
    assert_eq!(
        &buf[..n],
        b"abc",
        "the empty SDUs before it were not delivered"
    );
    assert_eq!(b.counter("keepalives in"), 5);
    assert_eq!(b.counter("sdus delivered"), 1);
    nothing_to_read(&fb, Duration::from_millis(100), "after the injection");
    drop(fa);
    drop(fb);
    a.wait_flows(0, "after the first flow");
    b.wait_flows(0, "after the first flow");

    // --- QoS timeout 400 ms: an idle flow lives on keepalives -------------------------------
    let (fa, fb) = flow_pair(&app_a, &app_b, qos(PEER_TIMEOUT));
    let counters = |host: &Host| {
        [
            "keepalives out",
            "keepalives in",
            "sdus delivered",
            "peers timed out",
        ]
        .map(|c| host.counter(c))
    };
    let (a0, b0) = (counters(&a), counters(&b));
    let mark = capture.as_ref().map(Capture::mark);
    std::thread::sleep(3 * PEER_TIMEOUT);
    let (a1, b1) = (counters(&a), counters(&b));
    // Behaviour only, no timing window (a loaded box stretches every gap): each side sent
    // keepalives and counted the other's, nothing reached an application, no peer timed out.
    // The gap rule itself (one empty SDU after timeout/4 without a send, none while data
    // flows) is the sans-IO `liveness` module's, checked there by unit and property tests.
    for (side, before, after) in [("A", a0, a1), ("B", b0, b1)] {
        assert!(
            after[0] > before[0],
            "{side} sent no keepalive while idle\nA: {}\nB: {}",
            a.0.log(),
            b.0.log()
        );
        assert!(
            after[1] > before[1],
            "{side} counted no keepalive in while idle\nA: {}\nB: {}",
            a.0.log(),
            b.0.log()
        );
        assert_eq!(after[2], before[2], "{side}: nothing delivered while idle");
        assert_eq!(after[3], 0, "{side}: no peer timed out");
    }
    nothing_to_read(&fa, Duration::from_millis(50), "A while idle");
    nothing_to_read(&fb, Duration::from_millis(50), "B while idle");
    println!(
        "idle 3 x {PEER_TIMEOUT:?}: keepalives A out {} in {}, B out {} in {}",
        a1[0] - a0[0],
        a1[1] - a0[1],
        b1[0] - b0[0],
        b1[1] - b0[1],
    );
    // On the wire: the keepalives are 18-byte frames, DIX length 0, to the peer's eid. Gaps
    // are printed, not asserted (a user-space capture on a loaded box reads them late).
    if let (Some(capture), Some(mark)) = (&capture, mark) {
        let (_, _, a_eid, b_eid) = captured_flow(capture);
        let seen = empty_sdus(capture, mark);
        for (src, eid, side) in [(a_mac, b_eid, "A"), (b_mac, a_eid, "B")] {
            let mine: Vec<_> = seen.iter().filter(|k| k.1 == src).collect();
            assert!(!mine.is_empty(), "{side}'s keepalives on the link: none");
            for k in &mine {
                assert_eq!(
                    (k.2, k.3),
                    (eid, dix::HEADER_LEN),
                    "{side}'s keepalive frame"
                );
            }
            let gaps: Vec<Duration> = mine.windows(2).map(|w| w[1].0 - w[0].0).collect();
            println!(
                "{side}'s keepalives on the link: {}, gaps {gaps:?}",
                mine.len()
            );
        }
    }
    // The flow still carries data.
    fa.write(b"ping").expect("write");
    fb.set_read_timeout(Some(TIMEOUT));
    let n = fb.read(&mut buf).expect("read after the idle time");
    assert_eq!(&buf[..n], b"ping");

    // --- The link goes down: both sides see the peer gone after one timeout -------------
    run(&[
        "ip",
        "-n",
        &pair.ns[1],
        "link",
        "set",
        &pair.veth[1],
        "down",
    ]);
    let down = Instant::now();
    for (flow, host, side) in [(&fa, &a, "A"), (&fb, &b, "B")] {
        // PeerGone must come; the read's deadline (TIMEOUT, 50 timeouts) only guards a hang.
        expect_peer_gone(flow, side, host);
        println!(
            "{side}: peer gone noticed {:?} after the link went down",
            down.elapsed()
        );
        assert_eq!(host.counter("peers timed out"), 1, "{side}");
    }
    run(&["ip", "-n", &pair.ns[1], "link", "set", &pair.veth[1], "up"]);
    // Still gone, and the flows end when the applications let go.
    expect_peer_gone(&fa, "A", &a);
    drop(fa);
    drop(fb);
    a.wait_flows(0, "after A's application let go");
    b.wait_flows(0, "after B's application let go");

    // --- B's IPCP dies: A's application sees the peer gone after one timeout -------------
    let (fa, fb) = flow_pair(&app_a, &app_b, qos(PEER_TIMEOUT));
    fa.write(b"ping").expect("write");
    fb.set_read_timeout(Some(TIMEOUT));
    let n = fb.read(&mut buf).expect("read after the link came back");
    assert_eq!(&buf[..n], b"ping");
    std::thread::sleep(PEER_TIMEOUT);
    let b_ipcp = b.0.ipcps().first().expect("B's IPCP").pid;
    kill(
        Pid::from_raw(i32::try_from(b_ipcp).expect("pid")),
        Signal::SIGKILL,
    )
    .expect("SIGKILL");
    let killed = Instant::now();
    // PeerGone must come; the read's deadline (TIMEOUT) only guards a hang.
    expect_peer_gone(&fa, "A", &a);
    println!(
        "A: peer gone noticed {:?} after the SIGKILL of B's IPCP",
        killed.elapsed()
    );
    assert_eq!(a.counter("peers timed out"), 2);
    let log = a.0.log();
    assert_eq!(
        log.matches("nothing from the peer").count(),
        2,
        "each timeout logged once: {log}"
    );
    drop(fa);
    a.wait_flows(0, "after A's application let go");
    // B's application hears of its own IPCP's death from its IRMd.
    match fb.read(&mut buf) {
        Err(o7s::Error::PeerGone) => {}
        other => panic!("B read {other:?} with its IPCP dead"),
    }
    drop(fb);

    drop(capture);
    drop(app_a);
    drop(app_b);
    let leftovers = Leftovers::of([&a.0, &b.0]);
    drop(a);
    drop(b);
    leftovers.assert_none_left(pair);
}
