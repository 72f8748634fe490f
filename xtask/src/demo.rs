//! `cargo xtask demo`: a live two-host o7s network on this machine.
//!
//! Two network namespaces (`o7s-demo-a`, `o7s-demo-b`) joined by a veth pair play two hosts.
//! Each runs its own `irmd` (started with `ip netns exec`, run directory
//! `/tmp/o7s-demo/<host>/run`, shared memory `o7s-demo-<host>.*`) with an eth-dix IPCP
//! bootstrapped on its veth end in layer `demo`. Host B registers `oping` and `operf` in the
//! layer and serves both; host A pings B 100 times and runs `operf` for 5 s. The report gives
//! the XDP mode in effect (native or generic, copy or zero-copy; or AF_PACKET), the RTTs
//! (min/avg/max/p99), the throughput (pps and Gbit/s, sent by A and delivered at B) and the
//! drops the IPCPs counted.
//!
//! Everything is torn down on success, on failure and on Ctrl-C: a watchdog in a session of
//! its own waits for this process to end and then kills what runs in the two namespaces,
//! deletes them and removes the shared memory and the directory (so even a killed demo
//! leaves nothing), and prints `demo: FAILED interrupted ...`. A normal end stops the watchdog
//! first. `--keep` leaves the network up after a successful run and prints how to
//! use it with `irm`. The last line is `demo: ok` or `demo: FAILED <reason>`.
//!
//! Needs root (namespaces, XDP). Traffic stays on the veth pair.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

/// The demo's settings (`cargo xtask demo [--mtu N] [--mode M] [--keep] ...`).
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// MTU of the veth pair.
    #[arg(long, default_value_t = 1500)]
    pub mtu: u32,
    /// Backend of the eth-dix IPCPs: auto (native XDP, else generic, else AF_PACKET), xdp,
    /// native, generic or packet.
    #[arg(long, default_value = "auto")]
    pub mode: String,
    /// Leave the network up after a successful run (and print how to use it).
    #[arg(long)]
    pub keep: bool,
    /// Pings to send.
    #[arg(long, default_value_t = 100)]
    pub pings: u32,
    /// Seconds of operf.
    #[arg(long, default_value_t = 5)]
    pub perf_secs: u32,
    /// operf SDU size in bytes (at most the MTU minus the 4 bytes of eth-dix overhead).
    #[arg(long, default_value_t = 1400)]
    pub size: u32,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            mtu: 1500,
            mode: "auto".into(),
            keep: false,
            pings: 100,
            perf_secs: 5,
            size: 1400,
        }
    }
}

const HOSTS: [&str; 2] = ["a", "b"];
const LAYER: &str = "demo";
const BASE: &str = "/tmp/o7s-demo";
const TIMEOUT: Duration = Duration::from_secs(20);
const BINARIES: [(&str, &str); 5] = [
    ("o7s-irmd", "irmd"),
    ("o7s-xdp-ipcp", "ipcpd-eth-dix"),
    ("o7s-cli", "irm"),
    ("o7s-cli", "oping"),
    ("o7s-cli", "operf"),
];

fn ns(host: &str) -> String {
    format!("o7s-demo-{host}")
}

fn shm_prefix(host: &str) -> String {
    format!("o7s-demo-{host}")
}

fn rundir(host: &str) -> PathBuf {
    Path::new(BASE).join(host).join("run")
}

/// Runs the demo; prints the report and, last, `demo: ok` or `demo: FAILED <reason>`. The
/// error (if any) is returned too, so the caller exits non-zero; it has been printed already.
///
/// # Errors
/// Whatever failed: not root, a build, a step of the set-up, a ping or the operf run.
pub fn run(opts: &DemoOptions) -> Result<()> {
    let result = demo(opts);
    match &result {
        Ok(()) => println!("demo: ok"),
        Err(e) => println!("demo: FAILED {}", format!("{e:#}").replace('\n', " ")),
    }
    result
}

