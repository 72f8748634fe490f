//! `oping` end to end: the real `irmd` on a temporary run directory, real `oping` server and
//! client processes, direct local flows between them.
//!
//! The `irmd` binary belongs to another package, so cargo does not build it for these tests:
//! the first test builds it (`cargo build -p o7s-irmd --bin irmd`, a no-op when it is up to
//! date) into the same target directory, next to `oping`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Lines, OPING, TIMEOUT, irmd_binary, text};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use o7s_pool::Place;
use o7s_testkit::run_timed as run;
use o7s_testkit::{Irmd, Options, temp_dir};

o7s_testkit::irmd_host!(
    /// One IRMd on its own temporary directory; dropping it kills it and every process started
    /// through it, and removes the directory and the shared memory.
    Host
);

impl Host {
    fn start() -> Self {
        Self(Irmd::start(temp_dir("oping"), Options::new(irmd_binary())))
    }

    fn oping(&self, args: &[&str]) -> Command {
        self.tool(OPING, args)
    }

    /// Starts `oping -l -n name` and waits until it is bound and accepting.
    fn server(&mut self, name: &str) -> Lines {
        let server = self.oping(&["-l", "-n", name]);
        self.0.spawn(server, "listening on").1
    }
}

fn ping_all_answered(size: usize) {
    let mut host = Host::start();
    let _server = host.server("oping");
    let (out, _) = run(host.oping(&[
        "-n",
        "oping",
        "-c",
        "20",
        "-i",
        "10ms",
        "-s",
        &size.to_string(),
    ]));
    let stdout = text(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        text(&out.stderr)
    );
    let replies = stdout
        .lines()
        .filter(|l| l.starts_with(&format!("{size} bytes from oping: seq=")))
        .count();
    assert_eq!(replies, 20, "{stdout}");
    assert!(
        stdout.contains("20 packets transmitted, 20 received, 0% packet loss"),
        "{stdout}"
    );
    assert!(stdout.contains("rtt min/avg/max/mdev = "), "{stdout}");
    // The client deallocated, the server followed: no flow, nothing left in the pool.
    let deadline = Instant::now() + TIMEOUT;
    while !host.flows().is_empty() {
        assert!(Instant::now() < deadline, "flows left: {:?}", host.flows());
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = host.pool().verify();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.owned, report.queued), (0, 0), "{report:?}");
}

#[test]
fn twenty_pings_of_64_bytes_are_answered() {
    ping_all_answered(64);
}

#[test]
fn twenty_pings_of_1400_bytes_are_answered() {
    ping_all_answered(1400);
}

#[test]
fn a_killed_client_ends_the_servers_flow_and_is_reclaimed() {
    let mut host = Host::start();
    let mut server = host.server("oping");
    let mut client = host
        .oping(&["-n", "oping", "-c", "100000", "-i", "1ms", "-s", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn client");
    let pid = client.id();
    let mut replies = Lines::new(client.stdout.take().expect("stdout"));
    replies.wait_for("seq=20 ", TIMEOUT);
    let flow = server.wait_for(&format!("from pid {pid}"), TIMEOUT);
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill client");
    let killed = Instant::now();
    client.wait().expect("reap client");
    // The server's read ends with PeerGone (it may have been blocked in it).
    let ended = server.wait_for(&format!("(pid {pid}) ended"), Duration::from_secs(5));
    assert!(
        ended.contains("peer at the other end of the flow is gone"),
        "{ended} after {flow}"
    );
    println!("server saw: {ended} ({:?} after SIGKILL)", killed.elapsed());
    // The IRMd reclaimed the dead client's blocks and, once the server deallocated, the rings.
    let pool = host.pool();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let report = pool.verify();
        let dead_blocks: Vec<u32> = (0..pool.layout().total_blocks)
            .filter(|&i| {
                pool.place(i).is_ok_and(|w| {
                    w.holder == pid
                        || matches!(
                            w.place,
                            Place::Owned { pid: p } | Place::Cached { pid: p } | Place::Kernel { pid: p }
                                if p == pid
                        )
                })
            })
            .collect();
        let flows = host.flows();
        if report.is_ok() && dead_blocks.is_empty() && flows.is_empty() {
            println!("after {:?}: {report:?}", killed.elapsed());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not reclaimed: {report:?}, blocks of {pid}: {dead_blocks:?}, flows: {flows:?}\n{}",
            host.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(host.log().contains("process died"), "{}", host.log());
    // The server goes on serving.
    let (out, _) = run(host.oping(&["-n", "oping", "-c", "3", "-i", "10ms"]));
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[test]
fn allocating_to_a_name_nobody_accepts_on_fails_clearly() {
    let host = Host::start();
    // Unknown name: at once.
    let (out, took) = run(host.oping(&["-n", "nobody", "-c", "1"]));
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no name \"nobody\""), "{err}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // A name someone is bound to but nobody accepts on: within the allocation timeout.
    let app = o7s::Client::connect_to(&host.rundir).expect("connect");
    app.bind("silent").expect("bind");
    let (out, took) = run(host.oping(&["-n", "silent", "-c", "1", "--alloc-timeout", "500"]));
    let err = text(&out.stderr);
    println!("{err}");
    assert!(!out.status.success());
    assert!(
        err.contains("no process accepted a flow for \"silent\" within 500 ms"),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[test]
fn no_irmd_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("o7s-oping-none-{}", std::process::id()));
    let (out, _) = run({
        let mut c = Command::new(OPING);
        c.args(["-n", "x", "-c", "1"])
            .env("O7S_RUNDIR", &dir)
            .stdin(Stdio::null());
        c
    });
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "cannot reach the IRMd at {}: is irmd running? set O7S_RUNDIR",
            dir.join("irmd.sock").display()
        )),
        "{err}"
    );
}
