//! [`SteerProgram`] on a real veth pair between two fresh network namespaces.
//!
//! Needs root; without it each test prints why and returns. Each test makes its own namespaces
//! (named after the pid) and deletes them when it ends, passing or failing.

mod util;

use std::{
    io::{BufRead, BufReader},
    net::UdpSocket,
    os::fd::AsFd,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use o7s_ebpf::{Counters, DEFAULT_ETHERTYPE, Error, MAX_QUEUES, Mode, SteerProgram, Verdict};
use util::{ADDR_A, NetnsPair, can_run, in_netns, load_or_skip, wait_counters};

const OTHER_ETHERTYPE: u16 = 0x88b5; // IEEE 802 local experimental
const WAIT: Duration = Duration::from_secs(5);

/// Loads the program and attaches it to `pair.veth_a` in `mode`, from inside `pair.ns_a`.
fn attach(test: &str, pair: &NetnsPair, mode: Mode) -> Option<SteerProgram> {
    let steer = load_or_skip(test, DEFAULT_ETHERTYPE)?;
    let veth = pair.veth_a.clone();
    let steer = in_netns(&pair.ns_a, move || {
        let mut steer = steer;
        let in_effect = steer
            .attach(veth.as_str(), mode)
            .unwrap_or_else(|e| panic!("attaching in {mode} mode: {e}"));
        assert_eq!(in_effect, mode);
        steer
    });
    Some(steer)
}

fn counts_frames(mode: Mode) {
    let test = &format!("counts_frames_{mode}");
    if !can_run(test) {
        return;
    }
    // MTU 9000: native attach only works there because the program is `xdp.frags`.
    let pair = NetnsPair::new(9000);
    let Some(mut steer) = attach(test, &pair, mode) else {
        return;
    };
    assert_eq!(
        steer.attachments().collect::<Vec<_>>(),
        [(pair.ifindex_a(), mode)]
    );
    assert!(pair.xdp_attached_a(), "{}", pair.link_details_a());

    pair.send_from_b(DEFAULT_ETHERTYPE, 10);
    pair.send_from_b(OTHER_ETHERTYPE, 7);
    let c = wait_counters(&steer, WAIT, |c| c.matched >= 10 && c.passed >= 7);
    assert_eq!(c.matched, 10, "{c:?}");
    assert_eq!(c.redirect_failed, 10, "no socket registered: {c:?}");
    // The kernel itself sends nothing here (no addresses, IPv6 off), but be lenient.
    assert!(c.passed >= 7, "{c:?}");
    assert_eq!(c.runt, 0, "{c:?}");

    // Switching the EtherType at run time.
    steer.set_ethertype(OTHER_ETHERTYPE).expect("set_ethertype");
    assert_eq!(steer.ethertype().expect("ethertype"), OTHER_ETHERTYPE);
    pair.send_from_b(OTHER_ETHERTYPE, 5);
    pair.send_from_b(DEFAULT_ETHERTYPE, 3);
    let d = wait_counters(&steer, WAIT, |d| {
        d.matched >= c.matched + 5 && d.passed >= c.passed + 3
    });
    assert_eq!(d.matched, c.matched + 5, "{d:?}");
    assert_eq!(d.redirect_failed, c.redirect_failed + 5, "{d:?}");
    assert!(d.passed >= c.passed + 3, "{d:?}");

    // (c) detaching and dropping leave nothing behind.
    steer.detach(pair.ifindex_a()).expect("detach");
    assert!(pair.wait_xdp_detached_a(WAIT), "{}", pair.link_details_a());
    assert!(matches!(
        steer.detach(pair.ifindex_a()),
        Err(Error::NotAttached(_))
    ));
    drop(steer);
    assert!(!pair.xdp_attached_a(), "{}", pair.link_details_a());
}

#[test]
fn counts_frames_native() {
    counts_frames(Mode::Native);
}

#[test]
fn counts_frames_generic() {
    counts_frames(Mode::Generic);
}

/// (b) ICMP (and the ARP before it) still reaches the kernel while the program is attached.
#[test]
fn ping_works_while_attached() {
    let test = "ping_works_while_attached";
    if !can_run(test) {
        return;
    }
    if Command::new("ping").arg("-V").output().is_err() {
        eprintln!("skipping {test}: `ping` not found (iputils-ping; `cargo xtask setup`)");
        return;
    }
    let pair = NetnsPair::new(1500).with_addresses();
    let Some(steer) = load_or_skip(test, DEFAULT_ETHERTYPE) else {
        return;
    };
    let veth = pair.veth_a.clone();
    let steer = in_netns(&pair.ns_a, move || {
        let mut steer = steer;
        // veth has native XDP, so the best mode is native.
        let mode = steer.attach_best(veth.as_str()).expect("attach_best");
        assert_eq!(mode, Mode::Native);
        steer
    });
    let output = Command::new("ip")
        .args(["netns", "exec", &pair.ns_b, "ping", "-c", "3", "-i", "0.2"])
        .args(["-W", "2", ADDR_A])
        .output()
        .expect("spawning ping");
    assert!(
        output.status.success(),
        "ping across the veth failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let c = steer.counters().expect("counters");
    // 3 echo requests plus at least one ARP frame went through the program as "not ours".
    assert!(c.passed >= 4, "{c:?}");
    assert_eq!(c.matched, 0, "{c:?}");
    drop(steer);
    assert!(pair.wait_xdp_detached_a(WAIT), "{}", pair.link_details_a());
}

/// (c) Dropping the program without detaching first removes the attachment too, in both modes,
/// and a second attach to the same interface is refused while the first holds.
#[test]
fn drop_detaches() {
    let test = "drop_detaches";
    if !can_run(test) {
        return;
    }
    let pair = NetnsPair::new(1500);
    for mode in [Mode::Native, Mode::Generic] {
        let Some(steer) = attach(test, &pair, mode) else {
            return;
        };
        let details = pair.link_details_a();
        assert!(details.contains("prog/xdp"), "{details}");
        let flag = match mode {
            Mode::Native => " xdp ",
            Mode::Generic => " xdpgeneric ",
        };
        assert!(details.contains(flag), "expected `{flag}`: {details}");

        let ifindex = pair.ifindex_a();
        let steer = in_netns(&pair.ns_a, move || {
            let mut steer = steer;
            assert!(matches!(
                steer.attach(ifindex, mode),
                Err(Error::AlreadyAttached(i)) if i == ifindex
            ));
            steer
        });

        drop(steer);
        assert!(pair.wait_xdp_detached_a(WAIT), "{}", pair.link_details_a());
    }
}

/// Sockets: non-AF_XDP fds are refused with the kernel's reason, queue bounds are checked, and
/// unregistering an empty slot is fine.
#[test]
fn register_socket_checks() {
    let test = "register_socket_checks";
    if !can_run(test) {
        return;
    }
    let Some(mut steer) = load_or_skip(test, DEFAULT_ETHERTYPE) else {
        return;
    };
    // Bound to nothing, used only as "an fd that is not an AF_XDP socket".
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    match steer.register_socket(0, udp.as_fd()) {
        Err(e @ Error::Socket { queue: 0, .. }) => {
            assert!(e.raw_os_error().is_some(), "{e}");
            assert!(e.to_string().contains("registering"), "{e}");
        }
        other => panic!("expected Error::Socket, got {other:?}"),
    }
    assert!(matches!(
        steer.register_socket(MAX_QUEUES, udp.as_fd()),
        Err(Error::QueueOutOfRange(q)) if q == MAX_QUEUES
    ));
    steer.unregister(0).expect("unregistering an empty slot");
    assert!(matches!(
        steer.unregister(MAX_QUEUES),
        Err(Error::QueueOutOfRange(_))
    ));
    assert_eq!(steer.ethertype().expect("ethertype"), DEFAULT_ETHERTYPE);
    assert!(matches!(
        steer.set_ethertype(0x05dc),
        Err(Error::InvalidEthertype(0x05dc))
    ));
}

/// The verdicts and counters for single frames run through `BPF_PROG_TEST_RUN` (no network).
#[test]
fn test_run_verdicts() {
    let test = "test_run_verdicts";
    if !can_run(test) {
        return;
    }
    let Some(mut steer) = load_or_skip(test, DEFAULT_ETHERTYPE) else {
        return;
    };
    let frame = |ethertype: u16| {
        let mut frame = [0u8; 60];
        frame[..6].fill(0xff);
        frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
        frame
    };
    let ours = frame(DEFAULT_ETHERTYPE);
    let other = frame(OTHER_ETHERTYPE);

    // No socket registered: our frames fall back to the kernel.
    assert_eq!(steer.test_run(&ours).expect("test_run"), Verdict::Pass);
    assert_eq!(steer.test_run(&other).expect("test_run"), Verdict::Pass);
    // Only the Ethernet header is looked at.
    assert_eq!(
        steer.test_run(&ours[..14]).expect("test_run"),
        Verdict::Pass
    );
    let c = steer.counters().expect("counters");
    let want = Counters {
        matched: 2,
        passed: 1,
        redirect_failed: 2,
        runt: 0,
    };
    assert_eq!(c, want);

    // The kernel does not run XDP on frames shorter than an Ethernet header.
    match steer.test_run(&ours[..10]) {
        Err(e @ Error::TestRun { len: 10, .. }) => {
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        }
        other => panic!("expected Error::TestRun, got {other:?}"),
    }

    steer.set_ethertype(OTHER_ETHERTYPE).expect("set_ethertype");
    assert_eq!(steer.test_run(&other).expect("test_run"), Verdict::Pass);
    assert_eq!(steer.test_run(&ours).expect("test_run"), Verdict::Pass);
    let c = steer.counters().expect("counters");
    assert_eq!((c.matched, c.passed, c.redirect_failed), (3, 2, 3), "{c:?}");
}

const CHILD_NETNS: &str = "O7S_EBPF_CHILD_NETNS";
const CHILD_IF: &str = "O7S_EBPF_CHILD_IF";
const CHILD_READY: &str = "O7S-EBPF-CHILD-ATTACHED";

/// (d) A process that attached the program and is SIGKILLed leaves nothing attached: the
/// kernel closes its bpf_link fd.
#[test]
fn sigkill_leaves_nothing_attached() {
    let test = "sigkill_leaves_nothing_attached";
    if !can_run(test) {
        return;
    }
    if load_or_skip(test, DEFAULT_ETHERTYPE).is_none() {
        return;
    }
    let pair = NetnsPair::new(9000);
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args(["child_attaches_and_waits", "--exact", "--ignored"])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD_NETNS, &pair.ns_a)
        .env(CHILD_IF, &pair.veth_a)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning the child test process");

    let stdout = child.stdout.take().expect("child stdout is piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest may print "test name ... " on the same line first.
            if line.contains(CHILD_READY) {
                let _ = tx.send(line);
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(30));
    if ready.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the child did not report an attachment within 30 s");
    }
    assert!(pair.xdp_attached_a(), "{}", pair.link_details_a());

    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("waiting for the child");
    assert!(!status.success(), "child should have died: {status}");

    assert!(
        pair.wait_xdp_detached_a(WAIT),
        "XDP still attached after SIGKILL: {}",
        pair.link_details_a()
    );
}

/// Helper for `sigkill_leaves_nothing_attached`, run as a child process: attaches natively and
/// waits to be killed. Does nothing when run directly.
#[test]
#[ignore = "helper process for sigkill_leaves_nothing_attached"]
fn child_attaches_and_waits() {
    let (Ok(ns), Ok(veth)) = (std::env::var(CHILD_NETNS), std::env::var(CHILD_IF)) else {
        return;
    };
    let mut steer = SteerProgram::load(DEFAULT_ETHERTYPE).expect("child: load");
    let mode = in_netns(&ns, move || {
        steer
            .attach(veth.as_str(), Mode::Native)
            .map(|mode| (mode, steer))
    });
    let (mode, _steer) = mode.expect("child: attach");
    println!("{CHILD_READY} {mode}");
    // The parent kills us; give up on our own after a minute so nothing is left running.
    thread::sleep(Duration::from_secs(60));
    std::process::exit(3);
}
