//! Applying `irmd.conf`'s IPCP tables at start-up ([`Irmd::serve`]).
//!
//! [`Irmd::start`] applies the `[name.X]` tables before it listens. The IPCP tables need a
//! listening IRMd (a spawned IPCP connects to the socket to say hello), so they are applied
//! while it serves: each `[local.X]` / `[eth-dix.X]` in file order, as the reference does,
//! create → bootstrap → autobind → reg, through the same functions as the `CreateIpcp`,
//! `BootstrapIpcp`, `BindProcess` and `RegisterName` requests. Every step is logged with its
//! table; the last line is `irmd.conf applied` (or the error).
//!
//! A failure is a [`ConfigError::Apply`] naming the table or key (`eth-dix.e0.dev: no network
//! interface "nope" in this network namespace`). The IRMd then stops as on SIGTERM: every IPCP
//! it started is stopped, the socket, the pool and the lockfile go, and [`Irmd::serve`]
//! returns the error (`irmd` exits non-zero with it).

use std::sync::Arc;

use o7s_proto::irm::{BootstrapIpcp, CreateIpcp, IpcpTypeConfig, RegisterTarget, ResponseKind};
use tracing::{error, info};

use super::{Irmd, State, ipcps};
use crate::config::{ConfigError, IpcpPlan};

