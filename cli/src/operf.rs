//! `operf`: throughput over a flow.
//!
//! The server (`operf -l [-n NAME]`) binds itself to a name and accepts flows, one thread
//! each; it counts the SDUs and bytes it receives, checks their sequence numbers, echoes them
//! when the client asks for a bidirectional test (or always with `--echo`), and prints the
//! totals with packets/s and Mbit/s when the flow ends. The client (`operf -n NAME`) allocates
//! a flow, sends the test type, then `size`-byte SDUs for `duration`: as fast as the flow
//! takes them (flood, the default; writes block while the ring is full) or paced at `-r` SDUs
//! per second; it prints what it sent (and, bidirectional, what came back).
//!
//! Messages: first a 4-byte test type (`u32`, host order: 0 unidirectional, 1 bidirectional),
//! as the reference sends it; then data SDUs that start with a `u64` big-endian sequence
//! number (from 0), zero-padded to the size.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use o7s::{Client, Error, Flow};

macro_rules! out {
    ($($arg:tt)*) => {{
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, $($arg)*);
        let _ = stdout.flush();
    }};
}

/// Test type of a unidirectional test.
pub const TEST_UNI: u32 = 0;
/// Test type of a bidirectional (echo) test.
pub const TEST_BI: u32 = 1;
/// Bytes of the test-type message.
pub const CONFIG_LEN: usize = 4;
/// Smallest SDU: the sequence number.
pub const MIN_SIZE: usize = 8;
/// How long a blocked write waits for ring room before the client gives up loudly.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a bidirectional client waits for the last echoes.
pub const ECHO_GRACE: Duration = Duration::from_secs(2);

/// Parses a duration: a number with `ms`, `s` (the default), `m`, `h` or `d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}: expected a number with ms/s/m/h/d"))?;
    let secs_per = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(format!("bad duration unit {unit:?} (ms, s, m, h or d)")),
    };
    Duration::try_from_secs_f64(n * secs_per).map_err(|e| format!("bad duration {text:?}: {e}"))
}

/// Parses a rate in SDUs per second, with an optional `k`, `M` or `G` multiplier.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, mul) = match text.char_indices().last() {
        Some((i, 'k')) => (&text[..i], 1_000),
        Some((i, 'M')) => (&text[..i], 1_000_000),
        Some((i, 'G')) => (&text[..i], 1_000_000_000),
        _ => (text, 1),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("bad rate {text:?}: expected SDUs per second, e.g. 1000 or 10k"))?;
    match n.checked_mul(mul) {
        Some(0) => Err("the rate must be at least 1 SDU per second".to_owned()),
        Some(r) => Ok(r),
        None => Err(format!("rate {text:?} is too large")),
    }
}

/// Packets and bytes over a time, and the rates they make.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    /// SDUs.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
    /// Over this long.
    pub elapsed: Duration,
}

impl Tally {
    /// Packets per second (0 over no time).
    pub fn pps(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.packets as f64 / s
        } else {
            0.0
        }
    }

    /// Megabits per second (0 over no time).
    pub fn mbps(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.bytes as f64 * 8.0 / s / 1e6
        } else {
            0.0
        }
    }

    /// `N packets, B bytes in T s: X pps, Y Mbit/s`.
    pub fn summary(&self) -> String {
        format!(
            "{} packets, {} bytes in {:.3} s: {:.1} pps, {:.2} Mbit/s",
            self.packets,
            self.bytes,
            self.elapsed.as_secs_f64(),
            self.pps(),
            self.mbps()
        )
    }
}

/// Sequence bookkeeping of a receiver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sequence {
    /// The next sequence number expected.
    pub expected: u64,
    /// Sequence numbers skipped (not seen when a later one arrived).
    pub missing: u64,
    /// SDUs older than one already seen.
    pub out_of_order: u64,
}

impl Sequence {
    /// Accounts one received sequence number.
    pub fn see(&mut self, seq: u64) {
        if seq >= self.expected {
            self.missing += seq - self.expected;
            self.expected = seq + 1;
        } else {
            self.out_of_order += 1;
            self.missing = self.missing.saturating_sub(1);
        }
    }
}

fn seq_of(data: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(data.get(..8)?.try_into().ok()?))
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Name to send to.
    pub name: String,
    /// How long to send.
    pub duration: Duration,
    /// SDU size.
    pub size: usize,
    /// SDUs per second (`None`: flood).
    pub rate: Option<u64>,
    /// Ask the server to echo, and count the echoes.
    pub bidirectional: bool,
    /// Flow allocation timeout (`None`: the IRMd's default).
    pub alloc_timeout: Option<Duration>,
}

