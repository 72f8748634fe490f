//! A flood of FLOW_REQs cannot make `ipcpd-eth-dix` start a thread per request.
//!
//! One host (an IRMd in a network namespace, an eth-dix IPCP in packet mode on its veth end,
//! the name registered and bound by an application that does not accept yet). A raw socket in
//! the other namespace sends 300 FLOW_REQs for the name, each with a fresh OAP request, so the
//! IRMd keeps every one waiting for an acceptor. The IPCP lets at most 64 wait (a thread
//! each) and refuses the rest at once (counted); its thread count (`/proc/PID/status`) stays
//! bounded, it still answers the IRMd, and once the application accepts, one of the waiting
//! requests becomes a flow.
//!
//! Root only (namespaces, raw sockets); skips with a reason otherwise. Teardown (also on a
//! panic) leaves no process, namespace or shared memory.

mod net;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use o7s_proto::MacAddr;
use o7s_proto::dix;
use o7s_proto::eth_mgmt::MgmtMsg;
use o7s_proto::irm::{EthMode, IpcpType};
use o7s_proto::oap;
use o7s_proto::testing::{OPING_SRV_HASH, RAW_QOS, decode_hex};
use o7s_testkit::netns::{VethPair, in_netns};
use o7s_testkit::{Irmd, Options, Stop, TIMEOUT, eth_dix, temp_dir};
use o7s_xdp_ipcp::sys;

use net::{IRMD, bin_dir, can_run, inject};

const LAYER: &str = "eth-flood";
/// A name whose SHA3-256 the tests know ([`OPING_SRV_HASH`]).
const NAME: &str = "oping.srv";
/// FLOW_REQs sent.
const FLOOD: u16 = 300;
/// The IPCP's bound on flow requests waiting for the IRMd (`MAX_PENDING_ARRIVALS`).
const PENDING_MAX: u64 = 64;

fn counter(irmd: &Irmd, name: &str) -> u64 {
    irmd.ipcp_counter("eth", name)
}

/// The `Threads:` line of `/proc/<pid>/status`.
fn threads(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Threads: in {status}"))
}

/// A FLOW_REQ for `hash` from `src` (endpoint `seid`) to `dst`, with a fresh OAP request.
fn flow_req(src: MacAddr, dst: MacAddr, seid: u16, hash: &[u8]) -> Vec<u8> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    let mut id = [0u8; oap::ID_LEN];
    id[..2].copy_from_slice(&seid.to_be_bytes());
    id[2..10].copy_from_slice(&u64::from(std::process::id()).to_be_bytes());
    let oap = oap::Repr::request(id, u64::try_from(now.as_nanos()).expect("ns"))
        .to_vec()
        .expect("OAP request");
    let msg = MgmtMsg::FlowReq {
        seid,
        qos: RAW_QOS,
        hash,
        oap: &oap,
    };
    let mut frame = vec![0u8; dix::HEADER_LEN + msg.buffer_len()];
    msg.emit(&mut frame[dix::HEADER_LEN..]).expect("emit");
    dix::Repr {
        dst_addr: dst,
        src_addr: src,
        ethertype: dix::DEFAULT_ETHERTYPE,
        eid: dix::MGMT_EID,
        payload_len: u16::try_from(msg.buffer_len()).expect("short"),
    }
    .emit(&mut frame)
    .expect("emit");
    frame
}

#[test]
fn a_flow_req_flood_is_bounded_and_the_ipcp_still_serves() {
    if !can_run(
        "a_flow_req_flood_is_bounded_and_the_ipcp_still_serves",
        false,
    ) {
        return;
    }
    bin_dir(&[IRMD]);
    let pair = VethPair::new("o7s-fl", "flv", 1500);
    let irmd = Irmd::start(
        temp_dir("eth-flood"),
        Options::new(bin_dir(&[IRMD]).join("irmd"))
            .netns(&pair.ns[1])
            .rust_log("info")
            .stop(Stop::Term),
    );
    irmd.ipcp(
        IpcpType::EthDix,
        "eth",
        LAYER,
        eth_dix(&pair.veth[1], EthMode::Packet),
    );
    irmd.register_in(LAYER, NAME);
    let app = o7s::Client::connect_to(&irmd.rundir).expect("connect");
    app.bind(NAME).expect("bind");
    let pid = irmd.ipcps().first().expect("the IPCP").pid;
    let before = threads(pid);

    let [src, dst] = [0, 1].map(|i| {
        let dev = pair.veth[i].clone();
        in_netns(&pair.ns[i], move || {
            MacAddr(sys::if_hwaddr(&dev).expect("MAC"))
        })
    });
    let hash = decode_hex(OPING_SRV_HASH);
    let frames: Vec<Vec<u8>> = (1..=FLOOD).map(|s| flow_req(src, dst, s, &hash)).collect();
    inject(&pair.ns[0], &pair.veth[0], frames);

    // Every request is either waiting (at most 64) or refused; the stats call is answered
    // meanwhile (the IPCP still serves the IRMd). The deadline only guards a hang.
    let deadline = Instant::now() + TIMEOUT;
    let mut most_threads = 0;
    let (waiting, refused) = loop {
        most_threads = most_threads.max(threads(pid));
        let waiting = counter(&irmd, "flow requests waiting");
        let refused = counter(&irmd, "flow requests refused busy");
        assert!(waiting <= PENDING_MAX, "{waiting} flow requests waiting");
        if waiting + refused == u64::from(FLOOD) {
            break (waiting, refused);
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} waiting and {refused} refused of {FLOOD}\n{}",
            irmd.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    most_threads = most_threads.max(threads(pid));
    println!(
        "IPCP threads: {before} before, at most {most_threads} during the flood; \
         {waiting} requests waiting, {refused} refused"
    );
    assert_eq!(waiting, PENDING_MAX, "the IRMd keeps them waiting");
    assert_eq!(refused, u64::from(FLOOD) - PENDING_MAX);
    // A thread per waiting request, plus a few for the IRMd's stats requests.
    assert!(
        most_threads <= before + PENDING_MAX + 4,
        "{most_threads} threads (before the flood {before})"
    );

    // The application accepts: one of the waiting requests becomes a flow.
    let flow = app
        .flow_accept(Some(TIMEOUT))
        .unwrap_or_else(|e| panic!("accept: {e}\n{}", irmd.log()));
    irmd.wait_ipcp_counter("eth", "flows", 1, "no flow in the IPCP");
    drop(flow);
    drop(app);
    drop(irmd);
    drop(pair);
}
