//! The scenarios every backend runs, by name.

use std::time::Duration;

use crate::scenario::{Action, Expect, Requirement, Scenario};
use crate::{artifacts, o7s_eth};

/// Names of all scenarios, in the order `cargo xtask vm-test` runs them. `by_name` also knows
/// `selftest-fail`, which must fail (it checks that the harness reports failures).
pub const NAMES: &[&str] = &[
    "two-host-ping",
    "link-flap",
    "netem",
    "three-host-lan",
    "three-host-line",
    "o7s-local-oping",
    "o7s-eth-ping-perf",
    "o7s-eth-zerocopy",
    "o7s-eth-app-crash",
    "o7s-eth-ipcp-crash",
    "o7s-eth-link-flap",
    "o7s-eth-loss",
    "o7s-eth-line",
];

/// Whether `by_name` knows this name (without building the scenario's payload).
pub fn known(name: &str) -> bool {
    NAMES.contains(&name) || name == "selftest-fail"
}

/// Builds a scenario by name (payloads it needs are built or fetched now).
pub fn by_name(name: &str) -> Option<Scenario> {
    Some(match name {
        "two-host-ping" => two_host_ping(),
        "link-flap" => link_flap(),
        "netem" => netem(),
        "three-host-lan" => three_host_lan(),
        "three-host-line" => three_host_line(),
        "o7s-local-oping" => o7s_local_oping(),
        "o7s-eth-ping-perf" => o7s_eth::ping_perf(),
        "o7s-eth-zerocopy" => o7s_eth::zero_copy(),
        "o7s-eth-app-crash" => o7s_eth::app_crash(),
        "o7s-eth-ipcp-crash" => o7s_eth::ipcp_crash(),
        "o7s-eth-link-flap" => o7s_eth::link_flap(),
        "o7s-eth-loss" => o7s_eth::loss(),
        "o7s-eth-line" => o7s_eth::line(),
        "selftest-fail" => selftest_fail(),
        _ => return None,
    })
}

/// Two hosts, one link; each side reaches the other only over that link.
fn two_hosts(name: &str) -> Scenario {
    Scenario::new(name)
        .host("a")
        .host("b")
        .link("ab", &[("a", "10.77.0.1/24"), ("b", "10.77.0.2/24")])
}

/// A pings B five times; B's NIC counted the packets. Then, when clang can build them, a
/// pass-through XDP program is attached natively (`xdpdrv`) to A's NIC and o7s's steering
/// program to B's, and pings still work.
pub fn two_host_ping() -> Scenario {
    let mut s = two_hosts("two-host-ping")
        .wait_for("a", "ping -c 1 -W 1 10.77.0.2", Duration::from_secs(60))
        .run("a", "ping -c 5 10.77.0.2", &[" 0% packet loss"])
        .run_expect(
            "b",
            "cat /sys/class/net/eth0/statistics/rx_packets",
            vec![Expect::Success, Expect::AtLeast(5)],
        )
        .run("b", "ping -c 1 10.77.0.1", &[" 0% packet loss"])
        // The private link is all there is: no default route on either host.
        .run_expect(
            "a",
            "$IP route",
            vec![
                Expect::Success,
                Expect::Contains("10.77.0.0/24".into()),
                Expect::Lacks("default".into()),
            ],
        );
    match artifacts::xdp_pass() {
        Ok(obj) => {
            s = s
                .payload("xdp_pass.o", obj)
                .run(
                    "a",
                    "$IP link set dev eth0 xdpdrv obj $O7S_BIN/xdp_pass.o sec xdp",
                    &[],
                )
                // Native mode: `xdp` in the flags line, not `xdpgeneric`.
                .run_expect(
                    "a",
                    "$IP link show dev eth0",
                    vec![
                        Expect::Success,
                        Expect::Contains("prog/xdp".into()),
                        Expect::Contains(" xdp ".into()),
                        Expect::Lacks("xdpgeneric".into()),
                    ],
                )
                .run("a", "ping -c 3 10.77.0.2", &[" 0% packet loss"])
                .run("a", "$IP link set dev eth0 xdpdrv off", &[])
                .run_expect(
                    "a",
                    "$IP link show dev eth0",
                    vec![Expect::Success, Expect::Lacks("prog/xdp".into())],
                );
        }
        Err(e) => s = s.note(format!("native XDP attach check skipped: {e}")),
    }
    // o7s's steering program on B: IP is not its EtherType, so pings pass through it.
    match artifacts::o7s_steer() {
        Ok(obj) => {
            s = s
                .payload("o7s_steer.o", obj)
                .run(
                    "b",
                    "$IP link set dev eth0 xdpdrv obj $O7S_BIN/o7s_steer.o sec xdp.frags",
                    &[],
                )
                .run_expect(
                    "b",
                    "$IP link show dev eth0",
                    vec![
                        Expect::Success,
                        Expect::Contains("name o7s_steer".into()),
                        Expect::Contains(" xdp ".into()),
                    ],
                )
                .run("a", "ping -c 3 10.77.0.2", &[" 0% packet loss"])
                .run("b", "$IP link set dev eth0 xdpdrv off", &[]);
        }
        Err(e) => s = s.note(format!("o7s XDP program check skipped: {e}")),
    }
    s
}

