//! Flows through IPCP processes, from the IRMd's side: the OAP handshake it carries as the
//! allocation's piggyback, the largest SDU the IPCP reports, and the deallocations it tells the
//! IPCP about.
//!
//! Two kinds of IPCP: the real `ipcpd-local` (built into this target directory), and a fake
//! one: this test binary, started by the IRMd as `ipcpd-local` (a script of that name next to a
//! copy of `irmd`, so the IRMd finds it first). The fake speaks the IPCP side of the control
//! protocol with a scripted behaviour (relay the OAP headers as they are, tamper with the
//! response, make the request stale, replay it, ask for a cipher), records what the IRMd sent
//! it in files, and deallocates its ends when told to, as a real IPCP does.
//!
//! Nothing here needs root.

use std::collections::VecDeque;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use o7s::irm::Client;
use o7s_proto::irm::{
    Body, Codec, Envelope, ErrorCode, FlowDealloc, FlowReqArrived, IpcpFlowReply, IpcpHello,
    IpcpType, Request, RequestKind, Response, ResponseKind,
};
use o7s_proto::oap::{self, FIXED_LEN};
use o7s_testkit::{Irmd, Options, Stop, TIMEOUT, build_bins, temp_dir};

const IRMD: &str = env!("CARGO_BIN_EXE_irmd");
const LAYER: &str = "test-layer";
/// The SDU limit the fake IPCP reports.
const FAKE_MAX_SDU: u32 = 777;

/// The directory of `irmd`, with `ipcpd-local` built next to it.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(IRMD).parent().expect("irmd has a directory");
        build_bins(dir, &[("o7s-ipcpd", "ipcpd-local")])
    })
}

/// A host whose IRMd spawns the fake IPCP in `mode`; its records land in `out`.
struct FakeHost {
    irmd: Irmd,
    dirs: Dirs,
}

/// The fake's directories (the `irmd` link with its script, the records), removed on drop,
/// also when the host fails to start.
struct Dirs {
    bin: PathBuf,
    out: PathBuf,
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.bin);
        let _ = std::fs::remove_dir_all(&self.out);
    }
}

impl FakeHost {
    fn start(mode: &str) -> Self {
        // Next to the real binary (one file system: a hard link, not a copy, so that no
        // process forked meanwhile by another test holds it open for writing when it is
        // executed, which would fail with ETXTBSY).
        let target = Path::new(IRMD).parent().expect("irmd has a directory");
        let dirs = Dirs {
            bin: target.join(temp_dir("ipcp-flows-bin").file_name().expect("a name")),
            out: temp_dir("ipcp-flows-out"),
        };
        let (bin, out) = (&dirs.bin, &dirs.out);
        for d in [bin, out] {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir_all(d).expect("dir");
        }
        if std::fs::hard_link(IRMD, bin.join("irmd")).is_err() {
            std::fs::copy(IRMD, bin.join("irmd")).expect("copy irmd");
            std::thread::sleep(Duration::from_millis(200));
        }
        let me = std::env::current_exe().expect("test binary");
        // The IRMd runs `ipcpd-local --rundir R --name N`: the name is the fourth argument.
        let script = format!(
            "#!/bin/sh\nexec env O7S_FAKE_IPCP_OUT='{}' O7S_FAKE_IPCP_MODE='{mode}' \
             O7S_FAKE_IPCP_NAME=\"$4\" '{}' --exact fake_ipcp --nocapture --test-threads=1\n",
            out.display(),
            me.display()
        );
        let path = bin.join("ipcpd-local");
        std::fs::write(&path, script).expect("script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let irmd = Irmd::start(
            temp_dir("ipcp-flows"),
            Options::new(bin.join("irmd")).stop(Stop::Term),
        );
        let host = Self { irmd, dirs };
        create_local_ipcp(&host.irmd, "fake");
        host
    }

