//! `oping`: measures round-trip times over an o7s flow.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use o7s_cli::oping;

/// Round-trip times over an o7s flow: `oping -l` serves a name, `oping -n NAME` pings it.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Run as the server: bind to the name and echo every request.
    #[arg(short, long)]
    listen: bool,
    /// Name to ping, or (with -l) to serve.
    #[arg(short, long, default_value = "oping")]
    name: String,
    /// Requests to send (default: until interrupted).
    #[arg(short, long)]
    count: Option<u32>,
    /// Interval between requests: a number with ms (default), s, m, h or d; at most 10 s.
    #[arg(short, long, default_value = "1000", value_parser = oping::parse_interval)]
    interval: Duration,
    /// Message size in bytes, clamped to 64..=1500.
    #[arg(short, long, default_value_t = 64)]
    size: usize,
    /// QoS: raw, best, video, voice or data.
    #[arg(short, long, default_value = "raw")]
    qos: String,
    /// Print only the statistics.
    #[arg(short = 'Q', long)]
    quiet: bool,
    /// Give up the flow allocation after this many ms (default: the IRMd's, 20 s).
    #[arg(long)]
    alloc_timeout: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.listen {
        oping::server(&args.name, args.quiet).map(|()| true)
    } else {
        let Some(qos) = o7s::qos::by_name(&args.qos) else {
            eprintln!(
                "oping: unknown QoS {:?} (raw, best, video, voice or data)",
                args.qos
            );
            return ExitCode::from(2);
        };
        oping::client(&oping::ClientOptions {
            name: args.name,
            count: args.count,
            interval: args.interval,
            size: args.size,
            qos,
            quiet: args.quiet,
            alloc_timeout: args.alloc_timeout.map(Duration::from_millis),
        })
        .map(|(sent, stats)| sent == 0 || stats.received > 0)
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("oping: {e}");
            ExitCode::from(1)
        }
    }
}
