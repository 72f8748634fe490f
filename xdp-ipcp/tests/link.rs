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

/// Four RX queues on each end: the xdp backend binds one AF_XDP socket per queue, all sharing
/// the pool's UMEM (the second and later bind without flags, or the kernel says EINVAL), and
/// every SDU arrives whichever queue it came in on.
#[test]
fn native_xdp_on_four_queues() {
    let test = "native_xdp_on_four_queues";
    if !can_run(test, true) {
        return;
    }
    let pair = NetnsPair::with_queues(1500, 4);
    let reports = exchange([ModeChoice::Native; 2], sdus() / 5, &pair, None);
    for r in &reports {
        assert_eq!(r.backend.kind, expected_kind(ModeChoice::Native), "{test}");
        assert_eq!(r.backend.queues, 4, "{test}: {}", r.backend);
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

/// Byte `i` of the TCP test's stream.
fn tcp_byte(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 12)) as u8
}

/// A TCP connection from `client_ns` to a listener in `server_ns` (on [`ADDRS`]`[1]`): the
/// client sends `len` patterned bytes, the server checks them and echoes them back, the client
/// checks the echo.
fn tcp_round_trip(client_ns: &str, server_ns: &str, len: usize) {
    use std::io::{Read as _, Write as _};
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    let timeout = Some(Duration::from_secs(30));
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let server = net::spawn_in_netns(server_ns, move || {
        let listener = TcpListener::bind((ADDRS[1], 0)).expect("bind");
        port_tx
            .send(listener.local_addr().expect("local_addr").port())
            .expect("send port");
        let (mut stream, _) = listener.accept().expect("accept");
        stream.set_read_timeout(timeout).expect("timeout");
        stream.set_write_timeout(timeout).expect("timeout");
        let mut buf = vec![0u8; len];
        stream.read_exact(&mut buf).expect("server read");
        if let Some(i) = (0..len).find(|&i| buf[i] != tcp_byte(i)) {
            panic!("server: byte {i} of {len} corrupted");
        }
        stream.write_all(&buf).expect("server write");
        stream.shutdown(Shutdown::Write).expect("shutdown");
    });
    let port = port_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the server did not listen");
    let addr: SocketAddr = format!("{}:{port}", ADDRS[1]).parse().expect("address");
    let client = net::spawn_in_netns(client_ns, move || {
        let start = Instant::now();
        let mut stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
        stream.set_read_timeout(timeout).expect("timeout");
        stream.set_write_timeout(timeout).expect("timeout");
        let data: Vec<u8> = (0..len).map(tcp_byte).collect();
        stream.write_all(&data).expect("client write");
        let mut echo = Vec::with_capacity(len);
        stream.read_to_end(&mut echo).expect("client read");
        assert_eq!(echo.len(), len, "echo length");
        assert!(echo == data, "echo corrupted");
        start.elapsed()
    });
    let took = client
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    server
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    eprintln!("TCP: {len} bytes each way in {took:.2?}");
}

#[test]
fn tcp_works_while_ouroboros_traffic_floods_native_xdp() {
    let test = "tcp_works_while_ouroboros_traffic_floods_native_xdp";
    if !can_run(test, true) {
        return;
    }
    let pair = NetnsPair::new(1500).with_addresses();
    let (client_ns, server_ns) = (pair.ns[0].clone(), pair.ns[1].clone());
    // Four connections in a row, so the transfers overlap the flood's whole run.
    let tcp = Box::new(move || {
        for _ in 0..4 {
            tcp_round_trip(&client_ns, &server_ns, 1 << 20);
        }
    });
    // Both ends run native XDP; the SDUs keep flowing both ways until the TCP exchanges end.
    let reports = exchange(
        [ModeChoice::Native, ModeChoice::Native],
        20_000,
        &pair,
        Some(tcp),
    );
    for r in &reports {
        assert_eq!(r.backend.kind, expected_kind(ModeChoice::Native));
    }
    summary(test, &reports);
}
