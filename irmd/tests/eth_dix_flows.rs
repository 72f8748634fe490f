//! Flows between two IRMds over `ipcpd-eth-dix`, checked on the wire and at both ends: two
//! "hosts" (network namespaces joined by a veth pair of MTU 1500, an IRMd each, an eth-dix IPCP
//! each in `packet` mode, so that a raw socket in B's namespace sees every frame).
//!
//! * OAP: the FLOW_REQ carries the reference's 36-byte OAP request, the FLOW_REPLY its 84-byte
//!   response whose last 48 bytes are SHA-384 of the request (as in the reference's captures).
//! * Max SDU: the flow carries MTU − 4 = 1496 bytes; a 1497-byte write fails at once with
//!   `TooLarge` (and so do `alloc_packet` and `write_packet`), 1496 bytes arrive, and the IPCP
//!   refuses nothing silently.
//! * Deallocation: the IPCPs' flow counts (`irm ipcp stats` "flows") go back to 0 after a
//!   dealloc at both ends and after a client is SIGKILLed.
//!
//! Root only (namespaces, raw sockets); skips with a reason otherwise. `ipcpd-eth-dix` belongs
//! to another package, so the test builds it (`cargo build`, a no-op when up to date) next to
//! `irmd`, where the IRMd looks for it. Teardown (also on a panic) leaves no process, namespace
//! or shared memory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use o7s_proto::dix::Frame;
use o7s_proto::eth_mgmt::MgmtMsg;
use o7s_proto::irm::{EthMode, IpcpType};
use o7s_proto::oap;
use o7s_testkit::netns::{Capture, VethPair, can_run};
use o7s_testkit::{Irmd, Leftovers, Lines, Options, Stop, TIMEOUT, build_bins, eth_dix, temp_dir};
use sha2::Digest as _;

const IRMD: &str = env!("CARGO_BIN_EXE_irmd");
const LAYER: &str = "eth-oap";
const NAME: &str = "oapsrv";
const MTU: u32 = 1500;
const MAX_SDU: usize = 1496;

/// The directory of `irmd`, with `ipcpd-eth-dix` built next to it.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(IRMD).parent().expect("irmd has a directory");
        build_bins(dir, &[("o7s-xdp-ipcp", "ipcpd-eth-dix")])
    })
}

/// One host: an IRMd in a namespace with an eth-dix IPCP `eth` on its veth end.
struct Host(Irmd);

impl Host {
    fn start(ns: &str, dev: &str) -> Self {
        let irmd = Irmd::start(
            temp_dir("eth-dix-flows"),
            Options::new(bin_dir().join("irmd"))
                .netns(ns)
                .rust_log("info")
                .stop(Stop::Term),
        );
        irmd.ipcp(
            IpcpType::EthDix,
            "eth",
            LAYER,
            eth_dix(dev, EthMode::Packet),
        );
        Self(irmd)
    }

    fn register(&self, name: &str) {
        self.0.register_in(LAYER, name);
    }

    /// One counter of `irm ipcp stats eth`.
    fn counter(&self, name: &str) -> u64 {
        self.0.ipcp_counter("eth", name)
    }

    fn wait_flows(&self, n: u64, what: &str) {
        self.0.wait_ipcp_counter("eth", "flows", n, what);
    }
}

/// The management messages `capture` saw so far, with their frames.
fn mgmt(capture: &Capture) -> Vec<Vec<u8>> {
    capture
        .frames()
        .into_iter()
        .map(|s| s.bytes)
        .filter(|f| Frame::new_checked(&f[..]).is_ok_and(|fr| fr.is_mgmt()))
        .collect()
}

fn now_ns() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    u64::try_from(d.as_nanos()).expect("before 2554")
}

/// Accepts one flow on `host` in a thread.
fn accept_one(client: &o7s::Client) -> JoinHandle<o7s::Result<o7s::Flow>> {
    let client = client.clone();
    std::thread::spawn(move || client.flow_accept(Some(TIMEOUT)))
}