fn demo(opts: &DemoOptions) -> Result<()> {
    check(opts)?;
    let bin = build()?;
    let mut net = Network::new(bin);
    net.up(opts)?;
    let report = net.exercise(opts)?;
    print!("{report}");
    if opts.keep {
        net.keep_up();
        println!("{}", keep_help(&net.bin, opts.mtu.saturating_sub(4)));
    } else {
        net.tear_down();
        println!("torn down: no namespace, process, XDP program or shared memory left");
    }
    Ok(())
}

fn check(opts: &DemoOptions) -> Result<()> {
    if !["auto", "xdp", "native", "generic", "packet"].contains(&opts.mode.as_str()) {
        bail!(
            "--mode {:?}: expected auto, xdp, native, generic or packet",
            opts.mode
        );
    }
    if !(576..=9000).contains(&opts.mtu) {
        bail!("--mtu {}: expected 576..=9000", opts.mtu);
    }
    if opts.size < 8 || opts.size + 4 > opts.mtu {
        bail!(
            "--size {}: expected 8..={} (the MTU minus 4)",
            opts.size,
            opts.mtu.saturating_sub(4)
        );
    }
    let uid = output(Command::new("id").arg("-u")).context("running `id -u`")?;
    if uid.trim() != "0" {
        bail!("needs root (network namespaces, veth, XDP): run it with sudo");
    }
    output(Command::new("ip").arg("-V")).context("iproute2 `ip` is needed")?;
    let list = output(Command::new("ip").args(["netns", "list"]))?;
    for host in HOSTS {
        let ns = ns(host);
        if list
            .lines()
            .any(|l| l.split_whitespace().next() == Some(ns.as_str()))
        {
            bail!(
                "namespace {ns} exists (a demo kept with --keep?): remove it with \
                 `ip netns pids {ns} | xargs -r kill; ip netns del {ns}` first"
            );
        }
    }
    Ok(())
}

/// Runs `cmd`, returns its stdout; fails with its stderr.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure_success(cmd, &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ensure_success(cmd: &Command, out: &Output) -> Result<()> {
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `cargo build --release` of the binaries; returns their directory.
fn build() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let metadata =
        output(Command::new(&cargo).args(["metadata", "--format-version", "1", "--no-deps"]))
            .context("cargo metadata")?;
    let target = json_string(&metadata, "target_directory")
        .ok_or_else(|| anyhow!("no target_directory in `cargo metadata`"))?;
    println!("demo: building irmd, ipcpd-eth-dix, irm, oping, operf (release)");
    let mut build = Command::new(&cargo);
    build.args(["build", "--release", "--quiet"]);
    for (package, bin) in BINARIES {
        build.args(["-p", package, "--bin", bin]);
    }
    let status = build.status().context("cargo build")?;
    if !status.success() {
        bail!("cargo build --release failed ({status})");
    }
    let dir = Path::new(&target).join("release");
    for (_, bin) in BINARIES {
        if !dir.join(bin).is_file() {
            bail!("{} missing after the build", dir.join(bin).display());
        }
    }
    Ok(dir)
}

/// The value of the first `"key":"value"` in `json` (no escapes in the value).
fn json_string(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let end = json[start..].find('"')? + start;
    Some(json[start..end].to_owned())
}

/// The two hosts and what runs on them.
struct Network {
    bin: PathBuf,
    watchdog: Option<Child>,
    namespaces: Vec<String>,
    irmds: Vec<Child>,
    servers: Vec<Child>,
    down: bool,
}

impl Network {
    fn new(bin: PathBuf) -> Network {
        Network {
            bin,
            watchdog: None,
            namespaces: Vec::new(),
            irmds: Vec::new(),
            servers: Vec::new(),
            down: false,
        }
    }

