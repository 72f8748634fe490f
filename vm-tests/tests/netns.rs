//! The shared scenarios on the netns backend (needs root; skips with a reason otherwise).

use o7s_vm_tests::netns::Netns;
use o7s_vm_tests::{Verdict, run_scenario, scenarios};

fn run(name: &str) {
    let scenario = scenarios::by_name(name).expect("known scenario");
    let outcome = run_scenario(&mut Netns::default(), &scenario);
    println!("{outcome}");
    match outcome.verdict {
        Verdict::Pass => {}
        Verdict::Skip(reason) => eprintln!("skipped {name}: {reason}"),
        Verdict::Fail(reason) => panic!("{name} failed: {reason}"),
    }
}

#[test]
fn two_host_ping() {
    run("two-host-ping");
}

#[test]
fn link_flap() {
    run("link-flap");
}

#[test]
fn netem() {
    run("netem");
}

#[test]
fn three_host_lan() {
    run("three-host-lan");
}

#[test]
fn three_host_line() {
    run("three-host-line");
}

#[test]
fn o7s_local_oping() {
    run("o7s-local-oping");
}

#[test]
fn o7s_eth_ping_perf() {
    run("o7s-eth-ping-perf");
}

#[test]
fn o7s_eth_zero_copy() {
    run("o7s-eth-zerocopy");
}

#[test]
fn o7s_eth_app_crash() {
    run("o7s-eth-app-crash");
}

#[test]
fn o7s_eth_ipcp_crash() {
    run("o7s-eth-ipcp-crash");
}

#[test]
fn o7s_eth_link_flap() {
    run("o7s-eth-link-flap");
}

#[test]
fn o7s_eth_loss() {
    run("o7s-eth-loss");
}

#[test]
fn o7s_eth_line() {
    run("o7s-eth-line");
}

#[test]
fn a_failing_step_fails_the_scenario() {
    if !o7s_vm_tests::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let scenario = scenarios::by_name("selftest-fail").expect("known scenario");
    let outcome = run_scenario(&mut Netns::default(), &scenario);
    let Verdict::Fail(reason) = &outcome.verdict else {
        panic!("selftest-fail did not fail: {outcome}");
    };
    assert!(reason.starts_with("step 1 on b:"), "{reason}");
    assert!(reason.contains("goodbye"), "{reason}");
}
