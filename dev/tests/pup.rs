//! The library in a per-user pool: a process of an unprivileged uid (65534, `nobody`) is told
//! its uid's pool at its announce, its flows' rings are there, and its flow set (event set) is
//! created there too (owned by the uid, mode 0600), so events flow without the shared pool.
//! The set and the pool are gone once the process is.
//!
//! Root only (to run the helper as uid 65534); skips with a reason otherwise.

mod util;

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use o7s::{FlowEvent, FlowQueue, FlowSet};
use o7s_testkit::{AnyoneBin, Lines, shm_objects};
use util::{TIMEOUT, irmd, pair, stdin_line};

const HELPER: &str = "O7S_TEST_PUP_HELPER";
const NOBODY: u32 = 65534;

/// Helper process (run by the test below as uid 65534): `O7S_TEST_PUP_HELPER=NAME` connects,
/// prints `pool NAME UID`, makes a direct flow to itself on NAME and a flow set holding its
/// accepting end, prints `set ready`; at a line from stdin writes one SDU on the other end,
/// waits for its event and reads it, prints `event ok`; at the next line (or EOF) exits.
#[test]
#[ignore = "helper process for the per-user pool test"]
fn pup_helper() {
    let Ok(name) = std::env::var(HELPER) else {
        return;
    };
    let client = o7s::Client::connect().expect("helper connects");
    println!("pool {} {}", client.pool(), client.pool_uid());
    let (alloc, accepted) = pair(&client, &name);
    let set = FlowSet::new(&client).expect("a flow set in the per-user pool");
    set.add(&accepted).expect("add");
    println!("set ready");
    let _ = std::io::stdout().flush();
    stdin_line();
    alloc.write(b"in the pup").expect("write");
    let mut queue = FlowQueue::new();
    assert_eq!(set.wait(&mut queue, Some(TIMEOUT)).expect("wait"), 1);
    let events: Vec<(u32, FlowEvent)> = (&mut queue).collect();
    assert_eq!(events, [(accepted.id(), FlowEvent::Packet)]);
    let mut buf = [0u8; 64];
    let n = accepted.read(&mut buf).expect("read");
    assert_eq!(&buf[..n], b"in the pup");
    println!("event ok");
    let _ = std::io::stdout().flush();
    stdin_line();
    set.remove(&accepted);
}

#[test]
fn an_unprivileged_process_has_its_flows_and_flow_sets_in_its_pool() {
    // /proc/self belongs to the effective uid.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        eprintln!("skipping: needs root (to run a helper as uid {NOBODY})");
        return;
    }
    let host = irmd();
    std::fs::set_permissions(&host.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // This test binary where uid 65534 may run it (the build tree may not be enterable by it).
    let me = std::env::current_exe().expect("current_exe");
    let exe = AnyoneBin::new("dev-pup-bin", &[(me, "pup-test")]);
    let mut child = host
        .tool(
            exe.path("pup-test"),
            &[
                "pup_helper",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ],
        )
        .env(HELPER, "pup-echo")
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the helper as nobody");
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = Lines::new(child.stdout.take().expect("stdout"));

    let pup = format!("{}pup.{NOBODY}", host.shm_prefix());
    let line = lines.wait_for("pool ", TIMEOUT);
    assert!(
        line.ends_with(&format!("pool {pup} {NOBODY}")),
        "told its own pool: {line}"
    );
    lines.wait_for("set ready", TIMEOUT);
    let flows = host.flows();
    assert_eq!(flows.len(), 1);
    assert_eq!(
        (flows[0].pool.as_str(), flows[0].uid),
        (pup.as_str(), NOBODY)
    );
    let sets = shm_objects(&format!("{pup}.ev.{pid}."));
    assert_eq!(sets.len(), 1, "one event set, in the pup: {sets:?}");
    let meta = std::fs::metadata(Path::new("/dev/shm").join(&sets[0])).expect("stat");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (NOBODY, 0o600));
    assert!(
        shm_objects(&format!("{}pool.ev.", host.shm_prefix())).is_empty(),
        "no event set in the shared pool"
    );

    writeln!(stdin, "go").expect("to the helper");
    lines.wait_for("event ok", TIMEOUT);
    drop(stdin);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            assert!(status.success(), "helper failed: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "the helper does not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    while !shm_objects(&pup).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}\n{}",
            shm_objects(&pup),
            host.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
