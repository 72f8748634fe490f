//! `irm` end to end: the real `irmd` on a temporary run directory, `irm` as a process.

mod common;

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixListener;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{Host, IRM, OPING, TIMEOUT, run, text};

fn irm(host: &Host, args: &[&str]) -> Output {
    run(host.tool(IRM, args))
}

/// Runs `irm`, expects success, returns stdout.
fn irm_ok(host: &Host, args: &[&str]) -> String {
    let out = irm(host, args);
    assert!(
        out.status.success(),
        "irm {args:?}: {}\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs `irm`, expects exit status `code`, returns stderr.
fn irm_fails(host: &Host, args: &[&str], code: i32) -> String {
    let out = irm(host, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "irm {args:?}\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

/// The table row whose first column is `first`, split into trimmed cells.
fn row(table: &str, first: &str) -> Option<Vec<String>> {
    table.lines().find_map(|l| {
        let cells: Vec<String> = l
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect();
        (cells.first().map(String::as_str) == Some(first)).then_some(cells)
    })
}

/// The table row whose column `col` is `value`.
fn row_where(table: &str, col: usize, value: &str) -> Option<Vec<String>> {
    table.lines().find_map(|l| {
        let cells: Vec<String> = l
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect();
        (cells.get(col).map(String::as_str) == Some(value)).then_some(cells)
    })
}

fn assert_aligned(table: &str) {
    let widths: Vec<usize> = table.lines().map(|l| l.chars().count()).collect();
    assert!(widths.windows(2).all(|w| w[0] == w[1]), "{table}");
}

#[test]
fn names_are_created_listed_and_destroyed() {
    let host = Host::start("irm");
    assert_eq!(
        irm_ok(&host, &["name", "list"]).trim(),
        "No names in system."
    );
    irm_ok(&host, &["n", "c", "foo"]);
    irm_ok(&host, &["name", "create", "bar", "lb", "spill"]);
    // --rundir works as well as O7S_RUNDIR.
    let rundir = host.rundir.to_string_lossy().into_owned();
    let mut c = host.tool(IRM, &["--rundir", &rundir, "name", "create", "baz"]);
    c.env_remove("O7S_RUNDIR");
    let out = run(c);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let list = irm_ok(&host, &["name", "list"]);
    println!("{list}");
    assert_aligned(&list);
    assert!(list.contains("load-balance policy"), "{list}");
    assert_eq!(row(&list, "foo").expect("foo")[1], "round-robin");
    assert_eq!(row(&list, "bar").expect("bar")[1], "spillover");
    assert!(row(&list, "baz").is_some(), "{list}");
    let filtered = irm_ok(&host, &["name", "list", "ba*"]);
    assert!(row(&filtered, "foo").is_none() && row(&filtered, "bar").is_some());

    irm_ok(&host, &["name", "destroy", "foo"]);
    let list = irm_ok(&host, &["n", "l"]);
    assert!(row(&list, "foo").is_none(), "{list}");
    let err = irm_fails(&host, &["name", "destroy", "foo"], 1);
    assert!(err.contains("cannot destroy name \"foo\""), "{err}");
}

#[test]
fn programs_and_processes_are_bound_and_unbound() {
    let mut host = Host::start("irm");
    let oping = std::fs::canonicalize(OPING).expect("oping path");
    let oping = oping.to_string_lossy().into_owned();
    irm_ok(
        &host,
        &[
            "bind", "program", &oping, "name", "pn", "auto", "--", "-l", "-n", "pn",
        ],
    );
    let list = irm_ok(&host, &["name", "list"]);
    println!("{list}");
    assert_eq!(row(&list, "pn").expect("pn")[2], oping);
    let err = irm_fails(
        &host,
        &["bind", "program", "no-such-program-o7s", "name", "x"],
        1,
    );
    assert!(err.contains("not found in PATH"), "{err}");
    irm_ok(&host, &["unbind", "program", &oping, "name", "pn"]);
    assert_eq!(row(&irm_ok(&host, &["n", "l"]), "pn").expect("pn")[2], "-");

    // A running, announced process.
    let (pid, _lines) = host.spawn(OPING, &["-l", "-n", "srv"], "listening on");
    let pid = pid.to_string();
    irm_ok(&host, &["bind", "proc", &pid, "name", "extra"]);
    let list = irm_ok(&host, &["name", "list"]);
    println!("{list}");
    assert_eq!(row(&list, "extra").expect("extra")[3], pid);
    irm_ok(&host, &["unbind", "process", &pid, "name", "extra"]);
    assert_eq!(
        row(&irm_ok(&host, &["name", "list"]), "extra").expect("extra")[3],
        "-"
    );
    // A process that never announced itself: the IRMd's refusal is passed on.
    let me = std::process::id().to_string();
    let err = irm_fails(&host, &["bind", "process", &me, "name", "x"], 1);
    assert!(err.contains("has not announced itself"), "{err}");
    let err = irm_fails(&host, &["bind", "process", "999999999", "name", "x"], 1);
    assert!(err.contains("no process with pid"), "{err}");
}

#[test]
fn flow_list_shows_a_running_oping_flow() {
    let mut host = Host::start("irm");
    assert_eq!(
        irm_ok(&host, &["flow", "list"]).trim(),
        "No flows in system."
    );
    let (server, _srv) = host.spawn(OPING, &["-l", "-n", "oping"], "listening on");
    let (client, mut replies) = host.spawn(
        OPING,
        &["-n", "oping", "-c", "200", "-i", "20ms"],
        "Pinging oping",
    );
    replies.wait_for("seq=3 ", TIMEOUT);
    let list = irm_ok(&host, &["f", "l"]);
    println!("{list}");
    assert_aligned(&list);
    let flow = host.flows();
    assert_eq!(flow.len(), 1, "{flow:?}");
    let cells = row(&list, &flow[0].flow_id.to_string()).expect("the flow's row");
    assert_eq!(
        cells,
        [
            flow[0].flow_id.to_string(),
            "oping".to_owned(),
            client.to_string(),
            "active".to_owned(),
            server.to_string(),
            "active".to_owned(),
            "raw".to_owned(),
            format!("{}/{}", flow[0].tx_ring, flow[0].rx_ring),
        ]
    );
    replies.wait_for("ping statistics", TIMEOUT);
    let deadline = Instant::now() + TIMEOUT;
    while irm_ok(&host, &["flow", "list"]).trim() != "No flows in system." {
        assert!(Instant::now() < deadline, "the flow stays listed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn what_the_protocol_lacks_is_reported_as_not_supported() {
    let host = Host::start("irm");
    for args in [
        &["ipcp", "enroll", "name", "u", "layer", "l"][..],
        &["ipcp", "connect", "name", "u", "dst", "d"],
        &["ipcp", "disconnect", "name", "u", "dst", "d"],
        &["ipcp", "bootstrap", "name", "u", "layer", "l", "addr", "4"],
    ] {
        let err = irm_fails(&host, args, 3);
        assert!(err.contains("not supported yet"), "{args:?}: {err}");
    }
    let err = irm_fails(&host, &["ipcp", "stats", "nope"], 1);
    assert!(err.contains("no IPCP named \"nope\""), "{err}");
    let err = irm_fails(&host, &["ipcp", "bootstrap", "name", "x", "layer", "l"], 1);
    assert!(err.contains("give `type <type>` to create it"), "{err}");
}

#[test]
fn an_irmd_answering_not_supported_gives_exit_status_3() {
    // A stand-in IRMd that refuses everything with NotSupported.
    use o7s_proto::irm::{Body, Codec, Envelope, ErrorCode, FrameDecoder, Response};
    let dir = std::env::temp_dir().join(format!("o7s-irm-ns-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let listener = UnixListener::bind(o7s::rundir::socket_path(&dir)).expect("bind");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut decoder = FrameDecoder::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                return;
            }
            let mut input = &buf[..n];
            while let Some(e) = decoder.decode(&mut input).expect("frame") {
                assert!(matches!(e.body, Some(Body::Request(_))));
                let reply = Envelope::response(
                    e.id,
                    Response::error(ErrorCode::NotSupported, "name creation is not implemented"),
                );
                s.write_all(&Codec::encode_to_vec(&reply).expect("encode"))
                    .expect("write");
            }
        }
    });
    let out = run({
        let mut c = std::process::Command::new(IRM);
        c.arg("--rundir").arg(&dir).args(["name", "create", "x"]);
        c
    });
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(
            "cannot create name \"x\": not supported by this irmd yet (name creation is not implemented)"
        ),
        "{err}"
    );
    let _ = server.join();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_command_lines_say_what_to_do() {
    let host = Host::start("irm");
    let err = irm_fails(&host, &["ipcp", "c", "name", "x"], 2);
    assert!(
        err.contains("ambiguous ipcp command \"c\": it abbreviates create, connect"),
        "{err}"
    );
    assert!(err.contains("Usage: irm ipcp"), "{err}");
    let err = irm_fails(&host, &["name", "frobnicate"], 2);
    assert!(
        err.contains("expected one of create, destroy, register, unregister, list"),
        "{err}"
    );
    let err = irm_fails(&host, &["bind", "program", "/bin/true", "name"], 2);
    assert!(err.contains("`name` needs a value"), "{err}");
    let help = irm_ok(&host, &["--help"]);
    assert!(help.contains("Usage: irm [--rundir DIR]"), "{help}");
    let help = irm_ok(&host, &["ipcp", "bootstrap", "--help"]);
    assert!(help.contains("ethertype"), "{help}");
}

#[test]
fn no_irmd_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("o7s-irm-none-{}", std::process::id()));
    let out = run({
        let mut c = std::process::Command::new(IRM);
        c.args(["name", "list"]).env("O7S_RUNDIR", &dir);
        c
    });
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("failed to communicate with the IRMd: cannot reach the IRMd"),
        "{err}"
    );
}

#[test]
fn local_ipcps_are_created_bootstrapped_listed_and_destroyed() {
    common::ipcpd_binaries();
    let mut host = Host::start("irm");
    assert_eq!(
        irm_ok(&host, &["ipcp", "list"]).trim(),
        "No IPCPs in system."
    );
    let out = irm(&host, &["ipcp", "create", "name", "l0", "type", "local"]);
    match out.status.code() {
        Some(0) => assert!(text(&out.stdout).starts_with("Created IPCP l0 (pid ")),
        Some(3) => {
            println!(
                "skipped: this irmd cannot create IPCPs yet: {}",
                text(&out.stderr)
            );
            return;
        }
        _ => panic!(
            "ipcp create: {}\n{}\n{}",
            out.status,
            text(&out.stderr),
            host.log()
        ),
    }
    irm_ok(&host, &["ipcp", "bootstrap", "name", "l0", "layer", "loc"]);
    // A missing IPCP is created by bootstrap when the type is given.
    irm_ok(&host, &["i", "b", "n", "l1", "la", "loc2", "ty", "local"]);
    let list = irm_ok(&host, &["ipcp", "list"]);
    println!("{list}");
    assert_aligned(&list);
    let l0 = row_where(&list, 1, "l0").expect("l0");
    assert_eq!(&l0[2..], ["local", "loc"]);
    let l1 = row_where(&list, 1, "l1").expect("l1");
    assert_eq!(&l1[2..], ["local", "loc2"]);
    let only = irm_ok(&host, &["ipcp", "list", "layer", "loc2"]);
    assert!(row_where(&only, 1, "l0").is_none() && row_where(&only, 1, "l1").is_some());
    let err = irm_fails(
        &host,
        &[
            "ipcp",
            "bootstrap",
            "name",
            "l0",
            "layer",
            "x",
            "type",
            "unicast",
        ],
        1,
    );
    assert!(err.contains("is of type local, not unicast"), "{err}");

    // A flow through the local IPCP: two flows, each with the IPCP at one end.
    irm_ok(&host, &["name", "register", "oping", "layer", "loc"]);
    let l0_pid = &l0[0];
    let (server, _srv) = host.spawn(OPING, &["-l", "-n", "oping"], "listening on");
    let (client, mut replies) = host.spawn(
        OPING,
        &["-n", "oping", "-c", "200", "-i", "20ms"],
        "Pinging oping",
    );
    replies.wait_for("seq=3 ", TIMEOUT);
    let flows = irm_ok(&host, &["flow", "list"]);
    println!("{flows}");
    assert_aligned(&flows);
    let via = format!("{l0_pid} (ipcp l0)");
    let to_ipcp = row_where(&flows, 2, &client.to_string()).expect("client's flow");
    assert_eq!(to_ipcp[4], via, "{flows}");
    let from_ipcp = row_where(&flows, 4, &server.to_string()).expect("server's flow");
    assert_eq!(from_ipcp[2], via, "{flows}");
    replies.wait_for("ping statistics", TIMEOUT);

    irm_ok(&host, &["ipcp", "destroy", "name", "l1"]);
    irm_ok(&host, &["ipcp", "destroy", "name", "l0"]);
    assert_eq!(
        irm_ok(&host, &["ipcp", "list"]).trim(),
        "No IPCPs in system."
    );
}
