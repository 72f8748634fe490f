//! Two eth-dix IPCPs on a veth pair, each in its own network namespace and thread with its own
//! pool: name query, flow allocation, then numbered SDUs of 64..1400 bytes both ways, checked for
//! loss, corruption and order, in every backend mode and across modes. After each run both pools
//! verify and every block is free again.
//!
//! Needs root (namespaces, raw sockets, BPF); without it each test prints why and returns.
//! `O7S_LINK_SDUS` overrides the number of SDUs per direction.

mod net;

use std::process::Command;

use net::{ADDRS, NetnsPair, can_run, exchange, expected_kind, summary};
use o7s_xdp_ipcp::ModeChoice;

/// SDUs per direction.
fn sdus() -> u64 {
    std::env::var("O7S_LINK_SDUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn run_modes(test: &str, modes: [ModeChoice; 2]) {
    let needs_xdp = modes.iter().any(|&m| m != ModeChoice::Packet);
    if !can_run(test, needs_xdp) {
        return;
    }
    let pair = NetnsPair::new(1500);
    let reports = exchange(modes, sdus(), &pair, None);
    for (r, &m) in reports.iter().zip(&modes) {
        assert_eq!(r.backend.kind, expected_kind(m), "{test}");
        assert!(!r.backend.zero_copy, "veth has no zero-copy AF_XDP");
    }
    summary(test, &reports);
}

#[test]
fn packet_to_packet() {
    run_modes("packet_to_packet", [ModeChoice::Packet, ModeChoice::Packet]);
}

#[test]
fn generic_xdp_to_generic_xdp() {
    run_modes(
        "generic_xdp_to_generic_xdp",
        [ModeChoice::Generic, ModeChoice::Generic],
    );
}

#[test]
fn native_xdp_to_native_xdp() {
    run_modes(
        "native_xdp_to_native_xdp",
        [ModeChoice::Native, ModeChoice::Native],
    );
}

#[test]
fn native_xdp_to_packet() {
    run_modes(
        "native_xdp_to_packet",
        [ModeChoice::Native, ModeChoice::Packet],
    );
}

#[test]
fn packet_to_generic_xdp() {
    run_modes(
        "packet_to_generic_xdp",
        [ModeChoice::Packet, ModeChoice::Generic],
    );
}

#[test]
fn auto_picks_native_on_veth() {
    run_modes(
        "auto_picks_native_on_veth",
        [ModeChoice::Auto, ModeChoice::Auto],
    );
}

#[test]
fn ping_works_while_ouroboros_traffic_flows() {
    let test = "ping_works_while_ouroboros_traffic_flows";
    if !can_run(test, true) {
        return;
    }
    let pair = NetnsPair::new(1500).with_addresses();
    let ns = pair.ns[0].clone();
    let ping = Box::new(move || {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &ns, "ping", "-c", "20", "-i", "0.05", "-W", "2",
            ])
            .arg(ADDRS[1])
            .output()
            .expect("spawning ping");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "ping failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(" 0% packet loss"), "{text}");
    });
    let reports = exchange(
        [ModeChoice::Native, ModeChoice::Generic],
        20_000,
        &pair,
        Some(ping),
    );
    summary(test, &reports);
}
