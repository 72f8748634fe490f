//! o7s network scenarios: every host runs its own `irmd` and an eth-dix IPCP over XDP on its
//! NIC (virtio-net in the guests, veth on netns), and the applications talk across the link.

use std::time::Duration;

use crate::artifacts;
use crate::scenario::{Action, Expect, Requirement, Scenario};

/// The layer every scenario bootstraps.
const LAYER: &str = "vmnet";

/// Binaries every host gets.
const BINARIES: &[(&str, &str)] = &[
    ("o7s-irmd", "irmd"),
    ("o7s-xdp-ipcp", "ipcpd-eth-dix"),
    ("o7s-cli", "irm"),
    ("o7s-cli", "oping"),
    ("o7s-cli", "operf"),
    ("o7s-pool", "o7s-pool-tool"),
];

const START: Duration = Duration::from_secs(60);

fn spawn(name: &str, cmd: &str) -> Action {
    Action::Spawn {
        name: name.into(),
        cmd: cmd.into(),
    }
}

fn kill(name: &str, signal: &str) -> Action {
    Action::Kill {
        name: name.into(),
        signal: signal.into(),
    }
}

/// Hosts a and b on one link, each with an `irmd` and an eth-dix IPCP (`mode`) on `eth0`;
/// b registers `oping` and `operf` in the layer and serves both. Ends once a's first ping
/// across has been answered.
fn eth_pair(name: &str, mode: &str) -> Scenario {
    eth_pair_modes(name, [mode, mode])
}

/// [`eth_pair`] with a mode per host (a, b).
fn eth_pair_modes(name: &str, modes: [&str; 2]) -> Scenario {
    let mut s = Scenario::new(name)
        .diagnose("irm ipcp list")
        .diagnose("irm flow list")
        .diagnose("irm ipcp stats eth-$O7S_HOST | grep -v ' 0 |$'")
        .host("a")
        .host("b")
        .link("ab", &[("a", "10.77.0.1/24"), ("b", "10.77.0.2/24")]);
    match artifacts::workspace_binaries(BINARIES) {
        Ok(bins) => {
            for (name, path) in bins {
                s = s.payload(&name, path);
            }
        }
        Err(e) => s.broken = Some(e),
    }
    for (h, mode) in ["a", "b"].into_iter().zip(modes) {
        s = s
            .step(h, spawn("irmd", "exec irmd"))
            .wait_for(h, "irm ipcp list", START)
            .run(h, &bootstrap(h, mode), &[]);
    }
    s.run(
        "b",
        &format!("irm name register oping layer {LAYER} && irm name register operf layer {LAYER}"),
        &[],
    )
    .step("b", spawn("oping-server", "exec oping -l -n oping"))
    .step("b", spawn("operf-server", "exec operf -l -n operf"))
    .wait_for("a", "oping -n oping -c 1 -i 10", START)
}

fn bootstrap(host: &str, mode: &str) -> String {
    format!("irm ipcp bootstrap name eth-{host} layer {LAYER} type eth-dix dev eth0 mode {mode}")
}

/// `oping` across, with every ping answered.
fn ping_all(s: Scenario, count: u32, interval_ms: u32) -> Scenario {
    s.run(
        "a",
        &format!("oping -n oping -c {count} -i {interval_ms}"),
        &[&format!("{count} received"), " 0% packet loss"],
    )
}

/// The data path the IPCP reports (`irm ipcp list`) contains `what`.
fn data_path(s: Scenario, host: &str, what: &[&str]) -> Scenario {
    let mut expect = vec![Expect::Success, Expect::Contains(format!("eth-{host}"))];
    expect.extend(what.iter().map(|w| Expect::Contains((*w).into())));
    s.run_expect(host, "irm ipcp list", expect)
}

/// Waits until a background `operf` client has printed its totals, then checks them.
fn operf_done(s: Scenario, log: &str) -> Scenario {
    s.wait_for(
        "a",
        // Exited: no such process, or a zombie its spawner has not reaped yet.
        &format!(
            "grep -q 'Mbit/s' $O7S_LOG/{log}.log && {{ \
             st=$(awk '/^State:/ {{print $2}}' /proc/$(cat $O7S_LOG/{log}.pid)/status 2>/dev/null); \
             [ -z \"$st\" ] || [ \"$st\" = Z ]; }}"
        ),
        Duration::from_secs(60),
    )
    .run_expect(
        "a",
        &format!("cat $O7S_LOG/{log}.log"),
        vec![Expect::Contains("Mbit/s".into())],
    )
}

