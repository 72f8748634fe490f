//! `operf`: throughput over an o7s flow.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use o7s_cli::operf;

/// Throughput over an o7s flow: `operf -l` serves a name, `operf -n NAME` sends to it.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Run as the server: bind to the name, count (and echo on request) what arrives.
    #[arg(short, long)]
    listen: bool,
    /// Name to send to, or (with -l) to serve.
    #[arg(short, long, default_value = "operf")]
    name: String,
    /// Test duration: a number with ms, s (default), m, h or d.
    #[arg(short, long, default_value = "60", value_parser = operf::parse_duration)]
    duration: Duration,
    /// SDU size in bytes (at least 8: the sequence number).
    #[arg(short, long, default_value_t = 1500)]
    size: usize,
    /// Rate limit in SDUs per second (k, M, G multipliers); default: flood.
    #[arg(short, long, value_parser = operf::parse_rate)]
    rate: Option<u64>,
    /// Test type: uni (count at the server) or bi (the server echoes, the client counts).
    #[arg(short, long, default_value = "uni", value_parser = ["uni", "bi"])]
    test: String,
    /// Server: echo every SDU, whatever the client asks.
    #[arg(long)]
    echo: bool,
    /// Server: deallocate a flow idle this many seconds.
    #[arg(long, default_value_t = 10)]
    idle: u64,
    /// Client: give up the flow allocation after this many ms (default: the IRMd's, 20 s).
    #[arg(long)]
    alloc_timeout: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.listen {
        operf::server(&operf::ServerOptions {
            name: args.name,
            echo: args.echo,
            idle: Duration::from_secs(args.idle.max(1)),
        })
    } else {
        operf::client(&operf::ClientOptions {
            name: args.name,
            duration: args.duration,
            size: args.size,
            rate: args.rate,
            bidirectional: args.test == "bi",
            alloc_timeout: args.alloc_timeout.map(Duration::from_millis),
        })
        .map(drop)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("operf: {e}");
            ExitCode::from(1)
        }
    }
}
