//! The real `irmd` binary, started as a separate process on a temporary run directory: the
//! registry requests, many requests in flight, misbehaving clients, the lockfile, recovery
//! after SIGKILL, graceful shutdown, and pidfd-driven removal of dead processes and reclaim of
//! their pool blocks.
//!
//! Nothing here needs root: the shared pool is created by whoever runs the IRMd.

use std::io::{BufRead, BufReader, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use o7s::irm::{Client, ClientError};
use o7s_proto::irm::*;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One IRMd on its own temporary directory (`<dir>/run` is the run directory, `<dir>/irmd.log`
/// its log). Dropping it kills the IRMd and removes the directory and the shared memory.
struct Host {
    dir: PathBuf,
    rundir: PathBuf,
    child: Option<Child>,
    logs: u32,
    /// Extra arguments of every irmd started.
    args: Vec<PathBuf>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Host {
    fn start() -> Self {
        Self::start_with(|_| Vec::new())
    }

    /// Starts with extra arguments, made from the host's directory.
    fn start_with(args: impl FnOnce(&Path) -> Vec<PathBuf>) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "o7s-irmd-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let args = args(&dir);
        let mut host = Self {
            rundir: dir.join("run"),
            dir,
            child: None,
            logs: 0,
            args,
        };
        host.launch();
        host
    }

    /// Starts an irmd on this host's run directory, logging to a new file.
    fn spawn_irmd(&mut self) -> (Child, PathBuf) {
        self.logs += 1;
        let log = self.dir.join(format!("irmd-{}.log", self.logs));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_irmd"))
            .arg("--rundir")
            .arg(&self.rundir)
            .args(&self.args)
            .env("RUST_LOG", "debug")
            .env_remove("O7S_SHM_PREFIX")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn irmd");
        (child, log)
    }

    /// Starts the host's irmd and waits until it answers.
    fn launch(&mut self) {
        let (mut child, log) = self.spawn_irmd();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(mut c) = Client::connect(&self.rundir) {
                c.set_timeout(Some(TIMEOUT)).expect("timeout");
                if c.call(ListNames {}).is_ok() {
                    break;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("irmd exited with {status}: {}", read(&log));
            }
            assert!(Instant::now() < deadline, "irmd not ready: {}", read(&log));
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
    }

    fn client(&self) -> Client {
        let c = Client::connect(&self.rundir).expect("connect");
        c.set_timeout(Some(TIMEOUT)).expect("timeout");
        c
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    fn log(&self) -> String {
        read(&self.dir.join(format!("irmd-{}.log", self.logs)))
    }

    fn prefix(&self) -> String {
        o7s_irmd::shm_prefix_for(&self.rundir)
    }

    fn pool_path(&self) -> PathBuf {
        Path::new("/dev/shm").join(format!("{}.pool", self.prefix()))
    }

    /// Sends `signal` to the irmd and reaps it.
    fn signal(&mut self, signal: Signal) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        kill(Pid::from_raw(child.id() as i32), signal).expect("kill");
        wait_exit(&mut child)
    }

    /// Asserts the irmd answers a new client.
    fn assert_serving(&self) {
        let mut c = self.client();
        match c.call(ListNames {}) {
            Ok(r) => assert!(matches!(r.kind, Some(ResponseKind::Names(_))), "{r:?}"),
            Err(e) => panic!("irmd stopped serving: {e}\n{}", self.log()),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let prefix = format!("{}.", self.prefix());
        if let Ok(dir) = std::fs::read_dir("/dev/shm") {
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn names(c: &mut Client) -> Vec<NameInfo> {
    match c.call_ok(ListNames {}) {
        Ok(ResponseKind::Names(n)) => n.names,
        other => panic!("list names: {other:?}"),
    }
}

fn processes(c: &mut Client) -> Vec<ProcessInfo> {
    match c.call_ok(ListProcesses {}) {
        Ok(ResponseKind::Processes(p)) => p.processes,
        other => panic!("list processes: {other:?}"),
    }
}

fn refused(r: Result<ResponseKind, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Reads the next envelope and checks it is an error response with id 0 and the code.
fn expect_error(c: &mut Client, code: ErrorCode, containing: &str) {
    let e = c.recv().expect("an error response");
    assert_eq!(e.id, 0);
    match e.body {
        Some(Body::Response(r)) => {
            let (got, message) = r.as_error().expect("an error");
            assert_eq!(got, code, "{message}");
            assert!(message.contains(containing), "{message:?}");
        }
        other => panic!("expected a response, got {other:?}"),
    }
}

fn expect_closed(c: &mut Client) {
    match c.recv() {
        Err(ClientError::Closed) => {}
        other => panic!("expected the irmd to close the connection, got {other:?}"),
    }
}

#[test]
fn names_are_created_listed_and_destroyed() {
    let host = Host::start();
    let mut c = host.client();
    for (name, lb) in [("b", LbPolicy::RoundRobin), ("a", LbPolicy::Spillover)] {
        c.call_ok(CreateName {
            name: name.into(),
            lb: lb.into(),
        })
        .expect("create");
    }
    // Creating an existing name is not an error and changes nothing.
    c.call_ok(CreateName {
        name: "b".into(),
        lb: LbPolicy::Spillover.into(),
    })
    .expect("create again");
    let list = names(&mut c);
    assert_eq!(
        list.iter()
            .map(|n| (n.name.as_str(), n.lb()))
            .collect::<Vec<_>>(),
        [("a", LbPolicy::Spillover), ("b", LbPolicy::RoundRobin)]
    );
    c.call_ok(DestroyName { name: "a".into() })
        .expect("destroy");
    let (code, message) = refused(c.call_ok(DestroyName { name: "a".into() }));
    assert_eq!(code, ErrorCode::NotFound, "{message}");
    let (code, _) = refused(c.call_ok(CreateName {
        name: String::new(),
        lb: 0,
    }));
    assert_eq!(code, ErrorCode::InvalidArgument);
    let (code, _) = refused(c.call_ok(CreateName {
        name: "x".into(),
        lb: 77,
    }));
    assert_eq!(code, ErrorCode::InvalidArgument);
    assert_eq!(names(&mut c).len(), 1);
    // Not implemented yet, and saying so.
    let (code, message) = refused(c.call_ok(CreateIpcp {
        ipcp_type: IpcpType::Udp4.into(),
        name: "udp".into(),
    }));
    assert_eq!(code, ErrorCode::NotSupported, "{message}");
    // A request without a kind.
    let response = c.call(Request { kind: None }).expect("answered");
    assert_eq!(
        response.as_error().map(|e| e.0),
        Some(ErrorCode::BadRequest)
    );
}

#[test]
fn programs_and_processes_are_bound() {
    let host = Host::start();
    let mut c = host.client();
    c.call_ok(BindProgram {
        name: "echo".into(),
        program: "/usr/bin/oecho".into(),
        args: vec!["-l".into()],
        auto: true,
    })
    .expect("bind program");
    let (code, _) = refused(c.call_ok(BindProgram {
        name: "echo".into(),
        program: "oecho".into(),
        args: vec![],
        auto: false,
    }));
    assert_eq!(code, ErrorCode::InvalidArgument, "relative path");
    let echo = &names(&mut c)[0];
    assert_eq!(echo.name, "echo");
    assert_eq!(echo.lb(), LbPolicy::Spillover, "implicit names spill over");
    assert_eq!(echo.programs, ["/usr/bin/oecho"]);

    // A process must announce itself before it can be bound.
    let me = std::process::id();
    let (code, _) = refused(c.call_ok(BindProcess {
        pid: me,
        name: "echo".into(),
    }));
    assert_eq!(code, ErrorCode::NotFound);
    // Announced as the bound program, it inherits the program's names.
    c.call_ok(ProcessAnnounce {
        pid: me,
        program: "oecho".into(),
    })
    .expect("announce");
    c.call_ok(BindProcess {
        pid: me,
        name: "other".into(),
    })
    .expect("bind process");
    let p = processes(&mut c);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].pid, p[0].program.as_str()), (me, "oecho"));
    assert_eq!(p[0].names, ["echo", "other"]);
    c.call_ok(UnbindProcess {
        pid: me,
        name: Some("echo".into()),
    })
    .expect("unbind process");
    assert_eq!(processes(&mut c)[0].names, ["other"]);
    c.call_ok(UnbindProgram {
        program: "/usr/bin/oecho".into(),
        name: None,
    })
    .expect("unbind program");
    assert!(names(&mut c).iter().all(|n| n.programs.is_empty()));
    c.call_ok(ProcessExit { pid: me }).expect("exit");
    assert!(processes(&mut c).is_empty());
    assert!(names(&mut c).iter().all(|n| n.processes.is_empty()));
    // A pid that does not exist cannot be announced; only root may speak for another
    // process (and is told first that it may not, before whether the process exists).
    let root = nix::unistd::geteuid().is_root();
    let (code, message) = refused(c.call_ok(ProcessAnnounce {
        pid: i32::MAX as u32 - 1,
        program: "ghost".into(),
    }));
    let expected = if root {
        ErrorCode::NotFound
    } else {
        ErrorCode::PermissionDenied
    };
    assert_eq!(code, expected, "{message}");
    if !root {
        let (code, message) = refused(c.call_ok(ProcessExit { pid: 1 }));
        assert_eq!(code, ErrorCode::PermissionDenied, "{message}");
    }
}

#[test]
fn many_requests_in_flight_on_one_connection() {
    let host = Host::start();
    let mut c = host.client();
    let mut ids = Vec::new();
    for i in 0..100u32 {
        let id = if i % 2 == 0 {
            c.send(CreateName {
                name: format!("n{i:03}"),
                lb: LbPolicy::RoundRobin.into(),
            })
        } else {
            // Every odd request fails, so answers cannot be confused.
            c.send(DestroyName {
                name: format!("missing{i}"),
            })
        }
        .expect("send");
        ids.push(id);
    }
    let mut answered = std::collections::BTreeMap::new();
    for _ in 0..100 {
        let e = c.recv().expect("response");
        let Some(Body::Response(r)) = e.body else {
            panic!("not a response: {e:?}");
        };
        assert!(answered.insert(e.id, r).is_none(), "id {} twice", e.id);
    }
    for (i, id) in ids.iter().enumerate() {
        let r = &answered[id];
        if i % 2 == 0 {
            assert!(r.is_ok(), "{r:?}");
        } else {
            let (code, message) = r.as_error().expect("error");
            assert_eq!(code, ErrorCode::NotFound);
            assert!(message.contains(&format!("missing{i}")), "{message}");
        }
    }
    assert_eq!(names(&mut c).len(), 50);
}

#[test]
fn bad_clients_get_errors_and_others_are_served() {
    let host = Host::start();

    // Garbage: its first four bytes read as a huge length.
    let mut c = host.client();
    c.stream()
        .write_all(b"GET / HTTP/1.1\r\nHost: irmd\r\n\r\n")
        .expect("write");
    expect_error(&mut c, ErrorCode::BadRequest, "exceeds the limit");
    expect_closed(&mut c);
    host.assert_serving();

    // An oversized length prefix alone.
    let mut c = host.client();
    c.stream()
        .write_all(&((MAX_FRAME as u32) + 1).to_le_bytes())
        .expect("write");
    expect_error(&mut c, ErrorCode::BadRequest, "exceeds the limit");
    expect_closed(&mut c);
    host.assert_serving();

    // A truncated frame, then end of stream.
    let mut c = host.client();
    let frame = Codec::encode_to_vec(&Envelope::request(1, ListNames {})).expect("encode");
    let mut bytes = 100u32.to_le_bytes().to_vec();
    bytes.extend_from_slice(&frame[..frame.len() - 1]);
    c.stream().write_all(&bytes).expect("write");
    c.stream().shutdown(Shutdown::Write).expect("shutdown");
    expect_error(&mut c, ErrorCode::BadRequest, "ends inside a frame");
    expect_closed(&mut c);
    host.assert_serving();

    // A valid frame holding no envelope: an error, and the connection goes on.
    let mut c = host.client();
    c.stream()
        .write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff])
        .expect("write");
    expect_error(&mut c, ErrorCode::BadRequest, "undecodable");
    // An envelope without a body, and one carrying a response instead of a request.
    c.stream().write_all(&[0, 0, 0, 0]).expect("write");
    expect_error(&mut c, ErrorCode::BadRequest, "without a body");
    let bogus = Codec::encode_to_vec(&Envelope::response(5, Response::ok())).expect("encode");
    c.stream().write_all(&bogus).expect("write");
    let e = c.recv().expect("answer");
    assert_eq!(e.id, 5);
    assert!(matches!(e.body, Some(Body::Response(r)) if r.as_error().is_some()));
    assert!(matches!(
        c.call_ok(ListNames {}),
        Ok(ResponseKind::Names(_))
    ));
    host.assert_serving();

    // A client that dies mid-frame.
    let mut raw = UnixStream::connect(o7s_irmd::socket_path(&host.rundir)).expect("connect");
    raw.write_all(&[10, 0, 0, 0, 1, 2]).expect("write");
    drop(raw);
    host.assert_serving();
}

#[test]
fn a_silent_client_blocks_nobody() {
    let host = Host::start();
    let _silent = UnixStream::connect(o7s_irmd::socket_path(&host.rundir)).expect("connect");
    let mut half = UnixStream::connect(o7s_irmd::socket_path(&host.rundir)).expect("connect");
    half.write_all(&[200, 0]).expect("half a prefix");
    let started = Instant::now();
    for _ in 0..10 {
        host.assert_serving();
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_second_irmd_on_the_same_rundir_refuses_to_start() {
    let mut host = Host::start();
    let (mut second, log) = host.spawn_irmd();
    let status = wait_exit(&mut second);
    assert!(!status.success());
    let text = read(&log);
    assert!(
        text.contains(&format!("another irmd (pid {}) is running", host.pid())),
        "{text}"
    );
    host.logs -= 1;
    host.assert_serving();
    assert!(host.pool_path().exists());
}

#[test]
fn sigterm_cleans_up() {
    let mut host = Host::start();
    let socket = o7s_irmd::socket_path(&host.rundir);
    let lock = o7s_irmd::lock_path(&host.rundir);
    assert!(socket.exists() && lock.exists() && host.pool_path().exists());
    let status = host.signal(Signal::SIGTERM);
    assert!(status.success(), "{status}: {}", host.log());
    assert!(!socket.exists(), "socket left");
    assert!(!lock.exists(), "lockfile left");
    assert!(!host.pool_path().exists(), "pool left");
    assert!(host.log().contains("irmd stopped"));
}

#[test]
fn sigkill_then_restart_cleans_the_leftovers() {
    let mut host = Host::start();
    host.client()
        .call_ok(CreateName {
            name: "before".into(),
            lb: 0,
        })
        .expect("create");
    let old = host.pid();
    host.signal(Signal::SIGKILL);
    assert!(o7s_irmd::socket_path(&host.rundir).exists());
    assert!(o7s_irmd::lock_path(&host.rundir).exists());
    assert!(host.pool_path().exists());
    // A leftover object of the same prefix besides the pool goes too.
    let extra = Path::new("/dev/shm").join(format!("{}.set.12345", host.prefix()));
    std::fs::write(&extra, b"x").expect("fake leftover");

    host.launch();
    let log = host.log();
    assert!(
        log.contains("a previous irmd died without cleaning up") && log.contains(&old.to_string()),
        "{log}"
    );
    assert!(!extra.exists(), "stale object not removed");
    assert!(host.pool_path().exists());
    // A fresh registry.
    assert!(names(&mut host.client()).is_empty());
    let status = host.signal(Signal::SIGTERM);
    assert!(status.success());
}

#[test]
fn a_dead_clients_event_set_after_a_clean_stop_is_removed_at_start() {
    let mut host = Host::start();
    let status = host.signal(Signal::SIGTERM);
    assert!(status.success(), "{status}: {}", host.log());
    // A client killed after the irmd stopped leaves its event sets. A pid above the kernel's
    // pid_max cannot be alive.
    let dead = Path::new("/dev/shm").join(format!("{}.pool.ev.4194305.1", host.prefix()));
    std::fs::write(&dead, b"x").expect("fake event set");
    let pup = Path::new("/dev/shm").join(format!("{}.pup.4000000", host.prefix()));
    std::fs::write(&pup, b"x").expect("fake per-user pool");
    // One of a live process (this one) is left to it.
    let live = Path::new("/dev/shm").join(format!(
        "{}.pool.ev.{}.2",
        host.prefix(),
        std::process::id()
    ));
    std::fs::write(&live, b"x").expect("fake live event set");

    host.launch();
    host.assert_serving();
    assert!(
        !dead.exists(),
        "dead client's event set left: {}",
        host.log()
    );
    assert!(!pup.exists(), "leftover per-user pool left: {}", host.log());
    assert!(live.exists(), "a live process's event set removed");
    let _ = std::fs::remove_file(&live);
    assert!(host.signal(Signal::SIGTERM).success());
}

#[test]
fn another_irmds_pool_of_the_same_prefix_is_refused() {
    let mut host = Host::start();
    assert!(host.signal(Signal::SIGTERM).success());
    // A live irmd on another run directory with this prefix holds the shared pool.
    std::fs::write(host.pool_path(), b"x").expect("fake pool");
    let (mut child, log) = host.spawn_irmd();
    let status = wait_exit(&mut child);
    assert!(!status.success());
    let text = read(&log);
    assert!(text.contains("another irmd uses prefix"), "{text}");
    assert!(host.pool_path().exists(), "a live irmd's pool removed");
}

/// Not a test on its own: the process `a_dead_process_is_forgotten` starts. It announces
/// itself, binds to a name, takes five pool blocks, says so on stdout and waits to be killed.
#[test]
fn helper_announce_and_wait() {
    let Some(rundir) = std::env::var_os("O7S_TEST_HELPER_RUNDIR") else {
        return;
    };
    let mut c = Client::connect(Path::new(&rundir)).expect("connect");
    let me = std::process::id();
    c.call_ok(ProcessAnnounce {
        pid: me,
        program: "helper".into(),
    })
    .expect("announce");
    c.call_ok(BindProcess {
        pid: me,
        name: "helped".into(),
    })
    .expect("bind");
    // Blocks it owns when it dies: the IRMd must reclaim them.
    let pool = std::env::var("O7S_TEST_HELPER_POOL").expect("pool name");
    let pool = o7s_pool::Pool::open(&pool).expect("open pool");
    for _ in 0..5 {
        pool.try_alloc(1000).expect("alloc").into_index();
    }
    println!("HELPER READY {me}");
    std::io::stdout().flush().expect("flush");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_dead_process_is_forgotten() {
    let host = Host::start();
    let mut helper = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "helper_announce_and_wait", "--nocapture"])
        .env("O7S_TEST_HELPER_RUNDIR", &host.rundir)
        .env(
            "O7S_TEST_HELPER_POOL",
            o7s_pool::pool_name(&host.prefix(), o7s_pool::Access::Shared),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn helper");
    let pid = helper.id();
    let stdout = helper.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = format!("HELPER READY {pid}");
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains(&ready) => break,
            Some(Ok(_)) => {}
            other => panic!("helper did not get ready: {other:?}"),
        }
    }
    let pool = o7s_pool::Pool::open(&o7s_pool::pool_name(
        &host.prefix(),
        o7s_pool::Access::Shared,
    ))
    .expect("open pool");
    assert_eq!(pool.verify().owned, 5, "{:?}", pool.verify());
    let mut c = host.client();
    assert_eq!(
        processes(&mut c)
            .iter()
            .map(|p| (p.pid, p.names.clone()))
            .collect::<Vec<_>>(),
        [(pid, vec!["helped".to_owned()])]
    );
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill helper");
    let killed = Instant::now();
    wait_exit(&mut helper);
    loop {
        if processes(&mut c).is_empty() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "dead process still registered: {}",
            host.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Its blocks go back to the free lists. The IRMd forgets the process before it reclaims
    // (so no new flow can reach a dead pid), so until then verify reports its blocks.
    loop {
        let report = pool.verify();
        if report.is_ok() && report.owned == 0 && report.cached == 0 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "blocks not reclaimed: {report:?}\n{}",
            host.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let helped = names(&mut c);
    assert_eq!(helped.len(), 1);
    assert!(helped[0].processes.is_empty(), "{helped:?}");
    assert!(host.log().contains("process died"), "{}", host.log());
}

#[test]
fn a_config_file_is_applied_or_refused_by_key() {
    let host = Host::start();
    let conf = host.dir.join("irmd.conf");
    let run = |text: &str| {
        std::fs::write(&conf, text).expect("write conf");
        let out = Command::new(env!("CARGO_BIN_EXE_irmd"))
            .arg("--rundir")
            .arg(host.dir.join("other-run"))
            .arg("--config")
            .arg(&conf)
            .stdin(Stdio::null())
            .output()
            .expect("run irmd");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (status, err) = run("[name.x]\nprog = [\"/bin/true\"]\nbogus = 1\n");
    assert!(!status.success());
    assert!(err.contains("bogus"), "{err}");
    let (status, err) = run("[unicast.u]\nbootstrap = \"l\"\n");
    assert!(!status.success());
    assert!(err.contains("not supported yet: unicast.u"), "{err}");
    let (status, err) = run("[name.x]\nlb = \"sideways\"\n");
    assert!(!status.success());
    assert!(err.contains("name.x.lb"), "{err}");
}

#[test]
fn a_config_file_is_applied_at_start() {
    let host = Host::start_with(|dir| {
        let conf = dir.join("irmd.conf");
        std::fs::write(
            &conf,
            "[name.oping]\nprog = [\"/usr/bin/oping\", \"/usr/bin/oecho\"]\n\
             args = [\"--listen --quiet\"]\nlb = \"round-robin\"\n[name.plain]\n",
        )
        .expect("write conf");
        vec!["--config".into(), conf]
    });
    let mut c = host.client();
    let list = names(&mut c);
    assert_eq!(list.len(), 2);
    assert_eq!(
        (list[0].name.as_str(), list[0].lb()),
        ("oping", LbPolicy::RoundRobin)
    );
    assert_eq!(list[0].programs, ["/usr/bin/oecho", "/usr/bin/oping"]);
    assert_eq!(
        (list[1].name.as_str(), list[1].lb()),
        ("plain", LbPolicy::Spillover)
    );
    let Ok(ResponseKind::Programs(programs)) = c.call_ok(ListPrograms {}) else {
        panic!("list programs");
    };
    let oping = &programs.programs[1];
    assert_eq!(oping.program, "/usr/bin/oping");
    assert!(oping.auto);
    assert_eq!(oping.args, ["--listen", "--quiet"]);
    assert!(!programs.programs[0].auto);
}

fn flows(c: &mut Client) -> Vec<FlowInfo> {
    match c.call_ok(ListFlows {}) {
        Ok(ResponseKind::Flows(f)) => f.flows,
        other => panic!("list flows: {other:?}"),
    }
}

fn open_pool(host: &Host) -> o7s_pool::Pool {
    o7s_pool::Pool::open(&o7s_pool::pool_name(
        &host.prefix(),
        o7s_pool::Access::Shared,
    ))
    .expect("open pool")
}

/// One process at both ends of a direct local flow, through the application library: data
/// both ways, the listing, dealloc from one end then the other, and nothing left in the pool.
#[test]
fn a_direct_local_flow_carries_data_and_goes_away() {
    let host = Host::start();
    let app = o7s::Client::connect_to(&host.rundir).expect("library connects");
    app.bind("echo").expect("bind");
    let server = {
        let app = app.clone();
        std::thread::spawn(move || app.flow_accept(Some(TIMEOUT)))
    };
    let client = app
        .flow_alloc("echo", Some(o7s::qos::voice()), Some(TIMEOUT))
        .expect("alloc");
    let server = server.join().expect("accept thread").expect("accept");
    assert_eq!(client.id(), server.id());
    assert_eq!(server.name(), "echo");
    assert_eq!(
        server.qos(),
        o7s::qos::voice(),
        "the acceptor sees the asked QoS"
    );
    client.write(b"ping").expect("write");
    let mut buf = [0u8; 64];
    assert_eq!(server.read(&mut buf).expect("read"), 4);
    assert_eq!(&buf[..4], b"ping");
    // Zero copy back, and a buffer too small keeps the SDU.
    let mut p = server.alloc_packet(100).expect("packet");
    p.data_mut().fill(7);
    server.write_packet(p).expect("write packet");
    let mut small = [0u8; 10];
    assert!(matches!(
        client.read(&mut small),
        Err(o7s::Error::BufferTooSmall {
            need: 100,
            have: 10
        })
    ));
    let p = client.read_packet().expect("read packet");
    assert_eq!(p.data(), &[7u8; 100][..]);
    drop(p);
    // Too large is an error, not a drop.
    let huge = vec![0u8; client.max_sdu() + 1];
    assert!(matches!(
        client.write(&huge),
        Err(o7s::Error::TooLarge { .. })
    ));
    // Empty and non-blocking reads.
    server.set_nonblocking(true);
    assert!(matches!(
        server.read(&mut buf),
        Err(o7s::Error::WouldBlock { .. })
    ));
    server.set_nonblocking(false);
    server.set_read_timeout(Some(Duration::from_millis(50)));
    assert!(matches!(
        server.read(&mut buf),
        Err(o7s::Error::TimedOut { .. })
    ));

    let mut c = host.client();
    let listed = flows(&mut c);
    assert_eq!(listed.len(), 1);
    let me = std::process::id();
    assert_eq!((listed[0].n_pid, listed[0].n_1_pid), (me, me));
    assert_eq!(listed[0].n_state(), EndState::Active);
    assert_eq!(listed[0].name, "echo");

    // One end goes: the other reads what was queued, then FlowDown.
    client.write(b"last").expect("write");
    let id = client.id();
    client.dealloc().expect("dealloc");
    assert_eq!(server.read(&mut buf).expect("queued data survives"), 4);
    assert!(matches!(server.read(&mut buf), Err(o7s::Error::FlowDown)));
    assert!(
        server.write(b"x").is_err(),
        "writes fail on a flow that is down"
    );
    let listed = flows(&mut c);
    assert_eq!(
        (
            listed[0].flow_id,
            listed[0].n_state(),
            listed[0].n_1_state()
        ),
        (id, EndState::Deallocated, EndState::Active)
    );
    drop(server);
    assert!(
        flows(&mut c).is_empty(),
        "rings destroyed with the last end"
    );
    let report = open_pool(&host).verify();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(
        (report.owned, report.queued, report.held),
        (0, 0, 0),
        "{report:?}"
    );
}

#[test]
fn allocations_fail_clearly_and_waits_block_nobody() {
    let host = Host::start();
    let app = o7s::Client::connect_to(&host.rundir).expect("connect");
    // Unknown name: at once.
    let started = Instant::now();
    let e = app
        .flow_alloc("nobody", None, Some(TIMEOUT))
        .expect_err("no such name");
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(e.to_string().contains("no name \"nobody\""), "{e}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // A name without an acceptor: after the timeout.
    app.bind("idle").expect("bind");
    let started = Instant::now();
    let e = app
        .flow_alloc("idle", None, Some(Duration::from_millis(300)))
        .expect_err("nobody accepts");
    let took = started.elapsed();
    assert_eq!(e.code(), Some(ErrorCode::TimedOut), "{e}");
    assert!(e.to_string().contains("within 300 ms"), "{e}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // An accept waiting forever (on its own connection) blocks nobody.
    let waiting = {
        let app = app.clone();
        std::thread::spawn(move || app.flow_accept(None).map(|f| f.id()))
    };
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    for _ in 0..10 {
        host.assert_serving();
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // The waiting accept takes the next flow.
    let f = app.flow_alloc("idle", None, Some(TIMEOUT)).expect("alloc");
    assert_eq!(waiting.join().expect("thread").expect("accept"), f.id());
    // Accepting needs a binding.
    app.unbind("idle").expect("unbind");
    let e = app.flow_accept(Some(TIMEOUT)).expect_err("not bound");
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    let e = app
        .flow_accept_for(Some("idle"), Some(TIMEOUT))
        .expect_err("not bound");
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    // An allocation that waits is served by an accept that comes later.
    app.bind("late").expect("bind");
    let alloc = {
        let app = app.clone();
        std::thread::spawn(move || app.flow_alloc("late", None, Some(TIMEOUT)).map(|f| f.id()))
    };
    std::thread::sleep(Duration::from_millis(100));
    let accepted = app
        .flow_accept_for(Some("late"), Some(TIMEOUT))
        .expect("accept");
    assert_eq!(alloc.join().expect("thread").expect("alloc"), accepted.id());
}
