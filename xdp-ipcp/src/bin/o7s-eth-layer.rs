//! A stand-alone eth-dix layer for crash tests: opens an existing pool, runs one [`EthIpcp`] on
//! an interface in a given backend mode, and echoes every SDU back on its flow.
//!
//! ```text
//! ip netns exec NS o7s-eth-layer IFACE POOL MODE
//! ```
//!
//! `MODE` is `auto`, `native`, `generic` or `packet`. The process resolves `IFACE` in its own
//! network namespace (so start it with `ip netns exec`), opens the pool `POOL` (created by
//! someone else), registers the name hash `[0x42; 32]`, prints exactly one line,
//! `ready <kind>` (`native`, `generic` or `packet`: the backend in effect) on stdout, then
//! pumps forever: it accepts every flow request, binds each flow to a ring it creates (it is
//! both producer and consumer) and sends every SDU it reads back on the same flow. It never
//! exits on its own; kill it. Errors go to stderr with exit status 1.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant as StdInstant};

use o7s_pool::{Pool, RingReader};
use o7s_xdp_ipcp::{BackendKind, EthIpcp, Event, Instant, IpcpConfig, ModeChoice};

/// The name the layer registers (what the tests query).
const NAME: [u8; 32] = [0x42; 32];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("o7s-eth-layer: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

fn run() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [iface, pool_name, mode] = args.as_slice() else {
        return Err("usage: o7s-eth-layer IFACE POOL MODE (auto|native|generic|packet)".into());
    };
    let mode: ModeChoice = mode.parse()?;
    let pool = Pool::open(pool_name).map_err(|e| format!("opening pool {pool_name}: {e}"))?;
    let mut config = IpcpConfig::new(iface);
    config.backend.mode = mode;
    let mut ipcp = EthIpcp::open(&pool, &config)?;
    ipcp.layer_mut().register(&NAME)?;
    let kind = match ipcp.backend_info().kind {
        BackendKind::Xdp(o7s_ebpf::Mode::Native) => "native",
        BackendKind::Xdp(o7s_ebpf::Mode::Generic) => "generic",
        BackendKind::Packet => "packet",
    };
    eprintln!(
        "o7s-eth-layer: pid {} on {iface}: {}",
        std::process::id(),
        ipcp.backend_info()
    );
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {kind}")?;
        out.flush()?;
    }
    pump(&pool, &mut ipcp)
}

/// The event loop: never returns unless a call fails.
fn pump<'p>(pool: &'p Pool, ipcp: &mut EthIpcp<'p>) -> Result<(), BoxError> {
    let start = StdInstant::now();
    let now = || Instant::from_millis(u64::try_from(start.elapsed().as_millis()).unwrap_or(0));
    let mut flows: Vec<(u16, RingReader<'p>)> = Vec::new();
    loop {
        let activity = ipcp.poll(now())?;
        while let Some(event) = ipcp.layer_mut().poll_event() {
            if let Event::FlowReqArrived { eid, .. } = event {
                let ring = pool.ring_create(pool.pid(), pool.pid())?;
                ipcp.bind_flow(eid, ring)?;
                ipcp.layer_mut().flow_accept(eid, b"")?;
                flows.push((eid, pool.ring_reader(ring)?));
            }
        }
        let mut echoed = 0;
        for (eid, reader) in &flows {
            while let Ok(packet) = reader.try_read() {
                // Best effort: a full TX queue drops the echo (the packet goes back to the
                // pool when the error is dropped).
                if ipcp.send(*eid, packet).is_ok() {
                    echoed += 1;
                }
                if echoed % 64 == 0 {
                    ipcp.flush()?;
                }
            }
        }
        if activity.is_idle() && echoed == 0 {
            ipcp.wait(Duration::from_millis(1))?;
        }
    }
}
