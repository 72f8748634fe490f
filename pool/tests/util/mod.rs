//! Shared test helpers: unique pool names that are unlinked afterwards, and the tool binary.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use o7s_pool::{Access, Pool, PoolConfig};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique shared-memory name, unlinked (if it exists) when dropped.
pub struct ShmName(pub String);

impl ShmName {
    pub fn new(what: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self(format!("o7s-test-{}-{what}-{n}", std::process::id()))
    }
}

impl Drop for ShmName {
    fn drop(&mut self) {
        let _ = Pool::unlink(&self.0);
    }
}

pub fn create(what: &str, cfg: &PoolConfig) -> (ShmName, Pool) {
    let name = ShmName::new(what);
    let pool = Pool::create(&name.0, cfg, Access::Shared).expect("create pool");
    (name, pool)
}

pub fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_o7s-pool-tool"))
}

pub fn spawn(args: &[&str]) -> Child {
    tool()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn o7s-pool-tool")
}

#[track_caller]
pub fn assert_verified(pool: &Pool) {
    let report = pool.verify();
    assert!(report.is_ok(), "verify failed: {:#?}", report.problems);
    assert_eq!(report.total(), pool.layout().total_blocks);
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn spawn_with_stdin(args: &[&str]) -> Child {
    tool()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn o7s-pool-tool")
}

/// Sends a ring id to a child started with `-` as its ring.
pub fn tell(child: &mut Child, ring: u32) {
    use std::io::Write;
    let stdin = child.stdin.as_mut().expect("piped stdin");
    writeln!(stdin, "{ring}").expect("tell ring id");
}

/// Waits for a child with a deadline (killing it on expiry) and returns its output; panics
/// unless it exited 0.
#[track_caller]
pub fn wait_ok(mut child: Child, limit: std::time::Duration) -> String {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => break,
            None if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!("child hung: {}", String::from_utf8_lossy(&out.stderr));
            }
            None => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "child failed ({}): {text}",
        out.status
    );
    text
}