/// Ping and perf over eth-dix with native XDP in copy mode, while IP (ICMP ping and an HTTP
/// transfer over TCP) crosses the same link, untouched by the steering program.
pub fn ping_perf() -> Scenario {
    let mut s = data_path(eth_pair("o7s-eth-ping-perf", "native"), "a", &["native"]);
    s = ping_all(s, 20, 20);
    match crate::image::busybox(&crate::cache_dir()) {
        Ok(bb) => s = s.payload("busybox", bb),
        Err(e) => s.broken = Some(format!("busybox for the TCP check: {e:#}")),
    }
    s = s
        .run(
            "b",
            "mkdir -p $O7S_LOG/www && head -c 1000000 /dev/urandom > $O7S_LOG/www/blob",
            &[],
        )
        .step(
            "b",
            spawn(
                "httpd",
                "exec $O7S_BIN/busybox httpd -f -p 8080 -h $O7S_LOG/www",
            ),
        )
        .step(
            "a",
            spawn("operf-client", "exec operf -n operf -d 4 -s 1000"),
        )
        // While operf floods the link: ICMP and TCP still pass (the XDP program only takes
        // the Ouroboros EtherType).
        .run("a", "ping -c 5 -i 0.2 10.77.0.2", &[" 0% packet loss"])
        .wait_for(
            "a",
            "$O7S_BIN/busybox wget -q -O - http://10.77.0.2:8080/blob | wc -c | grep -qx 1000000",
            Duration::from_secs(30),
        );
    s = operf_done(s, "operf-client");
    s = ping_all(s, 10, 20);
    s.run_expect(
        "b",
        "irm ipcp stats eth-b",
        vec![Expect::Success, Expect::Contains("IPCP eth-b".into())],
    )
}

/// The same over AF_XDP zero-copy (the qemu backend boots a 7.x kernel with virtio-net behind
/// `iommu_platform=on`; veth has no zero-copy, so the netns backend skips it).
pub fn zero_copy() -> Scenario {
    let mut s = eth_pair("o7s-eth-zerocopy", "native").requires(Requirement::ZeroCopyXdp);
    s = data_path(s, "a", &["native", "zero-copy"]);
    s = data_path(s, "b", &["native", "zero-copy"]);
    s = ping_all(s, 20, 20);
    s = s.step(
        "a",
        spawn("operf-client", "exec operf -n operf -d 4 -s 1000"),
    );
    s = operf_done(s, "operf-client");
    ping_all(s, 10, 20)
}

/// An application killed mid-flow: its IRMd reclaims the flow, the pool is whole, and the
/// server keeps serving new flows.
pub fn app_crash() -> Scenario {
    let s = eth_pair("o7s-eth-app-crash", "native")
        .step("a", spawn("victim", "exec oping -n oping -c 1000000 -i 5"))
        .wait_for(
            "a",
            "irm flow list | grep -q oping",
            Duration::from_secs(30),
        )
        .run("a", "sleep 1", &[])
        .step("a", kill("victim", "KILL"))
        .wait_for(
            "a",
            "! irm flow list | grep -q oping",
            Duration::from_secs(30),
        )
        // Every block is free, queued or owned by a live process (the IRMd's pool is the one
        // it maps); a few retries cover blocks in flight on the servers' side.
        .wait_for(
            "a",
            "o7s-pool-tool verify \
             $(grep -o '/dev/shm/[^ ]*[.]pool' /proc/$(cat $O7S_LOG/irmd.pid)/maps | head -1 \
               | sed 's|/dev/shm/||')",
            Duration::from_secs(10),
        );
    ping_all(s, 10, 20)
}

/// The IPCP killed: the IRMd notices, the layer is bootstrapped again, names registered again,
/// and pings work across.
pub fn ipcp_crash() -> Scenario {
    let s = eth_pair("o7s-eth-ipcp-crash", "native");
    let s = ping_all(s, 5, 20)
        .run(
            "b",
            "kill -9 $(irm ipcp list | awk -F'|' '/eth-b/ {gsub(/ /, \"\", $2); print $2}')",
            &[],
        )
        .wait_for(
            "b",
            "! irm ipcp list | grep -q eth-b",
            Duration::from_secs(30),
        )
        .run_expect("a", "oping -n oping -c 2 -i 100", vec![Expect::Failure])
        .run("b", &bootstrap("b", "native"), &[])
        .run(
            "b",
            &format!(
                "irm name register oping layer {LAYER} && irm name register operf layer {LAYER}"
            ),
            &[],
        )
        .wait_for("a", "oping -n oping -c 1 -i 10", START);
    ping_all(s, 10, 20)
}

/// The link goes down for two seconds during an operf flood: the flood ends by itself, the
/// IPCPs survive, and pings work once the link is back.
pub fn link_flap() -> Scenario {
    let ab = || "ab".to_string();
    let s = eth_pair("o7s-eth-link-flap", "native")
        .step(
            "a",
            spawn("operf-client", "exec operf -n operf -d 6 -s 1000"),
        )
        .run("a", "sleep 1", &[])
        .step("a", Action::LinkDown { link: ab() })
        .run("a", "sleep 2", &[])
        .step("a", Action::LinkUp { link: ab() });
    let s = operf_done(s, "operf-client").wait_for("a", "oping -n oping -c 1 -i 10", START);
    let s = ping_all(s, 10, 20);
    data_path(s, "a", &["native"])
}

