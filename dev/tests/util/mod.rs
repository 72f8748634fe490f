//! Shared by the library's integration tests: a real `irmd` on a temporary run directory, and
//! helper processes (this test binary run again, for one `#[ignore]`d helper test).

#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use o7s::{Client, Flow};
pub use o7s_testkit::TIMEOUT;
use o7s_testkit::{Irmd, Lines, Options, Stop, build_bins, temp_dir};

/// The directory of this test binary's profile (`target/<profile>`), with `irmd` and
/// `ipcpd-local` (which the IRMd looks for beside itself) built in it.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let profile = exe
            .parent()
            .and_then(Path::parent)
            .expect("tests live in target/<profile>/deps");
        build_bins(
            profile,
            &[("o7s-irmd", "irmd"), ("o7s-ipcpd", "ipcpd-local")],
        )
    })
}

/// Creates and bootstraps `ipcpd-local` in `host`'s IRMd and registers `name` in its layer,
/// so flows to `name` go through the IPCP; returns the IPCP's pid.
pub fn local_ipcp(host: &Irmd, name: &str) -> u32 {
    let info = host.ipcp(
        o7s_proto::irm::IpcpType::Local,
        "local",
        "local-layer",
        None,
    );
    host.register_in("local-layer", name);
    info.pid
}

/// A real IRMd on its own temporary directory, stopped and cleaned up (shared memory included)
/// on drop.
pub fn irmd() -> Irmd {
    Irmd::start(
        temp_dir("dev"),
        Options::new(bin_dir().join("irmd"))
            .rust_log("info")
            .stop(Stop::Term),
    )
}

/// A client of `host` for this process.
pub fn client(host: &Irmd) -> Client {
    Client::connect_to(&host.rundir).expect("connect to the irmd")
}

/// Both ends of a direct local flow, in this process: binds `name`, accepts on a thread,
/// allocates here. Returns (allocating end, accepting end).
pub fn pair(client: &Client, name: &str) -> (Flow, Flow) {
    client.bind(name).expect("bind");
    let acceptor = client.clone();
    let name_owned = name.to_owned();
    let accept =
        std::thread::spawn(move || acceptor.flow_accept_for(Some(&name_owned), Some(TIMEOUT)));
    let alloc = client
        .flow_alloc(name, None, Some(TIMEOUT))
        .expect("flow_alloc");
    let accepted = accept.join().expect("accept thread").expect("flow_accept");
    (alloc, accepted)
}

/// This test binary, run again for the `#[ignore]`d helper test `test` with `env` set: a
/// process of its own, announced to `host`'s IRMd. Killed (SIGKILL) and reaped on drop.
pub struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    pub lines: Lines,
}

impl Helper {
    pub fn spawn(host: &Irmd, test: &str, env: (&str, &str)) -> Self {
        let exe = std::env::current_exe().expect("current_exe");
        let mut command = host.tool(
            &exe,
            &[
                test,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ],
        );
        let mut child = command
            .env(env.0, env.1)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn helper");
        let stdin = child.stdin.take();
        let lines = Lines::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            lines,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a line to the helper's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to helper");
    }

    /// Waits for a line containing `text`.
    pub fn wait_for(&mut self, text: &str) -> String {
        self.lines.wait_for(text, TIMEOUT)
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes stdin and waits for a clean exit.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "helper failed: {status}");
                return;
            }
            assert!(Instant::now() < deadline, "helper did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads one line from stdin (a helper waiting for its parent); `None` at EOF.
pub fn stdin_line() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim().to_owned()),
    }
}
