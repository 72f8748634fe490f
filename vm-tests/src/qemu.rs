//! The `qemu` backend: every host is a QEMU guest (TCG unless `VM_ACCEL=kvm`).
//!
//! All guests boot one initramfs; the kernel command line (`o7s.host=NAME`) tells init which
//! host it is. Each link is a bridge inside a network namespace this backend creates; each
//! host's NIC on it is a virtio-net device on a multiqueue tap attached to that bridge. QEMU
//! runs inside that namespace, so guests reach nothing but each other.
//!
//! Steps keep the scenario's global order through the serial console: before step `i` every
//! guest prints `VM-SYNC i` and waits for a `go` line on its console, which the harness sends
//! once all guests are there; only the step's own host runs it. A guest ends with one line,
//! `VM-RESULT: ok` or `VM-RESULT: fail <reason>`, and powers off when the harness says
//! `poweroff` (so no guest disappears while another still talks to it).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::image::{self, Initramfs, KernelSeries};
use crate::netns::{NsGuard, TempDir};
use crate::scenario::{Action, Expect, Requirement, Scenario, shell_quote};
use crate::util::{self, GroupChild};
use crate::{Backend, Verdict};

/// The QEMU backend.
pub struct Qemu {
    /// `tcg` (default, `$VM_ACCEL` overrides) or `kvm`.
    pub accel: String,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Queue pairs per tap and NIC (at least 2 × cpus leaves dedicated XDP TX queues).
    pub queues: u32,
    /// The whole run (boot to power-off) of one scenario; `$VM_TIMEOUT` (seconds) overrides.
    pub timeout: Duration,
    /// Echo the guests' consoles.
    pub verbose: bool,
    /// The guest kernel for every scenario (`None`: 6.12, or 7.x for scenarios that need
    /// AF_XDP zero-copy).
    pub kernel: Option<KernelSeries>,
    notes: Vec<String>,
}

