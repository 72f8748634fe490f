//! `ipcpd-eth-dix` end to end: two "hosts" (two network namespaces joined by a veth pair),
//! each with its own `irmd` started with `ip netns exec` on its own run directory. On each, an
//! eth-dix IPCP is created and bootstrapped on the veth end (mode auto: native XDP on veth);
//! `oping` and `operf` are registered in host B's layer and served there, and the clients on
//! host A reach them through the two IPCPs: name query, flow allocation and data over the link.
//!
//! Root only (namespaces, XDP); skips with a reason otherwise. `irmd`, `oping` and `operf`
//! belong to other packages, so the test builds them (`cargo build`, a no-op when up to date)
//! into this target directory, next to `ipcpd-eth-dix`, where the IRMd looks for it.
//! Teardown (also on a panic) leaves no process, namespace, XDP program or shared memory.

mod net;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use net::{IRMD, NetnsPair, can_run};
use o7s_proto::irm::{EthMode, IpcpType};
use o7s_testkit::{Irmd, Leftovers, Lines, Options, Stop, assert_no_netns, eth_dix, run, text};

const LAYER: &str = "eth-layer";

/// The directory of `ipcpd-eth-dix`, with `irmd`, `oping` and `operf` built next to it.
fn bin_dir() -> PathBuf {
    net::bin_dir(&[IRMD, ("o7s-cli", "oping"), ("o7s-cli", "operf")])
}

o7s_testkit::irmd_host!(
    /// One host: an IRMd in namespace `ns` on `<dir>/run`. Dropping it kills the processes
    /// started on it and the IRMd (which stops its IPCPs), and removes its directory and shared
    /// memory.
    Host
);

impl Host {
    fn start(ns: &str, dir: PathBuf) -> Self {
        Self(Irmd::start(
            dir,
            Options::new(bin_dir().join("irmd"))
                .netns(ns)
                .rust_log("info")
                .stop(Stop::Term),
        ))
    }

    /// A tool of `bin_dir()` run in this host's namespace against its IRMd.
    fn tool(&self, program: &str, args: &[&str]) -> Command {
        self.0.tool(bin_dir().join(program), args)
    }

    /// Starts `program -l -n name` and waits until it listens.
    fn server(&mut self, program: &str, name: &str) -> Lines {
        let server = self.tool(program, &["-l", "-n", name]);
        self.0.spawn(server, "listening on").1
    }
}

#[test]
fn oping_and_operf_across_two_hosts_over_eth_dix() {
    if !can_run("oping_and_operf_across_two_hosts_over_eth_dix", true) {
        return;
    }
    let started = Instant::now();
    let pair = NetnsPair::new(1500);
    let base = std::env::temp_dir().join(format!("o7s-eth-dix-test-{}", std::process::id()));
    let a = Host::start(&pair.ns[0], base.join("hostA"));
    let mut b = Host::start(&pair.ns[1], base.join("hostB"));

    let info_a = a.ipcp(
        IpcpType::EthDix,
        "eth-a",
        LAYER,
        eth_dix(&pair.veth[0], EthMode::Auto),
    );
    let info_b = b.ipcp(
        IpcpType::EthDix,
        "eth-b",
        LAYER,
        eth_dix(&pair.veth[1], EthMode::Auto),
    );
    for info in [&info_a, &info_b] {
        let backend = info.backend.clone().unwrap_or_default();
        println!("{}: pid {}, {backend}", info.name, info.pid);
        assert!(
            backend.starts_with("xdp native"),
            "mode auto on veth should give native XDP, got {backend:?}"
        );
    }
    b.register_in(LAYER, "oping");
    b.register_in(LAYER, "operf");
    let _oping_server = b.server("oping", "oping");
    let _operf_server = b.server("operf", "operf");
    println!("setup: {:.2} s", started.elapsed().as_secs_f64());

    let t = Instant::now();
    let out = run(a.tool("oping", &["-n", "oping", "-c", "20", "-i", "20"]));
    let stdout = text(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "oping failed ({}): {stdout}{}\nA: {}\nB: {}",
        out.status,
        text(&out.stderr),
        a.log(),
        b.log()
    );
    assert!(
        stdout.contains("20 packets transmitted, 20 received"),
        "not 20/20: {stdout}"
    );
    println!("oping: {:.2} s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let out = run(a.tool("operf", &["-n", "operf", "-d", "2", "-s", "1000"]));
    let stdout = text(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "operf failed ({}): {stdout}{}",
        out.status,
        text(&out.stderr)
    );
    assert!(stdout.contains("sent "), "no operf figures: {stdout}");
    println!("operf: {:.2} s", t.elapsed().as_secs_f64());
    for (host, ipcp) in [(&a, "eth-a"), (&b, "eth-b")] {
        let counters: Vec<String> = host
            .ipcp_stats(ipcp)
            .into_iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        println!("{ipcp}: {}", counters.join(", "));
    }

    // Teardown: hosts first (their IPCPs go with the IRMds), then the namespaces.
    let leftovers = Leftovers::of([&*a, &*b]);
    drop(a);
    drop(b);
    leftovers.assert_no_process();
    for (ns, veth) in pair.ns.iter().zip(&pair.veth) {
        let link = net::run(&["ip", "-n", ns, "-d", "link", "show", veth]);
        let link = text(&link.stdout);
        assert!(
            !link.contains("xdp"),
            "an XDP program is still attached: {link}"
        );
    }
    let names = pair.ns.clone();
    drop(pair);
    assert_no_netns(&names);
    leftovers.assert_no_shm();
    let _ = std::fs::remove_dir_all(&base);
    println!("total: {:.2} s", started.elapsed().as_secs_f64());
}