#[test]
fn oap_on_the_wire_max_sdu_and_deallocation_over_eth_dix() {
    if !can_run(
        "oap_on_the_wire_max_sdu_and_deallocation_over_eth_dix",
        "network namespaces, raw sockets",
    ) {
        return;
    }
    bin_dir();
    let pair = VethPair::new("o7s-h1", "h1v", MTU);
    let a = Host::start(&pair.ns[0], &pair.veth[0]);
    let b = Host::start(&pair.ns[1], &pair.veth[1]);
    b.register(NAME);
    let capture = Capture::start(&pair.ns[1]);

    let app_b = o7s::Client::connect_to(&b.0.rundir).expect("connect to B");
    app_b.bind(NAME).expect("bind");
    let app_a = o7s::Client::connect_to(&a.0.rundir).expect("connect to A");

    // --- OAP on the wire --------------------------------------------------------------
    let accepted = accept_one(&app_b);
    let before = now_ns();
    let fa = app_a
        .flow_alloc(NAME, None, Some(TIMEOUT))
        .unwrap_or_else(|e| panic!("alloc: {e}\nA: {}\nB: {}", a.0.log(), b.0.log()));
    let after = now_ns();
    let fb = accepted.join().expect("accept thread").expect("accept");

    let hash = sha3::Sha3_256::digest(NAME.as_bytes()).to_vec();
    let mgmt = mgmt(&capture);
    let mut request = None;
    let mut response = None;
    for frame in &mgmt {
        let payload = Frame::new_checked(&frame[..]).expect("frame").payload_ref();
        match MgmtMsg::parse_bytes(payload, hash.len()) {
            Ok(MgmtMsg::FlowReq { hash: h, oap, .. }) if h == hash => request = Some(oap.to_vec()),
            Ok(MgmtMsg::FlowReply {
                response: 0, oap, ..
            }) => response = Some(oap.to_vec()),
            _ => {}
        }
    }
    let request = request.unwrap_or_else(|| panic!("no FLOW_REQ captured: {mgmt:02x?}"));
    let response = response.unwrap_or_else(|| panic!("no FLOW_REPLY captured: {mgmt:02x?}"));
    assert_eq!(
        request.len(),
        oap::FIXED_LEN,
        "the reference's 36-byte request"
    );
    let req = oap::Repr::parse_request(&request).expect("an OAP request");
    assert_eq!(req, oap::Repr::request(req.id, req.timestamp));
    assert!(
        (before..=after).contains(&req.timestamp),
        "CLOCK_REALTIME ns"
    );
    assert_eq!(response.len(), 84, "the reference's 84-byte response");
    let rsp = oap::Repr::parse_response(&response, req.md_nid).expect("an OAP response");
    assert_eq!(rsp.id, req.id);
    assert_eq!(rsp.req_hash, &sha2::Sha384::digest(&request)[..]);
    assert!(rsp.timestamp >= req.timestamp && rsp.timestamp <= now_ns());
    assert!(!rsp.is_signed() && rsp.kex.is_empty() && rsp.cipher_nid == 0);
    drop(capture);
    println!(
        "OAP: request {} bytes, response {} bytes, id {:02x?}",
        request.len(),
        response.len(),
        &req.id[..8]
    );

    // --- Max SDU ----------------------------------------------------------------------
    for f in [&fa, &fb] {
        assert_eq!(f.max_sdu(), MAX_SDU, "MTU - 4");
        assert_eq!(f.info().max_sdu, Some(MAX_SDU as u32));
    }
    let too_big = vec![0x5au8; MAX_SDU + 1];
    assert!(
        matches!(
            fa.write(&too_big),
            Err(o7s::Error::TooLarge {
                len: 1497,
                max: 1496
            })
        ),
        "a 1497-byte write is refused at once"
    );
    assert!(matches!(
        fa.alloc_packet(MAX_SDU + 1),
        Err(o7s::Error::TooLarge { len: 1497, .. })
    ));
    let packet = fa.pool().try_alloc(MAX_SDU + 1).expect("a pool block");
    assert!(matches!(
        fa.write_packet(packet),
        Err(o7s::Error::TooLarge { len: 1497, .. })
    ));
    let e = fb.write(&too_big).expect_err("B refuses too");
    assert!(e.to_string().contains("1496"), "{e}");
    let full: Vec<u8> = (0..MAX_SDU).map(|i| i as u8).collect();
    fa.write(&full).expect("1496 bytes fit");
    fb.set_read_timeout(Some(TIMEOUT));
    let mut buf = vec![0u8; 2048];
    let n = fb.read(&mut buf).expect("the 1496-byte SDU arrives");
    assert_eq!(&buf[..n], &full[..]);
    fb.write(&full).expect("and back");
    fa.set_read_timeout(Some(TIMEOUT));
    assert_eq!(fa.read(&mut buf).expect("read"), MAX_SDU);
    for host in [&a, &b] {
        assert_eq!(host.counter("tx refused"), 0, "nothing dropped in the IPCP");
    }

    // --- Deallocation -----------------------------------------------------------------
    a.wait_flows(1, "while the flow lives");
    b.wait_flows(1, "while the flow lives");
    // A burst written just before the dealloc still arrives whole.
    const BURST: u32 = 500;
    for i in 0..BURST {
        let mut sdu = vec![0u8; 1000];
        sdu[..4].copy_from_slice(&i.to_be_bytes());
        fa.write(&sdu).expect("burst write");
    }
    fa.dealloc().expect("dealloc A");
    for i in 0..BURST {
        let n = fb
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("SDU {i} of the burst lost: {e}"));
        assert_eq!((n, &buf[..4]), (1000, &i.to_be_bytes()[..]));
    }
    a.wait_flows(0, "after A's dealloc");
    drop(fb);
    b.wait_flows(0, "after B's dealloc");
    assert!(a.0.flows().is_empty() && b.0.flows().is_empty());

    // A client SIGKILLed while it holds a flow.
    let accepted = accept_one(&app_b);
    let mut helper = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "helper_alloc_and_wait", "--nocapture"])
        .env("O7S_H1_HELPER_RUNDIR", &a.0.rundir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn helper");
    let mut lines = Lines::new(helper.stdout.take().expect("stdout"));
    lines.wait_for("HELPER FLOW", TIMEOUT);
    let fb = accepted.join().expect("accept thread").expect("accept");
    a.wait_flows(1, "the helper's flow");
    b.wait_flows(1, "the helper's flow");
    let pid = Pid::from_raw(i32::try_from(helper.id()).expect("pid"));
    kill(pid, Signal::SIGKILL).expect("SIGKILL");
    let _ = helper.wait();
    a.wait_flows(0, "after the client's SIGKILL");
    let deadline = Instant::now() + TIMEOUT;
    while !a.0.flows().is_empty() {
        assert!(Instant::now() < deadline, "A's IRMd keeps the flow");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Nothing goes to the peer (as in the reference): B's end lasts until its app lets go.
    assert_eq!(b.counter("flows"), 1);
    drop(fb);
    b.wait_flows(0, "after B's dealloc");
    let log = a.0.log();
    assert!(log.contains("IPCP deallocated its flow"), "{log}");

    drop(app_a);
    drop(app_b);
    let leftovers = Leftovers::of([&a.0, &b.0]);
    drop(a);
    drop(b);
    leftovers.assert_none_left(pair);
}

/// Not a test on its own: the client `oap_on_the_wire_max_sdu_and_deallocation_over_eth_dix`
/// SIGKILLs. It allocates a flow to [`NAME`] on the IRMd of `O7S_H1_HELPER_RUNDIR`, says so,
/// and waits to be killed.
#[test]
fn helper_alloc_and_wait() {
    let Some(rundir) = std::env::var_os("O7S_H1_HELPER_RUNDIR") else {
        return;
    };
    let client = o7s::Client::connect_to(Path::new(&rundir)).expect("connect");
    let flow = client
        .flow_alloc(NAME, None, Some(TIMEOUT))
        .expect("helper alloc");
    flow.write(b"alive").expect("write");
    println!("HELPER FLOW {}", flow.id());
    std::io::Write::flush(&mut std::io::stdout()).expect("flush");
    std::thread::sleep(Duration::from_secs(60));
}