    /// The flow ids the IRMd told the fake to deallocate.
    fn deallocs(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = std::fs::read_dir(&self.dirs.out)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_prefix("dealloc-")?
                            .parse()
                            .ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    /// The OAP request the IRMd sent in its last `IpcpFlowAlloc`.
    fn request(&self) -> Vec<u8> {
        std::fs::read(self.dirs.out.join("request.bin")).expect("the fake recorded a request")
    }
}

/// Creates and bootstraps a local-type IPCP and registers "served" in its layer.
fn create_local_ipcp(irmd: &Irmd, name: &str) {
    irmd.ipcp(IpcpType::Local, name, LAYER, None);
    irmd.register_in(LAYER, "served");
}

/// Waits until `cond` holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The app: a client bound to "served" accepting in a thread, and one allocating to it.
fn alloc_and_accept(rundir: &Path) -> (o7s::Client, Result<(o7s::Flow, o7s::Flow), o7s::Error>) {
    let app = o7s::Client::connect_to(rundir).expect("connect");
    app.bind("served").expect("bind");
    let acceptor = {
        let app = app.clone();
        std::thread::spawn(move || app.flow_accept(Some(Duration::from_secs(3))))
    };
    let alloc = app.flow_alloc("served", None, Some(Duration::from_secs(5)));
    let accepted = acceptor.join().expect("accept thread");
    let both = match (alloc, accepted) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(e), _) => Err(e),
        (Ok(a), Err(e)) => panic!("allocated {a:?} but the accept failed: {e}"),
    };
    (app, both)
}

#[test]
fn oap_through_ipcpd_local_and_the_ipcp_is_told_of_deallocations() {
    let irmd = Irmd::start(
        temp_dir("ipcp-flows"),
        Options::new(bin_dir().join("irmd")).stop(Stop::Term),
    );
    create_local_ipcp(&irmd, "local");
    let (app, flows) = alloc_and_accept(&irmd.rundir);
    let (a, b) = flows.unwrap_or_else(|e| panic!("flow: {e}\n{}", irmd.log()));
    assert_ne!(a.id(), b.id(), "two flows joined by the IPCP");
    assert_eq!(
        a.info().max_sdu,
        None,
        "the local IPCP has no limit of its own"
    );
    assert_eq!(b.info().max_sdu, None);
    a.write(b"through the local IPCP").expect("write");
    let mut buf = [0u8; 64];
    b.set_read_timeout(Some(TIMEOUT));
    let n = b.read(&mut buf).expect("read");
    assert_eq!(&buf[..n], b"through the local IPCP");
    let log = irmd.log();
    assert!(log.contains("OAP request accepted"), "{log}");
    assert!(log.contains("flow allocated through the IPCP"), "{log}");

    // The allocating app writes a burst and deallocates at once: the IRMd tells the IPCP,
    // which still delivers what was queued, then lets go of both of its flows (the accepting
    // app then reads FlowDown).
    const BURST: u32 = 2000;
    for i in 0..BURST {
        a.write(&i.to_be_bytes()).expect("write");
    }
    let ida = a.id();
    a.dealloc().expect("dealloc");
    for i in 0..BURST {
        let n = b
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("SDU {i} of {BURST} lost: {e}"));
        assert_eq!(&buf[..n], &i.to_be_bytes());
    }
    let told = |log: &str| {
        log.lines()
            .any(|l| l.contains("IPCP deallocated its flow") && l.contains(&format!("flow={ida} ")))
    };
    wait_until("the IRMd to tell the IPCP", || told(&irmd.log()));
    assert!(matches!(b.read(&mut buf), Err(o7s::Error::FlowDown)));
    drop(b);
    wait_until("every flow to go", || irmd.flows().is_empty());
    drop(app);
}