fn failed(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Apply {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Irmd {
    /// Serves clients until `shutdown` completes, like [`Irmd::run`], and meanwhile applies the
    /// configuration's IPCP tables. If one cannot be applied the IRMd stops at once (with
    /// everything it started) and the error is returned.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ConfigError> {
        let plans = match &self.options.config {
            Some(config) => config.ipcps()?,
            None => Vec::new(),
        };
        let configured = self.options.config.is_some();
        let state = self.state.clone();
        let mut failure = None;
        let watch = async {
            tokio::pin!(shutdown);
            tokio::select! {
                () = &mut shutdown => {}
                applied = apply(&state, &plans) => match applied {
                    Ok(()) => {
                        if configured {
                            info!(ipcps = plans.len(), "irmd.conf applied");
                        }
                        shutdown.await;
                    }
                    Err(e) => {
                        error!("irmd.conf cannot be applied: {e}; stopping");
                        failure = Some(e);
                    }
                },
            }
        };
        self.run(watch).await;
        failure.map_or(Ok(()), Err)
    }
}

/// Applies the IPCP tables in order; stops at the first failure.
pub async fn apply(state: &Arc<State>, plans: &[IpcpPlan]) -> Result<(), ConfigError> {
    for plan in plans {
        apply_one(state, plan).await?;
    }
    Ok(())
}

async fn apply_one(state: &Arc<State>, plan: &IpcpPlan) -> Result<(), ConfigError> {
    let key = plan.key.as_str();
    // Checked before anything is started, so a typo costs no process.
    if let Some(IpcpTypeConfig::Eth(eth)) =
        plan.bootstrap.as_ref().and_then(|b| b.type_config.as_ref())
    {
        check_interface(&format!("{key}.dev"), &eth.dev)?;
    }
    let created = ipcps::create(
        state,
        CreateIpcp {
            ipcp_type: plan.ipcp_type.into(),
            name: plan.name.clone(),
        },
    )
    .await
    .map_err(|r| failed(key, format!("cannot create the IPCP: {}", r.message)))?;
    let pid = match created.kind {
        Some(ResponseKind::Ipcp(info)) => info.pid,
        _ => state
            .registry()
            .ipcp(&plan.name)
            .map(|i| i.pid)
            .ok_or_else(|| failed(key, "the IPCP vanished right after it was created"))?,
    };
    info!(table = key, pid, "irmd.conf: IPCP {:?} created", plan.name);
    let Some(config) = &plan.bootstrap else {
        info!(
            table = key,
            "irmd.conf: no bootstrap: the IPCP stays in no layer"
        );
        return Ok(());
    };
    let layer = config.layer.clone();
    ipcps::bootstrap(
        state,
        BootstrapIpcp {
            name: plan.name.clone(),
            config: Some(config.clone()),
        },
    )
    .await
    .map_err(|r| failed(format!("{key}.bootstrap"), r.message))?;
    let backend = state
        .registry()
        .ipcp(&plan.name)
        .and_then(|i| i.backend.clone());
    info!(
        table = key,
        layer = %layer,
        hash = ?config.hash(),
        ?backend,
        "irmd.conf: IPCP {:?} bootstrapped",
        plan.name
    );
    if plan.autobind {
        for name in [&plan.name, &layer] {
            state
                .registry()
                .bind_process(pid, name)
                .map_err(|r| failed(format!("{key}.autobind"), r.message))?;
            info!(
                table = key,
                pid, "irmd.conf: IPCP process bound to {name:?}"
            );
        }
    }
    for name in &plan.reg {
        ipcps::register(
            state,
            name,
            Some(&RegisterTarget::Ipcp(plan.name.clone())),
            true,
        )
        .await
        .map_err(|r| {
            failed(
                format!("{key}.reg"),
                format!("cannot register {name:?}: {}", r.message),
            )
        })?;
        info!(
            table = key,
            "irmd.conf: {name:?} registered in {:?}", plan.name
        );
    }
    Ok(())
}

/// Checks that `dev` is a network interface of the IRMd's network namespace (where its IPCPs
/// run). `/proc/net/dev` is per network namespace of the reader, unlike `/sys/class/net`,
/// which shows the namespace of whoever mounted sysfs.
fn check_interface(key: &str, dev: &str) -> Result<(), ConfigError> {
    let table = std::fs::read_to_string("/proc/net/dev")
        .map_err(|e| failed(key, format!("cannot list the network interfaces: {e}")))?;
    if interfaces(&table).any(|i| i == dev) {
        Ok(())
    } else {
        let known: Vec<&str> = interfaces(&table).collect();
        Err(failed(
            key,
            format!(
                "no network interface {dev:?} in this network namespace (there are: {})",
                known.join(", ")
            ),
        ))
    }
}

/// The interface names of a `/proc/net/dev` table: two header lines, then `name: counters`.
fn interfaces(table: &str) -> impl Iterator<Item = &str> {
    table
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim())
        .filter(|name| !name.is_empty() && !name.contains('|'))
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:   16402     200    0    0    0     0          0         0    16402     200    0    0    0     0       0          0
vethab1a: 1234 5 0 0 0 0 0 0 99 1 0 0 0 0 0 0
  eth0:12345678901 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0
";

    #[test]
    fn interfaces_of_proc_net_dev() {
        let names: Vec<&str> = interfaces(SAMPLE).collect();
        assert_eq!(names, ["lo", "vethab1a", "eth0"]);
    }

    #[test]
    fn a_missing_interface_is_named() {
        let e = check_interface("eth-dix.e.dev", "o7s-no-such-if0").unwrap_err();
        let e = e.to_string();
        assert!(
            e.starts_with(
                "eth-dix.e.dev: no network interface \"o7s-no-such-if0\" in this network namespace"
            ),
            "{e}"
        );
        check_interface("k", "lo").expect("lo exists in every network namespace");
    }

    proptest! {
        #[test]
        fn every_listed_interface_is_found(
            names in proptest::collection::btree_set("[a-z][a-z0-9._-]{0,14}", 0..6),
            pad in 0usize..8,
        ) {
            let mut table = SAMPLE.lines().take(2).collect::<Vec<_>>().join("\n");
            for n in &names {
                table.push_str(&format!("\n{}{n}: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16", " ".repeat(pad)));
            }
            let got: std::collections::BTreeSet<&str> = interfaces(&table).collect();
            let want: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn any_text_lists_without_panicking(text in "\\PC{0,300}") {
            for name in interfaces(&text) {
                prop_assert!(!name.is_empty());
                prop_assert!(!name.contains(':'));
            }
        }
    }
}