/// 1 % loss on b's side of the link: pings still get through with a loss that fits.
///
/// XDP and AF_XDP work below the qdisc layer (AF_XDP transmits straight to the driver), so a
/// netem qdisc in the guest cannot touch frames of an XDP-mode IPCP, and this machine's kernel
/// has no netem for the host side of the links. b therefore runs the `packet` backend, whose
/// frames do go through its qdisc; a keeps native XDP. The replies lose about 1 %.
pub fn loss() -> Scenario {
    let s = eth_pair_modes("o7s-eth-loss", ["native", "packet"])
        .requires(Requirement::Netem)
        .step(
            "b",
            Action::Netem {
                link: "ab".into(),
                spec: "loss 1%".into(),
            },
        );
    // 1000 pings: about 10 replies lost (none at all has odds of 4e-5); more than 8 % is
    // wrong. netem's own counter shows it dropped frames.
    s.run(
        "a",
        "oping -n oping -c 1000 -i 2 > $O7S_LOG/lossy.txt; cat $O7S_LOG/lossy.txt; \
         grep -Eq ' [0-8]% packet loss' $O7S_LOG/lossy.txt",
        &["1000 packets transmitted"],
    )
    .run_expect(
        "b",
        "$TC -s qdisc show dev eth0",
        vec![Expect::Success, Expect::Contains("netem".into())],
    )
    .run(
        "b",
        "$TC -s qdisc show dev eth0 | grep -Eq 'dropped [1-9]'",
        &[],
    )
    .step("b", Action::ClearNetem { link: "ab".into() })
    .wait_for("a", "oping -n oping -c 1 -i 10", START)
}

/// a – b – c with an eth layer per link: b runs two eth-dix IPCPs, one per NIC (layer `ab` on
/// `eth0`, `bc` on `eth1`) and serves `oping` in both; a and c each ping b over their own
/// layer. (a reaching c would need a unicast layer on top: eth-dix layers do not forward.)
pub fn line() -> Scenario {
    let mut s = Scenario::new("o7s-eth-line")
        .diagnose("irm ipcp list")
        .diagnose("irm flow list")
        .host("a")
        .host("b")
        .host("c")
        .link("ab", &[("a", "10.77.0.1/24"), ("b", "10.77.0.2/24")])
        .link("bc", &[("b", "10.77.1.1/24"), ("c", "10.77.1.2/24")]);
    match artifacts::workspace_binaries(BINARIES) {
        Ok(bins) => {
            for (name, path) in bins {
                s = s.payload(&name, path);
            }
        }
        Err(e) => s.broken = Some(e),
    }
    let bootstrap = |name: &str, layer: &str, dev: &str| {
        format!("irm ipcp bootstrap name {name} layer {layer} type eth-dix dev {dev} mode native")
    };
    for h in ["a", "b", "c"] {
        s = s
            .step(h, spawn("irmd", "exec irmd"))
            .wait_for(h, "irm ipcp list", START);
    }
    s.run("a", &bootstrap("eth-a", "ab", "eth0"), &[])
        .run("c", &bootstrap("eth-c", "bc", "eth0"), &[])
        .run("b", &bootstrap("eth-b0", "ab", "eth0"), &[])
        .run("b", &bootstrap("eth-b1", "bc", "eth1"), &[])
        .run(
            "b",
            "irm name register oping layer ab && irm name register oping layer bc",
            &[],
        )
        .run_expect(
            "b",
            "irm ipcp list",
            vec![
                Expect::Success,
                Expect::Contains("eth-b0".into()),
                Expect::Contains("eth-b1".into()),
            ],
        )
        .step("b", spawn("oping-server", "exec oping -l -n oping"))
        .wait_for("a", "oping -n oping -c 1 -i 10", START)
        .wait_for("c", "oping -n oping -c 1 -i 10", START)
        .run(
            "a",
            "oping -n oping -c 10 -i 20",
            &["10 received", " 0% packet loss"],
        )
        .run(
            "c",
            "oping -n oping -c 10 -i 20",
            &["10 received", " 0% packet loss"],
        )
        // Each of b's IPCPs carried one side's flows.
        .run_expect(
            "b",
            "irm ipcp stats eth-b0 | grep 'sdus delivered'; irm ipcp stats eth-b1 | grep 'sdus delivered'",
            vec![Expect::Success, Expect::Lacks("|                    0 |".into())],
        )
}