#[test]
fn the_request_is_the_references_header_and_the_ipcps_max_sdu_reaches_both_ends() {
    let host = FakeHost::start("relay");
    let before = now_ns();
    let (app, flows) = alloc_and_accept(&host.irmd.rundir);
    let (a, b) = flows.unwrap_or_else(|e| panic!("flow: {e}\n{}", host.irmd.log()));
    let after = now_ns();

    let request = host.request();
    assert_eq!(
        request.len(),
        FIXED_LEN,
        "an unsigned request without key exchange"
    );
    let req = oap::Repr::parse_request(&request).expect("a valid OAP request");
    assert_eq!(
        req,
        oap::Repr::request(req.id, req.timestamp),
        "NIDs and lengths 0"
    );
    assert!(
        (before..=after).contains(&req.timestamp),
        "CLOCK_REALTIME in ns: {} not in {before}..={after}",
        req.timestamp
    );
    assert_ne!(req.id, [0u8; 16], "a random id");

    for f in [&a, &b] {
        assert_eq!(f.info().max_sdu, Some(FAKE_MAX_SDU), "flow {}", f.id());
        assert!(f.info().piggyback.is_empty(), "OAP bytes are not the app's");
    }

    // Deallocations reach the IPCP: the allocating app's flow, then the accepting one's.
    let (ida, idb) = (a.id(), b.id());
    a.dealloc().expect("dealloc");
    wait_until("IpcpFlowDealloc for the allocating flow", || {
        host.deallocs().contains(&ida)
    });
    drop(b);
    wait_until("IpcpFlowDealloc for the accepting flow", || {
        host.deallocs().contains(&idb)
    });
    wait_until("every flow to go", || host.irmd.flows().is_empty());
    drop(app);
}

/// The allocation's error code and message when the fake behaves as `mode`.
fn refused(mode: &str) -> (FakeHost, ErrorCode, String) {
    let host = FakeHost::start(mode);
    let (_app, flows) = alloc_and_accept(&host.irmd.rundir);
    match flows {
        Ok((a, _)) => panic!("{mode}: flow {} allocated", a.id()),
        Err(e) => {
            let code = e
                .code()
                .unwrap_or_else(|| panic!("{mode}: not a refusal: {e}"));
            (host, code, e.to_string())
        }
    }
}

#[test]
fn a_response_that_does_not_hash_the_request_refuses_the_flow() {
    let (host, code, message) = refused("tamper");
    assert_eq!(code, ErrorCode::Auth, "{message}");
    assert!(message.contains("request hash"), "{message}");
    // The IPCP had allocated the flow: it is told to let go, and the flow goes.
    let log = host.irmd.log();
    let line = log
        .lines()
        .find(|l| l.contains("flow refused"))
        .unwrap_or_else(|| panic!("the refusal is logged:\n{log}"));
    let id: u32 = line
        .split("flow=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no flow id in {line:?}"));
    wait_until("IpcpFlowDealloc for the refused flow", || {
        host.deallocs().contains(&id)
    });
    wait_until("every flow to go", || host.irmd.flows().is_empty());
}

#[test]
fn a_stale_request_is_refused_as_an_authentication_error() {
    let (host, code, message) = refused("stale");
    assert_eq!(code, ErrorCode::Auth, "{message}");
    assert!(message.contains("too old"), "{message}");
    assert!(host.irmd.log().contains("flow request refused"), "logged");
}

#[test]
fn a_replayed_request_is_refused() {
    let (_host, code, message) = refused("replay");
    assert_eq!(code, ErrorCode::Auth, "{message}");
    assert!(message.contains("replayed"), "{message}");
}

#[test]
fn a_request_for_encryption_is_not_supported_yet() {
    let (_host, code, message) = refused("cipher");
    assert_eq!(code, ErrorCode::NotSupported, "{message}");
    assert!(message.contains("not supported yet"), "{message}");
}

fn now_ns() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    u64::try_from(d.as_nanos()).expect("before 2554")
}

// ------------------------------------------------------------------------------------------
// The fake IPCP
// ------------------------------------------------------------------------------------------