/// A link taken down and up; a background process started, checked and killed.
pub fn link_flap() -> Scenario {
    let ab = || "ab".to_string();
    two_hosts("link-flap")
        .wait_for("a", "ping -c 1 -W 1 10.77.0.2", Duration::from_secs(60))
        .step("a", Action::LinkDown { link: ab() })
        .run_expect("a", "ping -c 1 -W 1 10.77.0.2", vec![Expect::Failure])
        .step("a", Action::LinkUp { link: ab() })
        .wait_for("a", "ping -c 1 -W 1 10.77.0.2", Duration::from_secs(30))
        .step(
            "b",
            Action::Spawn {
                name: "sleeper".into(),
                cmd: "echo started; exec sleep 600".into(),
            },
        )
        .run_expect(
            "b",
            "sleep 0.5; cat $O7S_LOG/sleeper.log",
            vec![Expect::Contains("started".into())],
        )
        .step(
            "b",
            Action::Kill {
                name: "sleeper".into(),
                signal: "KILL".into(),
            },
        )
        .run_expect(
            "b",
            "sleep 0.2; ps -o pid,args 2>/dev/null || ps ax",
            vec![Expect::Success, Expect::Lacks("sleep 600".into())],
        )
}

/// netem delay and loss on B's side of the link, seen by A's pings.
pub fn netem() -> Scenario {
    let ab = || "ab".to_string();
    two_hosts("netem")
        .requires(Requirement::Netem)
        .wait_for("a", "ping -c 1 -W 1 10.77.0.2", Duration::from_secs(60))
        .step(
            "b",
            Action::Netem {
                link: ab(),
                spec: "delay 200ms".into(),
            },
        )
        // B delays its replies by 200 ms: the round trip shows it.
        .run(
            "a",
            "ping -c 1 -W 2 10.77.0.2 | grep 'time=[2-9][0-9][0-9]'",
            &[],
        )
        .step(
            "b",
            Action::Netem {
                link: ab(),
                spec: "loss 100%".into(),
            },
        )
        .run_expect("a", "ping -c 2 -W 1 10.77.0.2", vec![Expect::Failure])
        .step("b", Action::ClearNetem { link: ab() })
        .wait_for("a", "ping -c 1 -W 1 10.77.0.2", Duration::from_secs(30))
}

/// The o7s binaries in every host: each host runs its own `irmd` and an `oping` server, and
/// pings it through a direct local flow. No network yet (o7s has no Ethernet IPCP process):
/// this checks that the binaries, their libraries and the shared pool work in the guests.
pub fn o7s_local_oping() -> Scenario {
    let mut s = two_hosts("o7s-local-oping");
    match artifacts::workspace_binaries(&[("o7s-irmd", "irmd"), ("o7s-cli", "oping")]) {
        Ok(bins) => {
            for (name, path) in bins {
                s = s.payload(&name, path);
            }
        }
        Err(e) => s.broken = Some(e),
    }
    for h in ["a", "b"] {
        s = s
            .step(
                h,
                Action::Spawn {
                    name: "irmd".into(),
                    cmd: "exec irmd".into(),
                },
            )
            .wait_for(h, "test -S $O7S_RUNDIR/irmd.sock", Duration::from_secs(30))
            .step(
                h,
                Action::Spawn {
                    name: "oping-server".into(),
                    cmd: "exec oping -l".into(),
                },
            )
            .wait_for(h, "oping -n oping -c 1", Duration::from_secs(30))
            .run(
                h,
                "oping -n oping -c 5 -i 100",
                &["5 received", " 0% packet loss"],
            )
            .step(
                h,
                Action::Kill {
                    name: "oping-server".into(),
                    signal: "TERM".into(),
                },
            )
            .step(
                h,
                Action::Kill {
                    name: "irmd".into(),
                    signal: "TERM".into(),
                },
            );
    }
    s
}

/// Three hosts on one Ethernet segment (a bridge): everyone reaches everyone.
pub fn three_host_lan() -> Scenario {
    let t = Duration::from_secs(60);
    Scenario::new("three-host-lan")
        .host("a")
        .host("b")
        .host("c")
        .link(
            "lan",
            &[
                ("a", "10.77.0.1/24"),
                ("b", "10.77.0.2/24"),
                ("c", "10.77.0.3/24"),
            ],
        )
        .wait_for("a", "ping -c 1 -W 1 10.77.0.2", t)
        .wait_for("a", "ping -c 1 -W 1 10.77.0.3", t)
        .run("b", "ping -c 2 10.77.0.3", &[" 0% packet loss"])
        .run("c", "ping -c 2 10.77.0.1", &[" 0% packet loss"])
}

/// a - b - c on two links; b forwards, so a reaches c only through b (b's `eth0` faces a,
/// `eth1` faces c).
pub fn three_host_line() -> Scenario {
    Scenario::new("three-host-line")
        .host("a")
        .host("b")
        .host("c")
        .link("ab", &[("a", "10.77.0.1/24"), ("b", "10.77.0.2/24")])
        .link("bc", &[("b", "10.77.1.1/24"), ("c", "10.77.1.2/24")])
        .run("b", "$IP -br addr show dev eth1", &["10.77.1.1/24"])
        .run("b", "echo 1 > /proc/sys/net/ipv4/ip_forward", &[])
        .run("a", "$IP route add 10.77.1.0/24 via 10.77.0.2", &[])
        .run("c", "$IP route add 10.77.0.0/24 via 10.77.1.1", &[])
        .wait_for("a", "ping -c 1 -W 1 10.77.1.2", Duration::from_secs(60))
        .run("a", "ping -c 3 10.77.1.2", &[" 0% packet loss"])
        .run("c", "ping -c 1 10.77.0.1", &["ttl=63"])
}

/// Must fail at its second step (an assertion that does not hold on b) while a waits at the
/// next sync point: checks failure reporting and clean-up.
pub fn selftest_fail() -> Scenario {
    two_hosts("selftest-fail")
        .run("a", "echo hello", &["hello"])
        .run("b", "echo hello", &["goodbye"])
        .run("a", "echo never", &[])
}
