//! `irm`: the operator CLI of the IRMd (`irm --help` for the grammar).
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::process::ExitCode;

use o7s_cli::irm;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let invocation = match irm::parse(&args) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("irm: {e}");
            return ExitCode::from(2);
        }
    };
    match irm::run(&invocation) {
        Ok((out, warnings)) => {
            for w in warnings {
                eprintln!("irm: warning: {w}");
            }
            if !out.is_empty() {
                // A closed stdout (`irm name list | head`) is not an error worth a panic.
                let _ = writeln!(std::io::stdout(), "{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("irm: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
