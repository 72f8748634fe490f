//! Auto-started programs: a program bound to a name with `auto` (`irm bind program … auto`,
//! or `args` in `irmd.conf`) is started by the IRMd when a flow for that name finds nobody to
//! accept it.
//!
//! [`kick`] is called whenever a flow allocation to a name has to wait for an acceptor. As in
//! the reference, if it still waits after [`GRACE`] (an acceptor may be on its way back to
//! `flow_accept`), the name's first auto program (by path) is started with its arguments and
//! `O7S_RUNDIR` set to this IRMd's run directory; the waiting allocation is matched as soon as
//! the program accepts. Unlike the reference, a second instance is not started while one
//! started for the same name still runs (it is starting up, or busy and will accept again):
//! a burst of allocations starts one program, not one each.
//!
//! Started programs are the IRMd's children: a thread per child reaps it and logs how it
//! ended, and [`terminate_all`] stops the ones still running when the IRMd stops (SIGTERM,
//! SIGKILL after [`TERM_GRACE`]), signalled through pidfds so a reused pid is never hit.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::process::{PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use tracing::{debug, info, warn};

use super::{State, TERM_GRACE};

/// How long an allocation waits for an acceptor before the name's auto program is started
/// (the reference's `IRMD_REQ_ARR_TIMEOUT`).
pub const GRACE: Duration = Duration::from_secs(1);

/// A started program still running.
#[derive(Debug)]
struct Started {
    /// The name it was started for.
    name: String,
    /// To signal it.
    pidfd: OwnedFd,
}

/// The programs this IRMd started, by pid; each entry goes when its reaper has reaped it.
#[derive(Debug, Default)]
pub struct Spawned(Arc<Mutex<HashMap<u32, Started>>>);

impl Spawned {
    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Started>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Flow request `token` to `name` waits for an acceptor: if it still waits after [`GRACE`],
/// starts the name's auto program (see the module doc).
pub fn kick(state: &Arc<State>, name: &str, token: u64) {
    let has_auto = state
        .registry()
        .list_programs()
        .programs
        .iter()
        .any(|p| p.auto && p.names.iter().any(|n| n == name));
    if !has_auto {
        return;
    }
    let state = state.clone();
    let name = name.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(GRACE).await;
        // An entry exists while the request waits (or is about to hear its match).
        if state.waiters().contains_key(&token) {
            start(&state, &name);
        } else {
            debug!(name, "matched within the grace period: nothing to start");
        }
    });
}

/// Starts the first auto program of `name`, unless one started for it still runs.
fn start(state: &State, name: &str) {
    let program = state
        .registry()
        .list_programs()
        .programs
        .into_iter()
        .find(|p| p.auto && p.names.iter().any(|n| n == name));
    let Some(program) = program else {
        return;
    };
    // Held while starting, so two allocations cannot both start one.
    let mut spawned = state.spawned.lock();
    if let Some((pid, _)) = spawned.iter().find(|(_, s)| s.name == name) {
        debug!(name, pid, "already running: not starting another");
        return;
    }
    let child = std::process::Command::new(&program.program)
        .args(&program.args)
        .env(crate::RUNDIR_ENV, &state.rundir)
        .stdin(std::process::Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            warn!(name, program = %program.program, "cannot auto-start: {e}");
            return;
        }
    };
    let pid = child.id();
    let pidfd = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .map(|p| pidfd_open(p, PidfdFlags::empty()));
    let pidfd = match pidfd {
        Some(Ok(fd)) => fd,
        other => {
            // Not yet reaped, so the pid is still ours: this cannot fail short of EMFILE.
            warn!(
                pid,
                "cannot open a pidfd for the auto-started program: {other:?}; killing it"
            );
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
    };
    spawned.insert(
        pid,
        Started {
            name: name.to_owned(),
            pidfd,
        },
    );
    drop(spawned);
    info!(name, pid, program = %program.program, args = ?program.args, "auto-started");
    let table = state.spawned.0.clone();
    let reaper = std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || {
            let status = child.wait();
            table
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&pid);
            match status {
                Ok(s) => info!(pid, "auto-started program ended: {s}"),
                Err(e) => warn!(pid, "cannot reap the auto-started program: {e}"),
            }
        });
    if let Err(e) = reaper {
        // It stays a zombie until the IRMd exits; terminate_all still stops it.
        warn!(pid, "cannot start a reaper thread: {e}");
    }
}

/// Stops every started program still running (the IRMd shuts down): SIGTERM, then SIGKILL
/// after [`TERM_GRACE`]; waits until they are reaped (a second more at most after SIGKILL).
pub fn terminate_all(state: &State) {
    signal_all(&state.spawned, Signal::TERM);
    if !wait_empty(&state.spawned, TERM_GRACE) {
        warn!("auto-started programs ignored SIGTERM: SIGKILL");
        signal_all(&state.spawned, Signal::KILL);
        wait_empty(&state.spawned, Duration::from_secs(1));
    }
}

fn signal_all(spawned: &Spawned, signal: Signal) {
    for (pid, s) in spawned.lock().iter() {
        if let Err(e) = pidfd_send_signal(&s.pidfd, signal) {
            // ESRCH: it has just exited; its reaper removes it.
            debug!(pid, "{signal:?}: {e}");
        }
    }
}

fn wait_empty(spawned: &Spawned, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if spawned.lock().is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
