//! `oping`: round-trip times over a flow, as the reference's tool measures them.
//!
//! The server (`oping -l`) binds itself to a name, accepts flows and turns every request into
//! a reply on the same flow, without copying (the received pool block is sent back). The
//! client (`oping -n NAME`) allocates a flow to the name; a writer thread sends a request per
//! interval while the main thread reads replies (with a timeout of interval + 2 s) and prints
//! one line per reply, then the statistics.
//!
//! Message (the first [`HEADER_LEN`] bytes, zero-padded to the size): type `u32` big-endian
//! (0 request, 1 reply), id `u32` big-endian, then the sender's `CLOCK_MONOTONIC` as `tv_sec`
//! `u64` and `tv_nsec` `u64` in host order, echoed verbatim.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use o7s::{Client, Error, Flow};

/// Prints a line to stdout, ignoring a closed stdout (`oping | head` must not panic).
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Bytes of the message header.
pub const HEADER_LEN: usize = 24;
/// Message type of a request.
pub const ECHO_REQUEST: u32 = 0;
/// Message type of a reply.
pub const ECHO_REPLY: u32 = 1;
/// Smallest and largest message size (`-s` is clamped to these).
pub const MIN_SIZE: usize = 64;
/// See [`MIN_SIZE`].
pub const MAX_SIZE: usize = 1500;
/// Longest interval between requests.
pub const MAX_INTERVAL: Duration = Duration::from_secs(10);
/// A server flow idle this long is deallocated.
pub const SERVER_IDLE: Duration = Duration::from_secs(20);

/// Parses an interval: a number with an optional unit `ms` (default), `s`, `m`, `h` or `d`,
/// capped at [`MAX_INTERVAL`].
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("bad interval {text:?}: expected a number with ms/s/m/h/d"))?;
    let ms_per = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("bad interval unit {unit:?} (ms, s, m, h or d)")),
    };
    Ok(Duration::from_millis(n.saturating_mul(ms_per)).min(MAX_INTERVAL))
}