/// Not a test on its own: the fake IPCP process (see the module doc). Does nothing unless
/// started by a `FakeHost`'s script.
#[test]
fn fake_ipcp() {
    let Some(out) = std::env::var_os("O7S_FAKE_IPCP_OUT") else {
        return;
    };
    let out = PathBuf::from(out);
    let mode = std::env::var("O7S_FAKE_IPCP_MODE").expect("mode");
    let name = std::env::var("O7S_FAKE_IPCP_NAME").expect("name");
    let rundir = std::env::var_os("O7S_RUNDIR").expect("the IRMd says its run directory");
    let mut fake = Fake {
        c: Client::connect(Path::new(&rundir)).expect("connect"),
        queue: VecDeque::new(),
        out,
        mode,
    };
    let hello = fake
        .c
        .call(IpcpHello {
            pid: std::process::id(),
            name,
            ipcp_type: IpcpType::Local.into(),
        })
        .expect("hello");
    assert!(hello.is_ok(), "{hello:?}");
    while let Some((id, kind)) = fake.next_request() {
        let response = fake.handle(kind);
        fake.respond(id, response);
    }
}

struct Fake {
    c: Client,
    /// Requests that arrived while waiting for a response.
    queue: VecDeque<(u64, RequestKind)>,
    out: PathBuf,
    mode: String,
}

impl Fake {
    /// The next request of the IRMd; `None` once it closed the connection.
    fn next_request(&mut self) -> Option<(u64, RequestKind)> {
        if let Some(r) = self.queue.pop_front() {
            return Some(r);
        }
        loop {
            let e = self.c.recv().ok()?;
            if let Some(Body::Request(Request { kind: Some(kind) })) = e.body {
                return Some((e.id, kind));
            }
        }
    }

    fn respond(&mut self, id: u64, response: Response) {
        let frame = Codec::encode_to_vec(&Envelope::response(id, response)).expect("encode");
        self.c.stream().write_all(&frame).expect("write");
    }

    /// Sends a request and waits for its response, queueing the IRMd's requests meanwhile.
    fn call(&mut self, request: impl Into<Request>) -> Response {
        let id = self.c.send(request).expect("send");
        loop {
            let e = self.c.recv().expect("the IRMd answers");
            match e.body {
                Some(Body::Response(r)) if e.id == id => return r,
                Some(Body::Request(Request { kind: Some(kind) })) => {
                    self.queue.push_back((e.id, kind));
                }
                _ => {}
            }
        }
    }

    fn handle(&mut self, kind: RequestKind) -> Response {
        match kind {
            RequestKind::IpcpFlowAlloc(r) => {
                std::fs::write(self.out.join("request.bin"), &r.piggyback).expect("record");
                let mut piggyback = r.piggyback.clone();
                match self.mode.as_str() {
                    "stale" => {
                        let old = now_ns() - 30_000_000_000;
                        piggyback[oap::field::TIMESTAMP].copy_from_slice(&old.to_be_bytes());
                    }
                    "cipher" => piggyback[oap::field::CIPHER_NID]
                        .copy_from_slice(&oap::nid::AES_256_GCM.to_be_bytes()),
                    _ => {}
                }
                let arrived = FlowReqArrived {
                    hash: r.hash.clone(),
                    qos: r.qos.clone(),
                    timeout_ms: r.timeout_ms,
                    piggyback,
                    max_sdu: Some(FAKE_MAX_SDU),
                };
                let mut answer = self.call(arrived.clone());
                if self.mode == "replay" {
                    // The same request again, as a replaying attacker would send it.
                    if let Some(ResponseKind::Flow(info)) = &answer.kind {
                        let _ = self.call(FlowDealloc {
                            flow_id: info.flow_id,
                        });
                    }
                    answer = self.call(arrived);
                }
                let info = match answer.kind {
                    Some(ResponseKind::Flow(info)) => info,
                    _ => return answer,
                };
                let mut response = info.piggyback;
                if self.mode == "tamper" {
                    let last = response.len() - 1;
                    response[last] ^= 0x01;
                }
                ResponseKind::IpcpFlow(IpcpFlowReply {
                    piggyback: response,
                    max_sdu: Some(FAKE_MAX_SDU),
                })
                .into()
            }
            RequestKind::IpcpFlowDealloc(r) => {
                std::fs::write(self.out.join(format!("dealloc-{}", r.flow_id)), b"")
                    .expect("record");
                // As a real IPCP does: its own end goes too.
                let _ = self.call(FlowDealloc { flow_id: r.flow_id });
                Response::ok()
            }
            _ => Response::ok(),
        }
    }
}