impl Default for Qemu {
    fn default() -> Self {
        let secs = std::env::var("VM_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300);
        Self {
            accel: std::env::var("VM_ACCEL").unwrap_or_else(|_| "tcg".into()),
            memory_mib: 1024,
            cpus: 2,
            queues: 4,
            timeout: Duration::from_secs(secs),
            verbose: false,
            kernel: None,
            notes: Vec::new(),
        }
    }
}

/// Modules every guest loads (with their dependencies): the NIC driver and netem.
/// How long the other guests get to stop (and print their diagnostics) after one failed.
const ABORT_GRACE: Duration = Duration::from_secs(40);

const MODULES: &[&str] = &["virtio_net", "sch_netem"];

const INIT: &str = r#"#!/bin/busybox sh
# End the firmware's last console line: markers must start a line.
echo
/bin/busybox --install -s /bin
export PATH=/o7s/bin:/bin:/usr/bin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
# Kernel messages must not split the marker lines the harness reads.
dmesg -n 1
mkdir -p /dev/shm /run/o7s /var/log/o7s /tmp
mount -t tmpfs shm /dev/shm
export IP=/usr/bin/ip TC=/usr/bin/tc O7S_BIN=/o7s/bin O7S_LOG=/var/log/o7s O7S_RUNDIR=/run/o7s
verdict() {
    if [ "$1" != ok ]; then
        # What the spawned processes said last: the harness shows the console's tail.
        for f in $O7S_LOG/*.log; do
            [ -f "$f" ] || continue
            echo "--- $host: tail of ${f##*/}"
            tail -n 12 "$f"
        done
        [ -f /o7s/diagnose.sh ] && timeout 20 sh /o7s/diagnose.sh 2>&1 | tail -n 60
    fi
    if [ "$1" = ok ]; then echo "VM-RESULT: ok"; else echo "VM-RESULT: fail $2"; fi
    read -r -t 120 line
    poweroff -f
    sleep 30
}
sync_point() {
    echo "VM-SYNC $1"
    read -r -t 900 line now || verdict fail "no go for step $1"
    [ "$line" = go ] || verdict fail "aborted before step $1"
    [ -n "$now" ] && set_clock "$now"
}
# The guests' clocks start from the RTC's whole seconds, up to a second apart, and o7s's flow
# allocation refuses requests stamped more than 100 ms in the future (as the reference does):
# set the clock from the harness's SECONDS.NANOS at the next whole second.
set_clock() {
    secs=${1%.*}
    nanos=${1#*.}
    usleep $(( (2000000000 - 1$nanos) / 1000 ))
    date -s "@$(( secs + 1 ))" >/dev/null || echo "VM: could not set the clock"
}
step_fail() {
    echo "VM-STEP $1 fail"
    verdict fail "step $1: $2"
}
for m in $(cat /o7s/modules.list); do
    insmod /o7s/modules/$m.ko || verdict fail "insmod $m"
done
host=$(sed -n 's/.*o7s\.host=\([^ ]*\).*/\1/p' /proc/cmdline)
export O7S_HOST=$host
[ -f "/o7s/hosts/$host.sh" ] || verdict fail "no script for host '$host'"
. "/o7s/hosts/$host.sh"
verdict ok
"#;

/// The script one host sources from init: link set-up, then every step with its sync point.
fn host_script(s: &Scenario, host: &str) -> String {
    let mut out = String::from("$IP link set lo up || step_fail setup 'lo'\n");
    for (i, link) in s.links_of(host) {
        let addr = &link
            .ends
            .iter()
            .find(|e| e.host == host)
            .expect("on link")
            .addr;
        out += &format!(
            "$IP addr add {addr} dev eth{i} && $IP link set dev eth{i} up || \
             step_fail setup {}\n",
            shell_quote(&format!("configuring eth{i}"))
        );
    }
    for (i, step) in s.steps.iter().enumerate() {
        out += &format!("sync_point {i}\n");
        if step.host != host {
            continue;
        }
        let (cmd, expect, timeout) = match (&step.action, s.link_command(step)) {
            (_, Some(cmd)) => (cmd, vec![Expect::Success], 10),
            (
                Action::Run {
                    cmd,
                    expect,
                    timeout,
                },
                None,
            ) => (cmd.clone(), expect.clone(), timeout.as_secs().max(1)),
            (Action::WaitFor { cmd, timeout }, None) => {
                let why = shell_quote(&format!("`{cmd}` did not succeed within {timeout:?}"));
                out += &format!(
                    "end=$(( $(date +%s) + {} ))\n\
                     until sh -c {} </dev/null >/tmp/wait.out 2>&1; do\n\
                     \x20   [ $(date +%s) -ge $end ] && {{ cat /tmp/wait.out; step_fail {i} {why}; }}\n\
                     \x20   sleep 0.2\n\
                     done\n",
                    timeout.as_secs().max(1),
                    shell_quote(cmd)
                );
                out += &format!("echo 'VM-STEP {i} ok'\n");
                continue;
            }
            (Action::Spawn { name, cmd }, None) => {
                out += &format!(
                    "setsid sh -c {} </dev/null >$O7S_LOG/{name}.log 2>&1 &\n\
                     echo $! >$O7S_LOG/{name}.pid\n\
                     echo 'VM-STEP {i} ok'\n",
                    shell_quote(cmd)
                );
                continue;
            }
            (Action::Kill { name, signal }, None) => {
                let sig = signal.trim_start_matches("SIG");
                out += &format!(
                    "pid=$(cat $O7S_LOG/{name}.pid) || step_fail {i} 'no process {name}'\n\
                     kill -{sig} -$pid 2>/dev/null || kill -{sig} $pid || \
                     step_fail {i} 'kill {name} failed'\n\
                     echo 'VM-STEP {i} ok'\n"
                );
                continue;
            }
            (_, None) => unreachable!("link actions have a command"),
        };
        out += &format!(
            "echo {}\n\
             out=$(timeout {timeout} sh -c {} </dev/null 2>&1); rc=$?\n\
             printf '%s\\n' \"$out\" | sed 's/^/    /'\n",
            shell_quote(&format!("VM-STEP {i} run [{host}] $ {cmd}")),
            shell_quote(&cmd)
        );
        for e in expect {
            let fail = |why: String| format!("step_fail {i} {}", shell_quote(&why));
            out += &match e {
                Expect::Success => format!(
                    "[ $rc -eq 0 ] || {}\" (exit status $rc)\"\n",
                    fail(format!("`{cmd}` failed"))
                ),
                Expect::Failure => {
                    format!("[ $rc -ne 0 ] || {}\n", fail(format!("`{cmd}` succeeded")))
                }
                Expect::Contains(t) => format!(
                    "printf '%s' \"$out\" | grep -qF -- {} || {}\n",
                    shell_quote(&t),
                    fail(format!("output of `{cmd}` lacks {t:?}"))
                ),
                Expect::Lacks(t) => format!(
                    "printf '%s' \"$out\" | grep -qF -- {} && {}\n",
                    shell_quote(&t),
                    fail(format!("output of `{cmd}` contains {t:?}"))
                ),
                Expect::AtLeast(n) => format!(
                    "[ \"$(printf '%s' \"$out\" | tr -d ' \\n')\" -ge {n} ] 2>/dev/null || {}\n",
                    fail(format!("output of `{cmd}` is not at least {n}"))
                ),
            };
        }
        out += &format!("echo 'VM-STEP {i} ok'\n");
    }
    out
}

/// A console line without terminal escape sequences (SeaBIOS clears the screen) or control
/// characters.
fn strip_escapes(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next_if_eq(&'[').is_some() {
                // CSI: parameters, then one final byte in '@'..='~'.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// What a guest's console reader reports.
enum Event {
    Line(usize, String),
    Closed(usize),
}

struct Guest {
    name: String,
    stdin: ChildStdin,
    console: Vec<String>,
    sync: Option<usize>,
    result: Option<String>,
    // Last: the QEMU process is killed when the guest is dropped.
    qemu: GroupChild,
}

impl Guest {
    fn say(&mut self, line: &str) {
        let _ = self.stdin.write_all(format!("{line}\n").as_bytes());
        let _ = self.stdin.flush();
    }

    fn tail(&self, n: usize) -> String {
        let c = &self.console;
        c[c.len().saturating_sub(n)..].join("\n    ")
    }
}

impl Qemu {
    /// The kernel a scenario boots: the one asked for, else 7.x where zero-copy is needed.
    fn series(&self, s: &Scenario) -> KernelSeries {
        self.kernel
            .unwrap_or(if s.requires.contains(&Requirement::ZeroCopyXdp) {
                KernelSeries::V7
            } else {
                KernelSeries::V6_12
            })
    }

    fn build_image(&mut self, s: &Scenario, dir: &std::path::Path) -> Result<(PathBuf, PathBuf)> {
        let cache = crate::cache_dir();
        let kernel = image::kernel(&cache, self.series(s))?;
        self.notes.push(format!("guest kernel {}", kernel.version));
        let mut img = Initramfs::new();
        img.file("init", 0o755, INIT.as_bytes());
        let busybox = image::busybox(&cache)?;
        img.copy(&busybox, "bin/busybox", 0o755)?;
        for tool in ["ip", "tc"] {
            let path = image::which(tool).with_context(|| format!("iproute2's {tool} missing"))?;
            img.copy(&path, &format!("usr/bin/{tool}"), 0o755)?;
        }
        let mut names = String::new();
        for (name, ko) in image::modules(&kernel, MODULES)? {
            img.file(&format!("o7s/modules/{name}.ko"), 0o644, &ko);
            names += &format!("{name}\n");
        }
        img.file("o7s/modules.list", 0o644, names.as_bytes());
        for p in &s.payload {
            let src = image::stripped(&p.src, dir)?;
            img.copy(&src, &format!("o7s/bin/{}", p.name), 0o755)?;
        }
        for h in &s.hosts {
            img.file(
                &format!("o7s/hosts/{h}.sh"),
                0o644,
                host_script(s, h).as_bytes(),
            );
        }
        if !s.diagnostics.is_empty() {
            let script: String = s
                .diagnostics
                .iter()
                .map(|c| format!("echo \"--- $host: {}\"\n{c}\n", c.replace('"', "'")))
                .collect();
            img.file("o7s/diagnose.sh", 0o644, script.as_bytes());
        }
        let initrd = dir.join("initrd.cpio");
        img.write(&initrd)?;
        Ok((kernel.vmlinuz, initrd))
    }
}

impl Backend for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    fn run(&mut self, s: &Scenario) -> Result<Verdict> {
        if !crate::is_root() {
            return Ok(Verdict::Skip(
                "the qemu backend needs root (network namespace, taps, bridge)".into(),
            ));
        }
        let Some(qemu_bin) = image::which("qemu-system-x86_64") else {
            return Ok(Verdict::Skip(
                "qemu-system-x86_64 is missing (`cargo xtask vm-test` installs it)".into(),
            ));
        };
        let series = self.series(s);
        if s.requires.contains(&Requirement::ZeroCopyXdp) && series != KernelSeries::V7 {
            return Ok(Verdict::Skip(format!(
                "AF_XDP zero-copy on virtio-net needs the 7.x guest kernel (this run boots {})",
                series.label()
            )));
        }
        util::sweep_stale();
        let scratch = TempDir::new(util::NS_PREFIX)?;
        let (vmlinuz, initrd) = self.build_image(s, &scratch.0)?;
        // virtio-net does AF_XDP zero-copy only through the DMA API: a modern-only device that
        // says it sits behind an IOMMU (there is no vIOMMU, so the mapping is direct).
        let dma = if series == KernelSeries::V7 {
            ",iommu_platform=on,disable-legacy=on"
        } else {
            ""
        };
        let logs = crate::cache_dir().join("logs").join(&s.name);
        std::fs::create_dir_all(&logs)?;

        // The wire: one bridge per link in a namespace of our own.
        let ns = NsGuard::new(util::unique(util::NS_PREFIX) + "-vm")?;
        let mut taps: Vec<Vec<(String, String)>> = vec![Vec::new(); s.hosts.len()];
        for (l, link) in s.links.iter().enumerate() {
            let br = format!("br{l}");
            ns.ip(&["link", "add", &br, "type", "bridge"])?;
            ns.ip(&["link", "set", &br, "up"])?;
            for end in &link.ends {
                let h = s.hosts.iter().position(|x| *x == end.host).expect("valid");
                let tap = format!("t{h}l{l}");
                ns.ip(&["tuntap", "add", "dev", &tap, "mode", "tap", "multi_queue"])?;
                ns.ip(&["link", "set", &tap, "master", &br, "up"])?;
                let mac = format!("52:54:00:7e:{h:02x}:{l:02x}");
                taps[h].push((tap, mac));
            }
        }

        let (tx, rx) = mpsc::channel();
        let mut guests = Vec::new();
        for (h, name) in s.hosts.iter().enumerate() {
            let mut cmd = ns.exec(&qemu_bin.to_string_lossy());
            cmd.args(["-accel", &self.accel, "-nographic", "-no-reboot"]);
            if self.accel == "kvm" {
                cmd.args(["-cpu", "host"]);
            }
            cmd.args(["-m", &self.memory_mib.to_string()])
                .args(["-smp", &self.cpus.to_string()])
                .arg("-kernel")
                .arg(&vmlinuz)
                .arg("-initrd")
                .arg(&initrd)
                .args([
                    "-append",
                    &format!("console=ttyS0 panic=-1 quiet o7s.host={name}"),
                ]);
            // Links in scenario order, so the guest's eth{i} is the host's i-th link.
            for (i, (tap, mac)) in taps[h].iter().enumerate() {
                let q = self.queues;
                cmd.args([
                    "-netdev",
                    &format!("tap,id=n{i},ifname={tap},script=no,downscript=no,queues={q}"),
                    "-device",
                    &format!(
                        "virtio-net-pci,netdev=n{i},mq=on,vectors={},mac={mac},romfile={dma}",
                        2 * q + 2
                    ),
                ]);
            }
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut qemu = GroupChild::spawn_tied(&mut cmd)?;
            let stdin = qemu.child.stdin.take().context("stdin")?;
            let stdout = qemu.child.stdout.take().context("stdout")?;
            let stderr = qemu.child.stderr.take().context("stderr")?;
            let mut log = std::fs::File::create(logs.join(format!("{name}.console")))?;
            let tx2 = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let _ = tx2.send(Event::Line(h, format!("qemu: {line}")));
                }
            });
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stdout);
                let mut buf = Vec::new();
                while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                    let _ = log.write_all(&buf);
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    buf.clear();
                    if tx.send(Event::Line(h, line)).is_err() {
                        break;
                    }
                }
                let _ = tx.send(Event::Closed(h));
            });
            guests.push(Guest {
                name: name.clone(),
                stdin,
                console: Vec::new(),
                sync: None,
                result: None,
                qemu,
            });
        }
        drop(tx);

        let booting = Instant::now();
        let verdict = self.drive(&mut guests, &rx, s.steps.len(), booting);
        // Power off politely, then the guards kill whatever is left.
        for g in &mut guests {
            g.say("poweroff");
        }
        let end = Instant::now() + Duration::from_secs(5);
        // Only guests with a verdict wait for `poweroff`; the others are killed right away.
        for g in guests.iter_mut().filter(|g| g.result.is_some()) {
            while Instant::now() < end && g.qemu.child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        drop(guests);
        drop(ns);
        drop(scratch);
        Ok(verdict)
    }
}