/// What the client did.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientReport {
    /// What it sent.
    pub sent: Tally,
    /// Echoes received (bidirectional).
    pub echoed: Option<Tally>,
}

/// Runs the client.
pub fn client(opts: &ClientOptions) -> Result<ClientReport, String> {
    let irm = Client::connect().map_err(|e| e.to_string())?;
    let flow = irm
        .flow_alloc(&opts.name, None, opts.alloc_timeout)
        .map_err(|e| format!("cannot allocate a flow to {:?}: {e}", opts.name))?;
    let max = flow.max_sdu();
    if opts.size < MIN_SIZE || opts.size > max {
        return Err(format!(
            "size {} out of range: {MIN_SIZE}..={max} bytes (the largest SDU the pool takes)",
            opts.size
        ));
    }
    flow.set_write_timeout(Some(WRITE_TIMEOUT));
    let test = if opts.bidirectional {
        TEST_BI
    } else {
        TEST_UNI
    };
    flow.write(&test.to_ne_bytes())
        .map_err(|e| format!("cannot send the test type: {e}"))?;
    let flow = Arc::new(flow);
    let pace = match opts.rate {
        Some(r) => format!("{r} SDUs/s"),
        None => "flood".to_owned(),
    };
    out!(
        "operf: {} test to {:?}, {} bytes per SDU, {pace}, {:.3} s (flow {}).",
        if opts.bidirectional {
            "bidirectional"
        } else {
            "unidirectional"
        },
        opts.name,
        opts.size,
        opts.duration.as_secs_f64(),
        flow.id()
    );
    let done = Arc::new(AtomicBool::new(false));
    let sent_count = Arc::new(AtomicU64::new(0));
    let reader = opts.bidirectional.then(|| {
        let (flow, done, sent_count) = (flow.clone(), done.clone(), sent_count.clone());
        std::thread::spawn(move || count_echoes(&flow, &done, &sent_count))
    });
    let mut buf = vec![0u8; opts.size];
    let started = Instant::now();
    let mut seq: u64 = 0;
    let mut failure = None;
    loop {
        let elapsed = started.elapsed();
        match opts.rate {
            // Flood: as many as the flow takes until the time is up.
            None if elapsed >= opts.duration => break,
            None => {}
            // Paced: packet `seq` is due at seq / rate (an absolute schedule, so a late
            // wake-up is caught up, not accumulated); every packet due within the duration
            // is sent, even if catching up runs a little past it.
            Some(rate) => {
                let due = Duration::from_secs_f64(seq as f64 / rate as f64);
                if due >= opts.duration {
                    if let Some(rest) = opts.duration.checked_sub(elapsed) {
                        std::thread::sleep(rest);
                    }
                    break;
                }
                if due > elapsed {
                    std::thread::sleep(due - elapsed);
                }
            }
        }
        buf[..8].copy_from_slice(&seq.to_be_bytes());
        match flow.write(&buf) {
            Ok(()) => {
                seq += 1;
                sent_count.store(seq, Ordering::Relaxed);
            }
            Err(Error::TimedOut { .. }) => {
                failure = Some(format!(
                    "a write waited {} s for ring room: the server stopped reading",
                    WRITE_TIMEOUT.as_secs()
                ));
                break;
            }
            Err(e) => {
                failure = Some(format!("write of SDU {seq} failed: {e}"));
                break;
            }
        }
    }
    let sent = Tally {
        packets: seq,
        bytes: seq * opts.size as u64,
        elapsed: started.elapsed(),
    };
    done.store(true, Ordering::Release);
    let echoed = reader.and_then(|r| r.join().ok());
    out!("sent {}", sent.summary());
    if let Some(e) = echoed {
        let loss = if sent.packets == 0 {
            0.0
        } else {
            100.0 * (sent.packets.saturating_sub(e.packets)) as f64 / sent.packets as f64
        };
        out!("echoes {}, {loss:.2}% loss", e.summary());
    }
    // Dealloc: the server reads what is queued, then sees the flow end and reports.
    match Arc::try_unwrap(flow) {
        Ok(f) => {
            let _ = f.dealloc();
        }
        Err(f) => drop(f),
    }
    if let Some(f) = failure {
        return Err(f);
    }
    Ok(ClientReport { sent, echoed })
}

