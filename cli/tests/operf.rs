//! `operf` end to end: the real `irmd`, an `operf` server and clients as processes.

mod common;

use std::time::Duration;

use common::{Host, OPERF, TIMEOUT, run, text};

/// Numbers of `N packets, B bytes in T s: X pps, Y Mbit/s` after `prefix` in `line`.
fn figures(line: &str, prefix: &str) -> (u64, u64, f64, f64) {
    let rest = &line[line.find(prefix).expect("prefix") + prefix.len()..];
    let words: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| {
        words[i]
            .trim_end_matches([',', ':'])
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("word {i} of {line:?}"))
    };
    // N packets, B bytes in T s: X pps, Y Mbit/s
    (num(0) as u64, num(2) as u64, num(7), num(9))
}

#[test]
fn a_two_second_flood_arrives_whole() {
    let mut host = Host::start("operf");
    let (_, mut server) = host.spawn(OPERF, &["-l", "-n", "perf"], "listening on");
    let out = run(host.tool(OPERF, &["-n", "perf", "-d", "2", "-s", "1000"]));
    let stdout = text(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let sent_line = stdout
        .lines()
        .find(|l| l.starts_with("sent "))
        .expect("sent line");
    let (sent, sent_bytes, pps, mbps) = figures(sent_line, "sent ");
    assert!(sent > 0 && pps > 0.0 && mbps > 0.0, "{sent_line}");
    assert_eq!(sent_bytes, sent * 1000);
    let flow = server.wait_for("received", TIMEOUT);
    println!("{flow}");
    let (received, received_bytes, rpps, _) = figures(&flow, "received ");
    // Writes block on a full ring and never drop: everything sent arrives.
    assert_eq!(received, sent, "{flow}");
    assert_eq!(received_bytes, sent_bytes);
    assert!(rpps > 0.0);
    assert!(
        flow.contains("ended") && flow.contains("0 missing, 0 out of order"),
        "{flow}"
    );
}

#[test]
fn a_rate_limited_run_sends_about_the_rate() {
    let mut host = Host::start("operf");
    let (_, mut server) = host.spawn(OPERF, &["-l"], "listening on");
    let out = run(host.tool(OPERF, &["-d", "1", "-s", "64", "-r", "500"]));
    let stdout = text(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let sent_line = stdout
        .lines()
        .find(|l| l.starts_with("sent "))
        .expect("sent");
    let (sent, ..) = figures(sent_line, "sent ");
    assert_eq!(
        sent, 500,
        "every SDU due within the second is sent: {sent_line}"
    );
    let flow = server.wait_for("received", TIMEOUT);
    assert_eq!(figures(&flow, "received ").0, sent, "{flow}");
}

#[test]
fn a_bidirectional_run_gets_every_echo_back() {
    let mut host = Host::start("operf");
    let (_, mut server) = host.spawn(OPERF, &["-l"], "listening on");
    let out = run(host.tool(OPERF, &["-d", "1", "-s", "256", "-t", "bi"]));
    let stdout = text(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let sent = figures(
        stdout
            .lines()
            .find(|l| l.starts_with("sent "))
            .expect("sent"),
        "sent ",
    )
    .0;
    let echoes = stdout
        .lines()
        .find(|l| l.starts_with("echoes "))
        .expect("echoes");
    assert_eq!(figures(echoes, "echoes ").0, sent, "{echoes}");
    assert!(echoes.ends_with("0.00% loss"), "{echoes}");
    let flow = server.wait_for("received", TIMEOUT);
    assert!(flow.contains(&format!("{sent} echoed")), "{flow}");
}

#[test]
fn a_missing_server_or_bad_size_fails_clearly() {
    let mut host = Host::start("operf");
    let out = run(host.tool(OPERF, &["-n", "nobody", "-d", "1"]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot allocate a flow to \"nobody\""));
    let _server = host.spawn(OPERF, &["-l"], "listening on");
    let out = run(host.tool(OPERF, &["-d", "1", "-s", "4"]));
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("size 4 out of range"), "{err}");
    std::thread::sleep(Duration::from_millis(10));
}

#[test]
fn a_flood_through_the_local_ipcp_arrives_whole() {
    common::ipcpd_binaries();
    let mut host = Host::start("operf");
    let setup = run(host.tool(
        common::IRM,
        &[
            "ipcp",
            "bootstrap",
            "name",
            "l0",
            "layer",
            "loc",
            "type",
            "local",
        ],
    ));
    if setup.status.code() == Some(3) {
        println!(
            "skipped: this irmd cannot create IPCPs yet: {}",
            text(&setup.stderr)
        );
        return;
    }
    assert!(setup.status.success(), "{}", text(&setup.stderr));
    let reg = run(host.tool(common::IRM, &["name", "register", "perf", "layer", "loc"]));
    assert!(reg.status.success(), "{}", text(&reg.stderr));
    let (_, mut server) = host.spawn(OPERF, &["-l", "-n", "perf"], "listening on");
    let out = run(host.tool(OPERF, &["-n", "perf", "-d", "2", "-s", "1000"]));
    let stdout = text(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let sent_line = stdout
        .lines()
        .find(|l| l.starts_with("sent "))
        .expect("sent");
    let (sent, sent_bytes, ..) = figures(sent_line, "sent ");
    assert!(sent > 0, "{sent_line}");
    let flow = server.wait_for("received", TIMEOUT);
    println!("{flow}");
    let (received, received_bytes, ..) = figures(&flow, "received ");
    // The IPCP relays between two flows whose writes block on a full ring: nothing is lost.
    assert!(received <= sent, "{flow}");
    assert_eq!((received, received_bytes), (sent, sent_bytes), "{flow}");
}