impl Qemu {
    /// Releases sync points and collects verdicts until every guest has one, one fails, or
    /// the time is up.
    fn drive(
        &mut self,
        guests: &mut [Guest],
        rx: &mpsc::Receiver<Event>,
        steps: usize,
        booting: Instant,
    ) -> Verdict {
        let mut deadline = Instant::now() + self.timeout;
        // The first guest's failure, reported once the others have stopped.
        let mut failure: Option<String> = None;
        let consoles = |guests: &[Guest]| {
            guests
                .iter()
                .map(|g| format!("\n  {} console:\n    {}", g.name, g.tail(40)))
                .collect::<String>()
        };
        loop {
            if util::interrupted() {
                return Verdict::Fail(format!("interrupted{}", consoles(guests)));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let event = match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(e) => e,
                Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let why = failure
                        .take()
                        .unwrap_or_else(|| format!("timed out after {:?}", self.timeout));
                    return Verdict::Fail(format!("{why}{}", consoles(guests)));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Verdict::Fail(format!(
                        "all consoles closed without verdicts{}",
                        consoles(guests)
                    ));
                }
            };
            match event {
                Event::Closed(h) => {
                    if guests[h].result.is_none() {
                        return Verdict::Fail(format!(
                            "guest {} stopped without a verdict{}",
                            guests[h].name,
                            consoles(guests)
                        ));
                    }
                }
                Event::Line(h, raw) => {
                    let line = strip_escapes(&raw);
                    if self.verbose {
                        println!("[{}] {line}", guests[h].name);
                    }
                    guests[h].console.push(line.clone());
                    // QEMU's own errors (bad options, no tap, a KVM internal error after
                    // which the guest hangs) end the run now instead of at the deadline.
                    let qemu_error = line.starts_with("qemu: ")
                        && (line.contains("internal error")
                            || (line.contains("qemu-system-") && !line.contains("warning")));
                    if qemu_error {
                        return Verdict::Fail(format!(
                            "QEMU failed for guest {}: {line}{}",
                            guests[h].name,
                            consoles(guests)
                        ));
                    }
                    if line.contains("Kernel panic") {
                        return Verdict::Fail(format!(
                            "guest {} panicked{}",
                            guests[h].name,
                            consoles(guests)
                        ));
                    }
                    // Markers count only at the start of a line (step output is indented).
                    if let Some(rest) = line.strip_prefix("VM-RESULT: ") {
                        guests[h].result = Some(rest.trim().to_string());
                        if rest.starts_with("fail") && failure.is_none() {
                            failure = Some(format!("guest {}: {}", guests[h].name, rest.trim()));
                            // The others stop too, and print their logs and diagnostics on
                            // the way out: wait a little for those.
                            for g in guests.iter_mut().filter(|g| g.result.is_none()) {
                                g.say("abort");
                            }
                            deadline = deadline.min(Instant::now() + ABORT_GRACE);
                        }
                        if guests.iter().all(|g| g.result.is_some()) {
                            return match failure {
                                Some(why) => Verdict::Fail(format!("{why}{}", consoles(guests))),
                                None => Verdict::Pass,
                            };
                        }
                    } else if let Some(n) = line
                        .strip_prefix("VM-SYNC ")
                        .and_then(|r| r.trim().parse::<usize>().ok())
                    {
                        guests[h].sync = Some(n);
                        if n < steps && guests.iter().all(|g| g.sync == Some(n)) {
                            if n == 0 {
                                self.notes.push(format!(
                                    "{} guests booted and configured in {:.1} s ({})",
                                    guests.len(),
                                    booting.elapsed().as_secs_f64(),
                                    self.accel
                                ));
                            }
                            // The first `go` carries the time: the guests set their clocks.
                            let go = if n == 0 {
                                let now = std::time::SystemTime::now()
                                    .duration_since(std::time::UNIX_EPOCH)
                                    .unwrap_or_default();
                                format!("go {}.{:09}", now.as_secs(), now.subsec_nanos())
                            } else {
                                "go".to_string()
                            };
                            for g in guests.iter_mut() {
                                g.sync = None;
                                g.say(&go);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_stripped() {
        assert_eq!(
            strip_escapes("\x1bc\x1b[?7l\x1b[2JVM-SYNC 0\r"),
            "VM-SYNC 0"
        );
        assert_eq!(strip_escapes("plain"), "plain");
    }

    #[test]
    fn every_host_syncs_at_every_step() {
        let s = crate::scenarios::by_name("three-host-line").unwrap();
        for h in &s.hosts {
            let script = host_script(&s, h);
            for i in 0..s.steps.len() {
                assert!(script.contains(&format!("sync_point {i}\n")));
            }
        }
    }
}