    /// Starts the watchdog: once this process is gone, it cleans up whatever is left.
    fn watch(&mut self) -> Result<()> {
        let mut script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 0.5; done\n",
            std::process::id()
        );
        script.push_str(&cleanup_script());
        // Reached only when this process ended without stopping the watchdog: Ctrl-C or a
        // kill. Its stdout is ours, so the last line still says how the demo ended.
        script.push_str("echo 'demo: FAILED interrupted (the watchdog cleaned up)'\n");
        let child = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the clean-up watchdog (setsid sh)")?;
        self.watchdog = Some(child);
        Ok(())
    }

    fn up(&mut self, opts: &DemoOptions) -> Result<()> {
        let _ = std::fs::remove_dir_all(BASE);
        self.watch()?;
        for host in HOSTS {
            let ns = ns(host);
            output(Command::new("ip").args(["netns", "add", &ns]))?;
            self.namespaces.push(ns.clone());
            // IPv6 off: no router solicitations or DAD on the link.
            for knob in ["all", "default"] {
                let _ = output(Command::new("ip").args([
                    "netns",
                    "exec",
                    &ns,
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.{knob}.disable_ipv6=1"),
                ]));
            }
        }
        let (a, b) = (ns("a"), ns("b"));
        output(Command::new("ip").args([
            "link", "add", &a, "netns", &a, "type", "veth", "peer", "name", &b, "netns", &b,
        ]))?;
        for ns in [&a, &b] {
            output(Command::new("ip").args([
                "-n",
                ns,
                "link",
                "set",
                ns,
                "mtu",
                &opts.mtu.to_string(),
                "up",
            ]))?;
        }
        println!(
            "demo: namespaces {a} and {b}, veth {a} <-> {b}, MTU {}",
            opts.mtu
        );
        for host in HOSTS {
            self.start_irmd(host)?;
        }
        for host in HOSTS {
            let ns = ns(host);
            self.irm(
                host,
                &[
                    "ipcp",
                    "bootstrap",
                    "name",
                    &format!("eth-{host}"),
                    "layer",
                    LAYER,
                    "type",
                    "eth-dix",
                    "dev",
                    &ns,
                    "mode",
                    &opts.mode,
                ],
            )
            .with_context(|| format!("bootstrapping eth-{host}"))?;
        }
        for name in ["oping", "operf"] {
            self.irm("b", &["name", "register", name, "layer", LAYER])?;
        }
        for program in ["oping", "operf"] {
            // To a file, not a pipe: with --keep the servers outlive the demo and go on saying
            // what they receive.
            let log_path = server_log(program);
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?;
            let child = self
                .tool("b", program, &["-l", "-n", program])
                .stdout(log.try_clone().context("server log")?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start the {program} server"))?;
            self.servers.push(child);
            wait_for_line(&log_path, "listening on", TIMEOUT)
                .with_context(|| format!("the {program} server did not start"))?;
        }
        println!("demo: irmd and eth-dix IPCP up on both hosts; oping and operf served on b");
        Ok(())
    }

    fn start_irmd(&mut self, host: &str) -> Result<()> {
        let dir = Path::new(BASE).join(host);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = std::fs::File::create(dir.join("irmd.log")).context("irmd log")?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns(host)])
            .arg(self.bin.join("irmd"))
            .arg("--rundir")
            .arg(rundir(host))
            .arg("--shm-prefix")
            .arg(shm_prefix(host))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start irmd")?;
        self.irmds.push(child);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if self.irm(host, &["ipcp", "list"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "irmd on {host} not ready; its log:\n{}",
                    std::fs::read_to_string(dir.join("irmd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `irm ARGS` against host `host`'s IRMd; returns its output.
    fn irm(&self, host: &str, args: &[&str]) -> Result<String> {
        output(
            Command::new(self.bin.join("irm"))
                .args(args)
                .env("O7S_RUNDIR", rundir(host)),
        )
    }

    /// A tool run in `host`'s namespace against its IRMd.
    fn tool(&self, host: &str, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns(host)])
            .arg(self.bin.join(program))
            .args(args)
            .env("O7S_RUNDIR", rundir(host))
            .stdin(Stdio::null());
        c
    }

    /// An IPCP's counters, from `irm ipcp stats`.
    fn stats(&self, host: &str) -> Result<Vec<(String, u64)>> {
        let table = self.irm(host, &["ipcp", "stats", &format!("eth-{host}")])?;
        Ok(table
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                match cells.as_slice() {
                    ["", name, value, ""] => Some(((*name).to_owned(), value.parse().ok()?)),
                    _ => None,
                }
            })
            .collect())
    }

    fn exercise(&self, opts: &DemoOptions) -> Result<String> {
        let stats_a = self.stats("a")?;
        let counter = |s: &[(String, u64)], name: &str| {
            s.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v)
        };
        let backend = stats_a
            .iter()
            .find_map(|(n, _)| n.strip_prefix("backend: "))
            .unwrap_or("unknown")
            .to_owned();
        let mut report = format!("XDP mode in effect: {backend}\n");

        // Pings.
        let ping = self
            .tool(
                "a",
                "oping",
                &["-n", "oping", "-c", &opts.pings.to_string(), "-i", "10"],
            )
            .output()
            .context("running oping")?;
        let text = String::from_utf8_lossy(&ping.stdout).into_owned();
        if !ping.status.success() {
            bail!(
                "oping failed ({}): {}{}",
                ping.status,
                text.trim(),
                String::from_utf8_lossy(&ping.stderr).trim()
            );
        }
        let mut rtts: Vec<f64> = text
            .lines()
            .filter_map(|l| l.split("time=").nth(1))
            .filter_map(|t| t.trim_end_matches(" ms").trim().parse().ok())
            .collect();
        if rtts.len() != opts.pings as usize {
            bail!(
                "{} of {} pings answered:\n{}",
                rtts.len(),
                opts.pings,
                text.trim()
            );
        }
        rtts.sort_by(f64::total_cmp);
        let n = rtts.len();
        let avg = rtts.iter().sum::<f64>() / n as f64;
        let p99 = rtts[(n * 99).div_ceil(100).saturating_sub(1).min(n - 1)];
        report.push_str(&format!(
            "ping: {n}/{} answered, RTT min/avg/max/p99 = {:.3}/{avg:.3}/{:.3}/{p99:.3} ms\n",
            opts.pings,
            rtts[0],
            rtts[n - 1]
        ));

        // Throughput.
        let before = self.stats("b")?;
        let perf = self
            .tool(
                "a",
                "operf",
                &[
                    "-n",
                    "operf",
                    "-d",
                    &opts.perf_secs.to_string(),
                    "-s",
                    &opts.size.to_string(),
                ],
            )
            .output()
            .context("running operf")?;
        let text = String::from_utf8_lossy(&perf.stdout).into_owned();
        if !perf.status.success() {
            bail!(
                "operf failed ({}): {}{}",
                perf.status,
                text.trim(),
                String::from_utf8_lossy(&perf.stderr).trim()
            );
        }
        // Let the last frames arrive.
        std::thread::sleep(Duration::from_millis(200));
        let after = self.stats("b")?;
        let sent_line = text
            .lines()
            .find(|l| l.starts_with("sent "))
            .ok_or_else(|| anyhow!("no figures from operf: {}", text.trim()))?;
        let (sent, secs) = parse_sent(sent_line)
            .ok_or_else(|| anyhow!("cannot read operf's figures: {sent_line}"))?;
        // operf's first SDU names the test (uni or bi) and is not in its "sent" count.
        let delivered = counter(&after, "sdus delivered")
            .saturating_sub(counter(&before, "sdus delivered"))
            .saturating_sub(1);
        let bits = f64::from(opts.size) * 8.0;
        let rate = |packets: u64| {
            let pps = packets as f64 / secs;
            format!("{pps:.0} pps, {:.3} Gbit/s", pps * bits / 1e9)
        };
        report.push_str(&format!(
            "operf ({} s, {}-byte SDUs, flood): sent {sent} ({}), delivered at b {delivered} ({})\n",
            opts.perf_secs,
            opts.size,
            rate(sent),
            rate(delivered)
        ));
        let drop_counters = [
            "drops ring full",
            "drops no ring",
            "drops layer",
            "xsk rx dropped",
            "xsk rx ring full",
            "rx no buffer",
        ];
        let drops: Vec<String> = drop_counters
            .iter()
            .map(|c| {
                format!(
                    "{c} {}",
                    counter(&after, c).saturating_sub(counter(&before, c))
                )
            })
            .collect();
        let lost = sent.saturating_sub(delivered);
        report.push_str(&format!(
            "drops: {lost} of {sent} ({:.2}%) not delivered; at b: {}; tx refused at a {}\n",
            if sent == 0 {
                0.0
            } else {
                lost as f64 * 100.0 / sent as f64
            },
            drops.join(", "),
            counter(&self.stats("a")?, "tx refused")
        ));
        Ok(report)
    }

    /// Leaves everything up: the watchdog goes, the processes stay.
    fn keep_up(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        self.down = true;
    }

    fn tear_down(&mut self) {
        if self.down {
            return;
        }
        self.down = true;
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        // SIGTERM: each IRMd stops its IPCP (which detaches its XDP program) and removes its
        // pool.
        for c in &self.irmds {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .output();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for c in &mut self.irmds {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("sh")
            .args(["-c", &cleanup_script()])
            .stdin(Stdio::null())
            .output();
        self.namespaces.clear();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // On failure (also with --keep): nothing stays.
        if !self.down {
            self.tear_down();
        }
    }
}

/// Kills what still runs in the demo's namespaces (only processes this demo started run
/// there), deletes them, removes the shared memory and the directory. Idempotent.
fn cleanup_script() -> String {
    let mut s = String::new();
    for host in HOSTS {
        let ns = ns(host);
        s.push_str(&format!(
            "for p in $(ip netns pids {ns} 2>/dev/null); do kill -9 $p 2>/dev/null; done\n\
             ip netns del {ns} 2>/dev/null\n\
             rm -f /dev/shm/{}.* 2>/dev/null\n",
            shm_prefix(host)
        ));
    }
    s.push_str(&format!("rm -rf {BASE}\n"));
    s
}

/// Packets and seconds from `sent N packets, B bytes in T s: ...`.
fn parse_sent(line: &str) -> Option<(u64, f64)> {
    let mut words = line.split_whitespace();
    let packets = words.nth(1)?.parse().ok()?;
    let secs = line
        .split(" in ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((packets, secs))
}

/// Reads `out` until a line contains `text`; the rest is drained by a thread.
/// Where host b's `program` server writes its output.
fn server_log(program: &str) -> PathBuf {
    Path::new(BASE).join("b").join(format!("{program}.log"))
}

/// Waits until the file at `path` has a line containing `text`.
fn wait_for_line(path: &Path, text: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let written = std::fs::read_to_string(path).unwrap_or_default();
        if written.lines().any(|l| l.contains(text)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "no line saying it was ready within {} s; it wrote: {}",
                timeout.as_secs(),
                written.trim()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn keep_help(bin: &Path, max_sdu: u32) -> String {
    let (a, b) = (rundir("a"), rundir("b"));
    format!(
        "The network stays up (--keep). Use it with irm and the tools, e.g.:\n  \
         export PATH={bin}:$PATH\n  \
         O7S_RUNDIR={a} irm ipcp list\n  \
         O7S_RUNDIR={b} irm ipcp stats eth-b\n  \
         ip netns exec {na} env O7S_RUNDIR={a} oping -n oping -c 10\n  \
         ip netns exec {na} env O7S_RUNDIR={a} operf -n operf -d 10 -s {size}\n\
         (SDUs larger than the MTU minus 4 bytes are refused by the Ethernet IPCP.)\n\
         b's servers log each flow, and what it carried once it ends or idles (operf: 10 s \
         by default): {oping_log}, {operf_log}\n\
         Tear it down with:\n  \
         for ns in {na} {nb}; do ip netns pids $ns | xargs -r kill; ip netns del $ns; done; \
         rm -rf {BASE} /dev/shm/o7s-demo-*",
        a = a.display(),
        b = b.display(),
        na = ns("a"),
        nb = ns("b"),
        bin = bin.display(),
        size = max_sdu.min(1400),
        oping_log = server_log("oping").display(),
        operf_log = server_log("operf").display(),
    )
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn operf_figures_and_cargo_metadata_parse() {
        assert_eq!(
            parse_sent("sent 332331 packets, 332331000 bytes in 2.000 s: 166134.7 pps, 1.0 Mbit/s"),
            Some((332_331, 2.0))
        );
        assert_eq!(parse_sent("garbage"), None);
        assert_eq!(
            json_string(
                r#"{"a":1,"target_directory":"/x/target","b":"c"}"#,
                "target_directory"
            ),
            Some("/x/target".to_owned())
        );
        assert!(cleanup_script().contains("ip netns del o7s-demo-a"));
    }
}