/// The sender's clock, as the message carries it.
fn monotonic() -> (u64, u64) {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (
        u64::try_from(t.tv_sec).unwrap_or(0),
        u64::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Writes a message header into the front of `buf` (at least [`HEADER_LEN`] bytes).
pub fn encode(buf: &mut [u8], kind: u32, id: u32, (sec, nsec): (u64, u64)) {
    buf[0..4].copy_from_slice(&kind.to_be_bytes());
    buf[4..8].copy_from_slice(&id.to_be_bytes());
    buf[8..16].copy_from_slice(&sec.to_ne_bytes());
    buf[16..24].copy_from_slice(&nsec.to_ne_bytes());
}

/// A message's type, id and timestamp; `None` if it is shorter than a header.
pub fn decode(buf: &[u8]) -> Option<(u32, u32, (u64, u64))> {
    let word = |r: std::ops::Range<usize>| buf.get(r);
    let kind = u32::from_be_bytes(word(0..4)?.try_into().ok()?);
    let id = u32::from_be_bytes(word(4..8)?.try_into().ok()?);
    let sec = u64::from_ne_bytes(word(8..16)?.try_into().ok()?);
    let nsec = u64::from_ne_bytes(word(16..24)?.try_into().ok()?);
    Some((kind, id, (sec, nsec)))
}

/// Running RTT statistics (Welford: mean and sample standard deviation).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Replies counted.
    pub received: u32,
    /// Replies older than one already seen.
    pub out_of_order: u32,
    /// Smallest RTT, ms.
    pub min: f64,
    /// Largest RTT, ms.
    pub max: f64,
    /// Mean RTT, ms.
    pub avg: f64,
    m2: f64,
}

impl Stats {
    /// Counts one reply's RTT (ms).
    pub fn add(&mut self, ms: f64) {
        self.received += 1;
        if self.received == 1 || ms < self.min {
            self.min = ms;
        }
        if ms > self.max {
            self.max = ms;
        }
        let d = ms - self.avg;
        self.avg += d / f64::from(self.received);
        self.m2 += d * (ms - self.avg);
    }

    /// Sample standard deviation, ms (`None` below two samples).
    pub fn mdev(&self) -> Option<f64> {
        (self.received > 1).then(|| (self.m2 / f64::from(self.received - 1)).sqrt())
    }

    /// Loss in percent, rounded up.
    pub fn loss(&self, sent: u32) -> f64 {
        if sent == 0 {
            0.0
        } else {
            (100.0 - 100.0 * f64::from(self.received) / f64::from(sent))
                .ceil()
                .max(0.0)
        }
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The name to ping.
    pub name: String,
    /// Requests to send (`None`: until interrupted).
    pub count: Option<u32>,
    /// Between requests.
    pub interval: Duration,
    /// Message size, [`MIN_SIZE`]..=[`MAX_SIZE`].
    pub size: usize,
    /// QoS of the flow.
    pub qos: o7s::QosSpec,
    /// Only the statistics.
    pub quiet: bool,
    /// Flow allocation timeout (`None`: the IRMd's default).
    pub alloc_timeout: Option<Duration>,
}

fn format_rtt(ms: f64) -> String {
    if ms < 0.1 {
        format!("{:.0} µs", ms * 1000.0)
    } else {
        format!("{ms:.3} ms")
    }
}

/// Runs the client; returns its statistics (also printed) or why it could not start.
pub fn client(opts: &ClientOptions) -> Result<(u32, Stats), String> {
    let irm = Client::connect().map_err(|e| e.to_string())?;
    let flow = irm
        .flow_alloc(&opts.name, Some(opts.qos.clone()), opts.alloc_timeout)
        .map_err(|e| format!("cannot allocate a flow to {:?}: {e}", opts.name))?;
    let flow = Arc::new(flow);
    let count = opts.count.unwrap_or(u32::MAX);
    let size = opts.size.clamp(MIN_SIZE, MAX_SIZE);
    if !opts.quiet {
        match opts.count {
            Some(c) => out!(
                "Pinging {} with {size} bytes of data ({c} packets):\n",
                opts.name
            ),
            None => out!("Pinging {} with {size} bytes of data:\n", opts.name),
        }
    }
    let sent = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = std::time::Instant::now();
    let writer = {
        let (flow, sent, stop) = (flow.clone(), sent.clone(), stop.clone());
        let interval = opts.interval;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; size];
            while !stop.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < count {
                std::thread::sleep(interval);
                let id = sent.load(Ordering::Relaxed);
                encode(&mut buf, ECHO_REQUEST, id, monotonic());
                if let Err(e) = flow.write(&buf) {
                    out!("Failed to send SDU {id}: {e}");
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    flow.set_read_timeout(Some(opts.interval + Duration::from_secs(2)));
    let mut stats = Stats::default();
    let mut expected = 0u32;
    let mut buf = vec![0u8; MAX_SIZE.max(size)];
    while stats.received < count {
        let n = match flow.read(&mut buf) {
            Ok(n) => n,
            Err(Error::TimedOut { .. }) => {
                out!("Server timed out.");
                break;
            }
            Err(Error::BufferTooSmall { need, .. }) => {
                out!("Dropping an oversized message of {need} bytes.");
                let _ = flow.read_packet();
                continue;
            }
            Err(e) => {
                out!("Flow ended: {e}.");
                break;
            }
        };
        let now = monotonic();
        let Some((kind, id, (sec, nsec))) = decode(&buf[..n]) else {
            out!("Invalid message of {n} bytes.");
            continue;
        };
        if kind != ECHO_REPLY {
            out!("Invalid message type {kind}.");
            continue;
        }
        if id >= count {
            out!("Invalid id {id}.");
            continue;
        }
        let rtt_ns = (i128::from(now.0) - i128::from(sec)) * 1_000_000_000 + i128::from(now.1)
            - i128::from(nsec);
        let ms = rtt_ns as f64 / 1e6;
        stats.add(ms);
        let ooo = id < expected;
        if ooo {
            stats.out_of_order += 1;
        } else {
            expected = id + 1;
        }
        if !opts.quiet {
            out!(
                "{n} bytes from {}: seq={id} time={}{}",
                opts.name,
                format_rtt(ms),
                if ooo { " [out-of-order]" } else { "" }
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let elapsed = started.elapsed();
    let sent = sent.load(Ordering::Relaxed);
    out!("\n--- {} ping statistics ---", opts.name);
    out!(
        "{sent} packets transmitted, {} received, {:.0}% packet loss, {} out-of-order, time: {:.3} ms",
        stats.received,
        stats.loss(sent),
        stats.out_of_order,
        elapsed.as_secs_f64() * 1000.0
    );
    if stats.received > 0 {
        let mdev = stats
            .mdev()
            .map_or_else(|| "NaN".to_owned(), |d| format!("{d:.3}"));
        out!(
            "rtt min/avg/max/mdev = {:.3}/{:.3}/{:.3}/{mdev} ms",
            stats.min,
            stats.avg,
            stats.max
        );
    }
    let _ = std::io::stdout().flush();
    drop(flow);
    Ok((sent, stats))
}

/// Runs the server: binds to `name`, then accepts flows forever, one echo thread each.
pub fn server(name: &str, quiet: bool) -> Result<(), String> {
    let irm = Client::connect().map_err(|e| e.to_string())?;
    irm.bind(name)
        .map_err(|e| format!("cannot bind to {name:?}: {e}"))?;
    out!(
        "Ouroboros ping server listening on {name:?} (pid {}).",
        irm.pid()
    );
    let _ = std::io::stdout().flush();
    loop {
        let flow = irm
            .flow_accept(None)
            .map_err(|e| format!("cannot accept flows: {e}"))?;
        if !quiet {
            out!(
                "New flow {} from pid {} ({:?}).",
                flow.id(),
                flow.peer_pid(),
                flow.name()
            );
            let _ = std::io::stdout().flush();
        }
        std::thread::spawn(move || echo(&flow));
    }
}

/// Turns every request on a flow into a reply, in place: the received block goes back.
fn echo(flow: &Flow) {
    flow.set_read_timeout(Some(SERVER_IDLE));
    let why = loop {
        let mut packet = match flow.read_packet() {
            Ok(p) => p,
            Err(Error::TimedOut { .. }) => {
                break format!("idle for {} s, deallocated", SERVER_IDLE.as_secs());
            }
            Err(e) => break format!("ended: {e}"),
        };
        match decode(packet.data()) {
            Some((ECHO_REQUEST, ..)) => {
                packet.data_mut()[0..4].copy_from_slice(&ECHO_REPLY.to_be_bytes());
                if let Err(e) = flow.write_packet(packet) {
                    break format!("ended (reply not sent): {e}");
                }
            }
            _ => continue,
        }
    };
    out!("Flow {} (pid {}) {why}.", flow.id(), flow.peer_pid());
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn intervals_take_units_and_are_capped() {
        assert_eq!(parse_interval("250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("1h"), Ok(MAX_INTERVAL));
        assert!(parse_interval("fast").is_err());
        assert!(parse_interval("3y").is_err());
    }

    #[test]
    fn messages_round_trip() {
        let mut buf = [0u8; 64];
        encode(&mut buf, ECHO_REQUEST, 7, (1, 2));
        assert_eq!(&buf[..8], &[0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(decode(&buf), Some((ECHO_REQUEST, 7, (1, 2))));
        assert_eq!(decode(&buf[..23]), None);
    }

    #[test]
    fn statistics_are_running_mean_and_sample_deviation() {
        let mut s = Stats::default();
        for ms in [1.0, 2.0, 3.0, 4.0] {
            s.add(ms);
        }
        assert_eq!((s.min, s.max, s.avg), (1.0, 4.0, 2.5));
        let mdev = s.mdev().expect("two samples or more");
        assert!((mdev - 1.290_994).abs() < 1e-5, "{mdev}");
        assert_eq!(s.loss(4), 0.0);
        assert_eq!(s.loss(6), 34.0, "rounded up");
        assert_eq!(Stats::default().loss(0), 0.0);
    }
}
