//! `ipcpd-local`: the local IPC process, spawned by the IRMd (`irm ipcp create type local`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use o7s_ipcpd::local::{Local, LocalHandler};
use o7s_ipcpd::runtime::Irm;
use o7s_proto::irm::IpcpType;

/// The local IPC process: a layer that joins flows between processes of this host. The IRMd
/// starts it; it serves until the IRMd closes its connection.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Run directory of the IRMd.
    #[arg(long, env = "O7S_RUNDIR", default_value = o7s::rundir::DEFAULT_RUNDIR)]
    rundir: PathBuf,
    /// The IPCP's name, as the IRMd created it.
    #[arg(long)]
    name: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let handler = Arc::new(LocalHandler(Arc::new(Local::new())));
    match Irm::start(&args.rundir, &args.name, IpcpType::Local, handler) {
        Ok((_irm, reader)) => {
            eprintln!("ipcpd-local: {} (pid {}) up", args.name, std::process::id());
            let _ = reader.join();
            eprintln!("ipcpd-local: {}: the irmd closed the connection", args.name);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ipcpd-local: {}: {e}", args.name);
            ExitCode::from(1)
        }
    }
}