/// Counts echoes until the sender is done and every echo is back (or [`ECHO_GRACE`] passed).
fn count_echoes(flow: &Flow, done: &AtomicBool, sent: &AtomicU64) -> Tally {
    flow.set_read_timeout(Some(Duration::from_millis(100)));
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut grace: Option<Instant> = None;
    loop {
        if done.load(Ordering::Acquire) {
            let deadline = *grace.get_or_insert_with(|| Instant::now() + ECHO_GRACE);
            if tally.packets >= sent.load(Ordering::Relaxed) || Instant::now() > deadline {
                break;
            }
        }
        match flow.read_packet() {
            Ok(p) => {
                tally.packets += 1;
                tally.bytes += p.len() as u64;
                tally.elapsed = started.elapsed();
            }
            Err(Error::TimedOut { .. }) => {}
            Err(_) => break,
        }
    }
    tally
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Name to serve.
    pub name: String,
    /// Echo every SDU whatever the client asked.
    pub echo: bool,
    /// A flow idle this long is deallocated.
    pub idle: Duration,
}

/// Runs the server: binds to the name, accepts flows forever, one counting thread each.
pub fn server(opts: &ServerOptions) -> Result<(), String> {
    let irm = Client::connect().map_err(|e| e.to_string())?;
    irm.bind(&opts.name)
        .map_err(|e| format!("cannot bind to {:?}: {e}", opts.name))?;
    out!(
        "Ouroboros perf server listening on {:?} (pid {}).",
        opts.name,
        irm.pid()
    );
    loop {
        let flow = irm
            .flow_accept(None)
            .map_err(|e| format!("cannot accept flows: {e}"))?;
        out!("New flow {} from pid {}.", flow.id(), flow.peer_pid());
        let (echo, idle) = (opts.echo, opts.idle);
        std::thread::spawn(move || serve(&flow, echo, idle));
    }
}

/// What one server flow saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlowReport {
    /// Data SDUs received.
    pub received: Tally,
    /// Sequence check.
    pub sequence: Sequence,
    /// SDUs echoed.
    pub echoed: u64,
}

fn serve(flow: &Flow, force_echo: bool, idle: Duration) {
    flow.set_read_timeout(Some(idle));
    let mut report = FlowReport::default();
    let mut echo = force_echo;
    let mut test: Option<u32> = None;
    let mut first: Option<Instant> = None;
    let why = loop {
        let packet = match flow.read_packet() {
            Ok(p) => p,
            Err(Error::TimedOut { .. }) => break format!("idle for {} s", idle.as_secs()),
            Err(e) if e.is_flow_end() => break "ended".to_owned(),
            Err(e) => break format!("failed: {e}"),
        };
        if test.is_none() && packet.len() == CONFIG_LEN {
            let mut word = [0u8; CONFIG_LEN];
            word.copy_from_slice(packet.data());
            let t = u32::from_ne_bytes(word);
            test = Some(t);
            echo |= t == TEST_BI;
            continue;
        }
        let now = Instant::now();
        let start = *first.get_or_insert(now);
        report.received.packets += 1;
        report.received.bytes += packet.len() as u64;
        report.received.elapsed = now.duration_since(start);
        if let Some(seq) = seq_of(packet.data()) {
            report.sequence.see(seq);
        }
        if echo {
            if let Err(e) = flow.write_packet(packet) {
                break format!("failed to echo: {e}");
            }
            report.echoed += 1;
        }
    };
    let kind = match test {
        Some(TEST_BI) => "bidirectional",
        Some(TEST_UNI) => "unidirectional",
        _ => "unknown test",
    };
    out!(
        "Flow {} (pid {}, {kind}) {why}: received {}, {} missing, {} out of order{}.",
        flow.id(),
        flow.peer_pid(),
        report.received.summary(),
        report.sequence.missing,
        report.sequence.out_of_order,
        if echo {
            format!(", {} echoed", report.echoed)
        } else {
            String::new()
        }
    );
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3y").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert_eq!(parse_rate("10k"), Ok(10_000));
        assert_eq!(parse_rate("2M"), Ok(2_000_000));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("99999999999999999G").is_err());
    }

    #[test]
    fn tallies() {
        let t = Tally {
            packets: 1000,
            bytes: 1_000_000,
            elapsed: Duration::from_secs(2),
        };
        assert_eq!(t.pps(), 500.0);
        assert_eq!(t.mbps(), 4.0);
        assert_eq!(
            t.summary(),
            "1000 packets, 1000000 bytes in 2.000 s: 500.0 pps, 4.00 Mbit/s"
        );
        assert_eq!(Tally::default().pps(), 0.0);
    }

    #[test]
    fn sequences() {
        let mut s = Sequence::default();
        for seq in [0, 1, 2, 5, 3, 6] {
            s.see(seq);
        }
        assert_eq!(
            s,
            Sequence {
                expected: 7,
                missing: 1,
                out_of_order: 1
            }
        );
        assert_eq!(seq_of(&7u64.to_be_bytes()), Some(7));
        assert_eq!(seq_of(&[1, 2]), None);
    }
}
