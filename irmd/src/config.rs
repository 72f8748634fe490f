//! `irmd.conf`: the reference's TOML configuration, same tables and keys, loaded with
//! `irmd --config FILE`.
//!
//! Parsing is strict: an unknown table or key is an error that names it (serde's
//! `deny_unknown_fields`), and every value is checked as the reference checks it. What this
//! IRMd cannot do yet is refused with `not supported yet: <key>` rather than ignored, so a
//! configuration never half-applies silently.
//!
//! # What is supported
//!
//! * `[name.X]`: `prog`, `args` (auto-start: the IRMd starts the program when a flow for `X`
//!   finds nobody to accept it), `lb`. Not yet: the six security file keys.
//! * `[local.X]` and `[eth-dix.X]`: the IPCP `X` is created; with `bootstrap = "<layer>"` it
//!   founds that layer with `hash` (SHA3_256 by default) and, for eth-dix, `dev` (required),
//!   `ethertype` (0xA000 by default); then `autobind` binds the IPCP process to `X` and to the
//!   layer name, and each name of `reg` is created (spillover) if missing and registered in `X`.
//!   * **o7s extension**, eth-dix only: `mode = "auto" | "xdp" | "native" | "generic" |
//!     "packet"` picks the data path as `irm ipcp bootstrap … mode` does (default `auto`:
//!     AF_XDP where the program attaches, AF_PACKET otherwise). The reference has no such key.
//!   * Not yet: `enrol` and `conn` (they need enrolment).
//! * `[eth-llc.X]`, `[udp4.X]`, `[udp6.X]`, `[broadcast.X]`, `[unicast.X]`: their keys are
//!   checked, then the table is refused (`not supported yet: unicast.X`): o7s has no such IPCP.
//!
//! # Order, and where o7s is stricter
//!
//! The reference applies the tables in file order. This IRMd applies every `[name.X]` first
//! (when it starts, before it listens), so a name's `lb` holds even if a `reg` of an earlier
//! IPCP table would have created the name with the default policy; then it creates, bootstraps,
//! binds and registers the IPCP tables in file order, each as create → bootstrap → autobind →
//! reg (see `server::boot`). It refuses, where the reference silently ignores: `reg` or
//! `autobind` in a table without `bootstrap` (the reference stops after creating the IPCP),
//! `autobind = false` (in the reference the key's mere presence binds), and two IPCP tables
//! with one IPCP name. The first failure stops the IRMd, which then stops every IPCP it started.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use o7s_proto::dix::DEFAULT_ETHERTYPE;
use o7s_proto::irm::{
    EthConfig, EthMode, HashAlgo, IpcpConfig, IpcpType, IpcpTypeConfig, LbPolicy,
};
use serde::Deserialize;
use toml::Spanned;

use crate::registry::{Registry, check_name};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or an unknown table or key, or a value of the wrong type.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's error: names the key and the line.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range or malformed.
    #[error("{key}: {reason}")]
    Invalid {
        /// The key, as `table.entity.key`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Valid, but not implemented by this IRMd yet.
    #[error("not supported yet: {key}")]
    NotSupported {
        /// The key, as `table.entity[.key]`.
        key: String,
    },
    /// Valid, but applying it failed (an IPCP could not be created, bootstrapped, bound or
    /// could not register a name).
    #[error("{key}: {reason}")]
    Apply {
        /// The table or key being applied, as `table.entity[.key]`.
        key: String,
        /// What failed, with the IPCP's or the registry's own words.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The whole file: one table per kind of entity, each keyed by the entity's name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[name.X]`.
    #[serde(default)]
    pub name: BTreeMap<String, NameSection>,
    /// `[local.X]` (spanned: tables are applied in file order).
    #[serde(default)]
    pub local: BTreeMap<String, Spanned<LocalSection>>,
    /// `[eth-llc.X]`.
    #[serde(default, rename = "eth-llc")]
    pub eth_llc: BTreeMap<String, EthLlcSection>,
    /// `[eth-dix.X]` (spanned: tables are applied in file order).
    #[serde(default, rename = "eth-dix")]
    pub eth_dix: BTreeMap<String, Spanned<EthDixSection>>,
    /// `[udp4.X]`.
    #[serde(default)]
    pub udp4: BTreeMap<String, Udp4Section>,
    /// `[udp6.X]`.
    #[serde(default)]
    pub udp6: BTreeMap<String, Udp6Section>,
    /// `[broadcast.X]`.
    #[serde(default)]
    pub broadcast: BTreeMap<String, BroadcastSection>,
    /// `[unicast.X]`.
    #[serde(default)]
    pub unicast: BTreeMap<String, UnicastSection>,
}

/// `[name.X]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameSection {
    /// Programs to bind (absolute paths).
    #[serde(default)]
    pub prog: Vec<String>,
    /// Parallel to `prog`: the program at the same index is bound with auto-start and these
    /// space-separated arguments.
    pub args: Option<Vec<String>>,
    /// `"spill"` (default) or `"round-robin"`.
    pub lb: Option<String>,
    /// Not supported yet.
    pub server_enc_file: Option<PathBuf>,
    /// Not supported yet.
    pub server_crt_file: Option<PathBuf>,
    /// Not supported yet.
    pub server_key_file: Option<PathBuf>,
    /// Not supported yet.
    pub client_enc_file: Option<PathBuf>,
    /// Not supported yet.
    pub client_crt_file: Option<PathBuf>,
    /// Not supported yet.
    pub client_key_file: Option<PathBuf>,
}

/// Declares an IPCP table: the keys every type has, plus its own.
macro_rules! ipcp_section {
    ($(#[$doc:meta])* $name:ident { $($(#[$fattr:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Bootstrap as first member of this layer.
            pub bootstrap: Option<String>,
            /// Enrol via this destination.
            pub enrol: Option<String>,
            /// Bind the IPCP to its name and its layer's name (presence counts).
            pub autobind: Option<bool>,
            /// Names to register in the IPCP.
            pub reg: Option<Vec<String>>,
            /// Destinations to connect to after enrolment.
            pub conn: Option<Vec<String>>,
            $($(#[$fattr])* pub $field: $ty,)*
        }
    };
}

ipcp_section!(
    /// `[local.X]`.
    LocalSection {
        /// Directory hash.
        hash: Option<String>,
    }
);
ipcp_section!(
    /// `[eth-llc.X]`.
    EthLlcSection {
        /// Directory hash.
        hash: Option<String>,
        /// Interface (required).
        dev: Option<String>,
    }
);
ipcp_section!(
    /// `[eth-dix.X]`.
    EthDixSection {
        /// Directory hash.
        hash: Option<String>,
        /// Interface (required).
        dev: Option<String>,
        /// EtherType, default 0xA000.
        ethertype: Option<i64>,
        /// o7s extension: the data path (`auto`, `xdp`, `native`, `generic`, `packet`).
        mode: Option<String>,
    }
);
ipcp_section!(
    /// `[udp4.X]`.
    Udp4Section {
        /// Address (required).
        ip: Option<String>,
        /// Port, default 3435.
        port: Option<i64>,
        /// DDNS server.
        dns: Option<String>,
    }
);
ipcp_section!(
    /// `[udp6.X]`.
    Udp6Section {
        /// Address (required).
        ip: Option<String>,
        /// Port, default 3435.
        port: Option<i64>,
        /// DDNS server.
        dns: Option<String>,
    }
);
ipcp_section!(
    /// `[broadcast.X]`.
    BroadcastSection {}
);
ipcp_section!(
    /// `[unicast.X]`.
    UnicastSection {
        /// Directory hash.
        hash: Option<String>,
        /// Address size (4).
        addr_size: Option<i64>,
        /// Endpoint id size (8).
        eid_size: Option<i64>,
        /// Max TTL (60).
        max_ttl: Option<i64>,
        /// `"flat"`.
        #[serde(rename = "addr-auth")]
        addr_auth: Option<String>,
        /// `"link-state"`, `"lfa"` or `"ecmp"`.
        routing: Option<String>,
        /// Link-state recalculation period, s.
        ls_t_recalc: Option<i64>,
        /// Link-state update period, s.
        ls_t_update: Option<i64>,
        /// Link-state timeout, s.
        ls_t_timeo: Option<i64>,
        /// `"none"` or `"lfa"` (sic, the reference's spelling of mb-ecn).
        congestion: Option<String>,
        /// `"DHT"` or `"dht"`.
        directory: Option<String>,
        /// DHT alpha (1..=10).
        dht_alpha: Option<i64>,
        /// DHT k (1..=20).
        dht_k: Option<i64>,
        /// DHT expiry, s (10..=86400).
        dht_t_expire: Option<i64>,
        /// DHT refresh, s (3..=3600).
        dht_t_refresh: Option<i64>,
        /// DHT replication, s (3..=3600).
        dht_t_replicate: Option<i64>,
    }
);

fn hash_of(key: &str, hash: Option<&String>) -> Result<HashAlgo, ConfigError> {
    match hash.map(String::as_str) {
        None | Some("SHA3_256") => Ok(HashAlgo::Sha3_256),
        Some("SHA3_224") => Ok(HashAlgo::Sha3_224),
        Some("SHA3_384") => Ok(HashAlgo::Sha3_384),
        Some("SHA3_512") => Ok(HashAlgo::Sha3_512),
        Some(other) => Err(invalid(
            format!("{key}.hash"),
            format!("{other:?} is not SHA3_224, SHA3_256, SHA3_384 or SHA3_512"),
        )),
    }
}

fn check_hash(key: &str, hash: Option<&String>) -> Result<(), ConfigError> {
    hash_of(key, hash).map(drop)
}

fn mode_of(key: &str, mode: Option<&String>) -> Result<EthMode, ConfigError> {
    match mode.map(String::as_str) {
        None | Some("auto") => Ok(EthMode::Auto),
        Some("xdp") => Ok(EthMode::Xdp),
        Some("native") => Ok(EthMode::Native),
        Some("generic") => Ok(EthMode::Generic),
        Some("packet") => Ok(EthMode::Packet),
        Some(other) => Err(invalid(
            format!("{key}.mode"),
            format!("{other:?} is not auto, xdp, native, generic or packet"),
        )),
    }
}

fn check_range(key: &str, v: Option<i64>, lo: i64, hi: i64) -> Result<(), ConfigError> {
    match v {
        Some(v) if !(lo..=hi).contains(&v) => {
            Err(invalid(key, format!("{v} is outside {lo}..={hi}")))
        }
        _ => Ok(()),
    }
}

fn check_one_of(key: &str, v: Option<&String>, allowed: &[&str]) -> Result<(), ConfigError> {
    match v {
        Some(v) if !allowed.contains(&v.as_str()) => {
            Err(invalid(key, format!("{v:?} is not one of {allowed:?}")))
        }
        _ => Ok(()),
    }
}

fn check_dev(key: &str, dev: Option<&String>) -> Result<(), ConfigError> {
    match dev {
        None => Err(invalid(format!("{key}.dev"), "required")),
        Some(d) if d.is_empty() || d.len() > 255 => {
            Err(invalid(format!("{key}.dev"), "1 to 255 characters"))
        }
        Some(_) => Ok(()),
    }
}

fn check_ip<T: std::str::FromStr>(key: &str, v: Option<&String>) -> Result<(), ConfigError> {
    match v {
        Some(s) if s.parse::<T>().is_err() => Err(invalid(key, format!("{s:?} is not an address"))),
        _ => Ok(()),
    }
}

/// One `[local.X]` or `[eth-dix.X]` table, checked and ready to apply: what the IRMd does for
/// it, in this order (see `server::boot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpcpPlan {
    /// The table, as `local.X`: what errors name.
    pub key: String,
    /// The IPCP's name (`X`).
    pub name: String,
    /// Its type.
    pub ipcp_type: IpcpType,
    /// `bootstrap`: the layer it founds, with its hash and (eth-dix) device settings.
    pub bootstrap: Option<IpcpConfig>,
    /// `autobind`: bind the IPCP process to its name and its layer's name.
    pub autobind: bool,
    /// `reg`: names to create if missing and register in the IPCP, in order.
    pub reg: Vec<String>,
}

/// The keys every IPCP table has, checked; `Ok(None)` without `bootstrap`.
fn common_keys(
    key: &str,
    name: &str,
    bootstrap: Option<&String>,
    enrol: Option<&String>,
    autobind: Option<bool>,
    reg: Option<&Vec<String>>,
    conn: Option<&Vec<String>>,
) -> Result<Option<String>, ConfigError> {
    check_name("IPCP name", name).map_err(|r| invalid(key, r.message))?;
    if enrol.is_some() {
        return Err(ConfigError::NotSupported {
            key: format!("{key}.enrol"),
        });
    }
    if conn.is_some() {
        return Err(ConfigError::NotSupported {
            key: format!("{key}.conn"),
        });
    }
    if autobind == Some(false) {
        return Err(invalid(
            format!("{key}.autobind"),
            "false would bind anyway (the reference binds when the key is present, whatever \
             its value): remove the key instead",
        ));
    }
    for n in reg.into_iter().flatten() {
        check_name("name", n).map_err(|r| invalid(format!("{key}.reg"), r.message))?;
    }
    let Some(layer) = bootstrap else {
        let needs = if reg.is_some() {
            Some("reg")
        } else if autobind.is_some() {
            Some("autobind")
        } else {
            None
        };
        if let Some(k) = needs {
            return Err(invalid(
                format!("{key}.{k}"),
                "needs `bootstrap = \"<layer>\"` in the same table (an IPCP in no layer has \
                 nothing to register in or bind to)",
            ));
        }
        return Ok(None);
    };
    check_name("layer name", layer).map_err(|r| invalid(format!("{key}.bootstrap"), r.message))?;
    Ok(Some(layer.clone()))
}

impl Config {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses and checks a file's text (errors name the file as `irmd.conf`).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::from("irmd.conf"),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value, then refuses what is not implemented yet.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, s) in &self.name {
            let key = format!("name.{name}");
            check_name("name", name).map_err(|r| invalid(&key, r.message))?;
            lb_of(&key, s.lb.as_deref())?;
            for p in &s.prog {
                if !Path::new(p).is_absolute() {
                    return Err(invalid(
                        format!("{key}.prog"),
                        format!("{p:?} is not an absolute path"),
                    ));
                }
            }
            if let Some(args) = &s.args
                && args.len() > s.prog.len()
            {
                return Err(invalid(
                    format!("{key}.args"),
                    format!("{} entries for {} programs", args.len(), s.prog.len()),
                ));
            }
            let files = [
                ("server_enc_file", &s.server_enc_file),
                ("server_crt_file", &s.server_crt_file),
                ("server_key_file", &s.server_key_file),
                ("client_enc_file", &s.client_enc_file),
                ("client_crt_file", &s.client_crt_file),
                ("client_key_file", &s.client_key_file),
            ];
            if let Some((k, _)) = files.iter().find(|(_, v)| v.is_some()) {
                return Err(ConfigError::NotSupported {
                    key: format!("{key}.{k}"),
                });
            }
        }
        let mut unsupported: Vec<String> = Vec::new();
        for (n, s) in &self.eth_llc {
            let key = format!("eth-llc.{n}");
            check_hash(&key, s.hash.as_ref())?;
            check_dev(&key, s.dev.as_ref())?;
            unsupported.push(key);
        }
        for (n, s) in &self.udp4 {
            let key = format!("udp4.{n}");
            if s.ip.is_none() {
                return Err(invalid(format!("{key}.ip"), "required"));
            }
            check_ip::<Ipv4Addr>(&format!("{key}.ip"), s.ip.as_ref())?;
            check_ip::<Ipv4Addr>(&format!("{key}.dns"), s.dns.as_ref())?;
            check_range(&format!("{key}.port"), s.port, 1, 65535)?;
            unsupported.push(key);
        }
        for (n, s) in &self.udp6 {
            let key = format!("udp6.{n}");
            if s.ip.is_none() {
                return Err(invalid(format!("{key}.ip"), "required"));
            }
            check_ip::<Ipv6Addr>(&format!("{key}.ip"), s.ip.as_ref())?;
            check_ip::<Ipv6Addr>(&format!("{key}.dns"), s.dns.as_ref())?;
            check_range(&format!("{key}.port"), s.port, 1, 65535)?;
            unsupported.push(key);
        }
        for n in self.broadcast.keys() {
            unsupported.push(format!("broadcast.{n}"));
        }
        for (n, s) in &self.unicast {
            let key = format!("unicast.{n}");
            let k = |f: &str| format!("{key}.{f}");
            check_hash(&key, s.hash.as_ref())?;
            check_range(&k("addr_size"), s.addr_size, 4, 4)?;
            check_range(&k("eid_size"), s.eid_size, 8, 8)?;
            check_range(&k("max_ttl"), s.max_ttl, 1, 255)?;
            check_one_of(&k("addr-auth"), s.addr_auth.as_ref(), &["flat"])?;
            check_one_of(
                &k("routing"),
                s.routing.as_ref(),
                &["link-state", "lfa", "ecmp"],
            )?;
            check_one_of(&k("congestion"), s.congestion.as_ref(), &["none", "lfa"])?;
            check_one_of(&k("directory"), s.directory.as_ref(), &["DHT", "dht"])?;
            check_range(&k("ls_t_recalc"), s.ls_t_recalc, 1, i64::from(u32::MAX))?;
            check_range(&k("ls_t_update"), s.ls_t_update, 1, i64::from(u32::MAX))?;
            check_range(&k("ls_t_timeo"), s.ls_t_timeo, 1, i64::from(u32::MAX))?;
            check_range(&k("dht_alpha"), s.dht_alpha, 1, 10)?;
            check_range(&k("dht_k"), s.dht_k, 1, 20)?;
            check_range(&k("dht_t_expire"), s.dht_t_expire, 10, 86400)?;
            check_range(&k("dht_t_refresh"), s.dht_t_refresh, 3, 3600)?;
            check_range(&k("dht_t_replicate"), s.dht_t_replicate, 3, 3600)?;
            unsupported.push(key);
        }
        // The supported tables' own keys, before any unsupported table is refused.
        self.ipcps()?;
        if let Some(key) = unsupported.into_iter().next() {
            return Err(ConfigError::NotSupported { key });
        }
        Ok(())
    }

    /// The `[local.X]` and `[eth-dix.X]` tables in file order, checked, as the IRMd applies
    /// them. (Other IPCP types are refused by [`Config::validate`].)
    pub fn ipcps(&self) -> Result<Vec<IpcpPlan>, ConfigError> {
        let mut plans: Vec<(usize, IpcpPlan)> = Vec::new();
        for (n, s) in &self.local {
            let key = format!("local.{n}");
            let at = s.span().start;
            let s = s.get_ref();
            let hash = hash_of(&key, s.hash.as_ref())?;
            let layer = common_keys(
                &key,
                n,
                s.bootstrap.as_ref(),
                s.enrol.as_ref(),
                s.autobind,
                s.reg.as_ref(),
                s.conn.as_ref(),
            )?;
            let plan = IpcpPlan {
                key,
                name: n.clone(),
                ipcp_type: IpcpType::Local,
                bootstrap: layer.map(|layer| IpcpConfig {
                    layer,
                    hash: hash.into(),
                    type_config: None,
                }),
                autobind: s.autobind.is_some(),
                reg: s.reg.clone().unwrap_or_default(),
            };
            plans.push((at, plan));
        }
        for (n, s) in &self.eth_dix {
            let key = format!("eth-dix.{n}");
            let at = s.span().start;
            let s = s.get_ref();
            let hash = hash_of(&key, s.hash.as_ref())?;
            check_dev(&key, s.dev.as_ref())?;
            check_range(&format!("{key}.ethertype"), s.ethertype, 0x0600, 0xfffe)?;
            let mode = mode_of(&key, s.mode.as_ref())?;
            let ethertype = s
                .ethertype
                .and_then(|e| u32::try_from(e).ok())
                .unwrap_or(u32::from(DEFAULT_ETHERTYPE));
            let layer = common_keys(
                &key,
                n,
                s.bootstrap.as_ref(),
                s.enrol.as_ref(),
                s.autobind,
                s.reg.as_ref(),
                s.conn.as_ref(),
            )?;
            let dev = s.dev.clone().unwrap_or_default();
            let plan = IpcpPlan {
                key,
                name: n.clone(),
                ipcp_type: IpcpType::EthDix,
                bootstrap: layer.map(|layer| IpcpConfig {
                    layer,
                    hash: hash.into(),
                    type_config: Some(IpcpTypeConfig::Eth(EthConfig {
                        dev,
                        ethertype,
                        mode: mode.into(),
                    })),
                }),
                autobind: s.autobind.is_some(),
                reg: s.reg.clone().unwrap_or_default(),
            };
            plans.push((at, plan));
        }
        plans.sort_by_key(|(at, _)| *at);
        let plans: Vec<IpcpPlan> = plans.into_iter().map(|(_, p)| p).collect();
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for p in &plans {
            if let Some(first) = seen.insert(&p.name, &p.key) {
                return Err(invalid(
                    &p.key,
                    format!("IPCP name {:?} is taken by {first} already", p.name),
                ));
            }
        }
        Ok(plans)
    }

    /// Creates the names and binds their programs. The configuration was validated.
    pub fn apply(&self, registry: &mut Registry) -> Result<(), ConfigError> {
        for (name, s) in &self.name {
            let key = format!("name.{name}");
            let lb = lb_of(&key, s.lb.as_deref())?;
            registry
                .create_name(name, lb.into())
                .map_err(|r| invalid(&key, r.message))?;
            for (i, prog) in s.prog.iter().enumerate() {
                let args = s.args.as_ref().and_then(|a| a.get(i));
                let argv: Vec<String> = args
                    .map(|a| a.split_whitespace().map(str::to_owned).collect())
                    .unwrap_or_default();
                registry
                    .bind_program(name, prog, &argv, args.is_some())
                    .map_err(|r| invalid(format!("{key}.prog"), r.message))?;
            }
        }
        Ok(())
    }
}

fn lb_of(key: &str, lb: Option<&str>) -> Result<LbPolicy, ConfigError> {
    match lb {
        None | Some("spill") => Ok(LbPolicy::Spillover),
        Some("round-robin") => Ok(LbPolicy::RoundRobin),
        Some(other) => Err(invalid(
            format!("{key}.lb"),
            format!("{other:?} is not \"spill\" or \"round-robin\""),
        )),
    }
}

/// Fuzz oracle, shared by the `config` target in `irmd/fuzz` and the property tests: any text
/// either is refused with an error that says something, or is a configuration whose plan lists
/// every `[local.X]` and `[eth-dix.X]` once, in file order, that holds no table or key this
/// IRMd refuses, and whose names apply to an empty registry. Not a stable API.
///
/// # Panics
/// On any violation of that invariant (or a panic of the parser itself): any panic is a bug.
#[doc(hidden)]
pub fn fuzz_oracle(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::parse(text) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "an error that says nothing");
            return;
        }
    };
    let plans = match config.ipcps() {
        Ok(p) => p,
        Err(e) => panic!("validated, but its plan fails: {e}"),
    };
    assert_eq!(plans.len(), config.local.len() + config.eth_dix.len());
    let mut last = None;
    for p in &plans {
        let (table, at) = match p.ipcp_type {
            IpcpType::Local => ("local", config.local.get(&p.name).map(|s| s.span().start)),
            IpcpType::EthDix => (
                "eth-dix",
                config.eth_dix.get(&p.name).map(|s| s.span().start),
            ),
            other => panic!("a plan of type {other:?}"),
        };
        assert_eq!(p.key, format!("{table}.{}", p.name));
        let at = at.unwrap_or_else(|| panic!("{} is not in its table", p.key));
        assert!(
            last.is_none_or(|l| l <= at),
            "{} is out of file order",
            p.key
        );
        last = Some(at);
        assert!(p.bootstrap.is_some() || (p.reg.is_empty() && !p.autobind));
    }
    assert!(
        config.eth_llc.is_empty()
            && config.udp4.is_empty()
            && config.udp6.is_empty()
            && config.broadcast.is_empty()
            && config.unicast.is_empty(),
        "an unsupported IPCP table was accepted"
    );
    let mut registry = Registry::new();
    if let Err(e) = config.apply(&mut registry) {
        panic!("validated, but its names do not apply: {e}");
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text).map_err(|e| e.to_string())
    }

    fn plans(text: &str) -> Vec<IpcpPlan> {
        let c = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        c.ipcps().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn names_apply() {
        let c = parse(
            r#"
            [name.oping]
            prog = ["/usr/bin/oping", "/usr/bin/oecho"]
            args = ["--listen -q"]
            lb = "round-robin"
            [name.other]
            "#,
        )
        .unwrap();
        let mut r = Registry::new();
        c.apply(&mut r).unwrap();
        let programs = r.list_programs().programs;
        assert_eq!(programs.len(), 2);
        assert_eq!(programs[0].program, "/usr/bin/oecho");
        assert!(!programs[0].auto);
        assert_eq!(programs[1].args, ["--listen", "-q"]);
        assert!(programs[1].auto);
        assert_eq!(r.name("oping").unwrap().lb, LbPolicy::RoundRobin);
        assert_eq!(r.name("other").unwrap().lb, LbPolicy::Spillover);
    }

    #[test]
    fn ipcp_tables_in_file_order_with_the_reference_defaults() {
        let p = plans(
            r#"
            eth-dix.eta = { dev = "veth1", bootstrap = "e2", hash = "SHA3_512", ethertype = 0xA001, mode = "native" }
            [eth-dix.zeta]
            bootstrap = "ethl"
            dev = "veth0"
            reg = ["oping", "operf"]
            [local.beta]
            [name.oping]
            [local.alpha]
            bootstrap = "loc"
            autobind = true
            "#,
        );
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["eth-dix.eta", "eth-dix.zeta", "local.beta", "local.alpha"]
        );
        assert_eq!(
            p[1].bootstrap,
            Some(IpcpConfig {
                layer: "ethl".into(),
                hash: HashAlgo::Sha3_256.into(),
                type_config: Some(IpcpTypeConfig::Eth(EthConfig {
                    dev: "veth0".into(),
                    ethertype: 0xA000,
                    mode: EthMode::Auto.into(),
                })),
            })
        );
        assert_eq!(p[1].reg, ["oping", "operf"]);
        assert!(!p[1].autobind);
        assert_eq!(p[2].ipcp_type, IpcpType::Local);
        assert_eq!(p[2].bootstrap, None, "no bootstrap: only created");
        assert!(p[3].autobind);
        assert_eq!(
            p[3].bootstrap,
            Some(IpcpConfig {
                layer: "loc".into(),
                hash: HashAlgo::Sha3_256.into(),
                type_config: None,
            })
        );
        let Some(IpcpTypeConfig::Eth(eth)) =
            p[0].bootstrap.as_ref().and_then(|b| b.type_config.clone())
        else {
            panic!("eth config: {:?}", p[0]);
        };
        assert_eq!((eth.ethertype, eth.mode()), (0xA001, EthMode::Native));
        assert_eq!(
            p[0].bootstrap.as_ref().map(|b| b.hash()),
            Some(HashAlgo::Sha3_512)
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[bogus.x]\n").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e = parse("[name.a]\nfoo = 1\n").unwrap_err();
        assert!(e.contains("foo"), "{e}");
        let e = parse("[name.a]\nlb = \"random\"\n").unwrap_err();
        assert!(e.contains("name.a.lb"), "{e}");
        let e = parse("[name.a]\nserver_crt_file = \"/x\"\n").unwrap_err();
        assert_eq!(e, "not supported yet: name.a.server_crt_file");
        let e = parse("[eth-dix.e]\ndev = \"veth0\"\nethertype = 0xffff\n").unwrap_err();
        assert!(e.contains("eth-dix.e.ethertype"), "{e}");
        let e = parse("[eth-dix.e]\nbootstrap = \"l\"\n").unwrap_err();
        assert!(e.contains("eth-dix.e.dev: required"), "{e}");
        let e =
            parse("[eth-dix.e]\ndev = \"v\"\nbootstrap = \"l\"\nmode = \"fast\"\n").unwrap_err();
        assert!(e.starts_with("eth-dix.e.mode: \"fast\" is not"), "{e}");
        let e = parse("[local.l]\ndev = \"veth0\"\n").unwrap_err();
        assert!(e.contains("dev"), "local has no dev: {e}");
        let e = parse("[local.l]\nmode = \"xdp\"\n").unwrap_err();
        assert!(e.contains("mode"), "local has no mode: {e}");
        let e = parse("[local.l]\nhash = \"MD5\"\n").unwrap_err();
        assert!(e.starts_with("local.l.hash: "), "{e}");
        let e = parse("[local.l]\nbootstrap = \"\"\n").unwrap_err();
        assert!(e.starts_with("local.l.bootstrap: empty layer name"), "{e}");
        let e = parse("[local.l]\nbootstrap = \"x\"\nreg = [\"\"]\n").unwrap_err();
        assert!(e.starts_with("local.l.reg: empty name"), "{e}");
        let e = parse("[local.l]\nreg = [\"oping\"]\n").unwrap_err();
        assert!(e.starts_with("local.l.reg: needs `bootstrap"), "{e}");
        let e = parse("[local.l]\nautobind = true\n").unwrap_err();
        assert!(e.starts_with("local.l.autobind: needs `bootstrap"), "{e}");
        let e = parse("[local.l]\nbootstrap = \"x\"\nautobind = false\n").unwrap_err();
        assert!(
            e.starts_with("local.l.autobind: false would bind anyway"),
            "{e}"
        );
        let e = parse("[local.l]\nenrol = \"x\"\n").unwrap_err();
        assert_eq!(e, "not supported yet: local.l.enrol");
        let e = parse("[eth-dix.e]\ndev = \"v\"\nbootstrap = \"x\"\nconn = [\"y\"]\n").unwrap_err();
        assert_eq!(e, "not supported yet: eth-dix.e.conn");
        let e = parse("[local.a]\n[eth-dix.a]\ndev = \"v\"\n").unwrap_err();
        assert_eq!(e, "eth-dix.a: IPCP name \"a\" is taken by local.a already");
        let e = parse("[unicast.u]\ndev = \"veth0\"\n").unwrap_err();
        assert!(e.contains("dev"), "unicast has no dev: {e}");
        let e = parse("[unicast.u]\ndht_k = 50\n").unwrap_err();
        assert!(e.contains("unicast.u.dht_k"), "{e}");
        for (table, text) in [
            ("unicast.u", "[unicast.u]\nbootstrap = \"l\"\n"),
            ("broadcast.b", "[broadcast.b]\n"),
            ("udp4.u", "[udp4.u]\nip = \"10.0.0.1\"\n"),
            ("udp6.u", "[udp6.u]\nip = \"fd00::1\"\n"),
            ("eth-llc.e", "[eth-llc.e]\ndev = \"veth0\"\n"),
        ] {
            assert_eq!(
                parse(text).unwrap_err(),
                format!("not supported yet: {table}")
            );
        }
    }

    #[test]
    fn a_missing_file_is_a_clear_error() {
        let path = Path::new("/nonexistent/o7s/irmd.conf");
        let e = Config::load(path).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read /nonexistent/o7s/irmd.conf: "),
            "{e}"
        );
        assert!(e.contains("No such file"), "{e}");
    }

    #[test]
    fn the_oracle_holds_on_samples() {
        for text in [
            "",
            "[local.a]\nbootstrap = \"l\"\nreg = [\"x\"]\n[name.x]\nprog = [\"/bin/true\"]\nargs = [\"-l\"]\n",
            "[eth-dix.e]\ndev = \"v\"\n[local.l]\n",
            "[unicast.u]\n",
            "[local]\nx = 1\n",
            "local = 3\n",
        ] {
            fuzz_oracle(text.as_bytes());
        }
    }

    #[test]
    fn the_oracle_holds_on_the_fuzz_seeds() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/config");
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/config") {
            let path = entry.expect("seed").path();
            let text = std::fs::read_to_string(&path).expect("seed text");
            fuzz_oracle(text.as_bytes());
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            seen.push((name.unwrap_or_default(), Config::parse(&text).is_ok()));
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                ("eth-dix.toml".to_owned(), true),
                ("local.toml".to_owned(), true),
                ("mixed.toml".to_owned(), false),
                ("unicast.toml".to_owned(), false),
            ]
        );
    }

    /// One IPCP table of a generated file: its type, name and whether it bootstraps.
    fn table() -> impl Strategy<Value = (bool, String, bool)> {
        (any::<bool>(), "[a-z][a-z0-9]{0,6}", any::<bool>())
    }

    proptest! {
        #[test]
        fn plans_follow_file_order(tables in proptest::collection::vec(table(), 0..8)) {
            let mut text = String::new();
            let mut want = Vec::new();
            let mut names = std::collections::BTreeSet::new();
            for (i, (eth, name, boot)) in tables.into_iter().enumerate() {
                if !names.insert(name.clone()) {
                    continue;
                }
                let kind = if eth { "eth-dix" } else { "local" };
                text.push_str(&format!("[{kind}.{name}]\n"));
                if eth {
                    text.push_str(&format!("dev = \"veth{i}\"\n"));
                }
                if boot {
                    text.push_str(&format!("bootstrap = \"layer{i}\"\nreg = [\"n{i}\"]\n"));
                }
                text.push_str(&format!("[name.n{i}]\n"));
                want.push(format!("{kind}.{name}"));
            }
            let got: Vec<String> = plans(&text).into_iter().map(|p| p.key).collect();
            prop_assert_eq!(got, want);
            fuzz_oracle(text.as_bytes());
        }

        #[test]
        fn any_text_is_accepted_or_refused_without_panicking(text in "\\PC{0,200}") {
            fuzz_oracle(text.as_bytes());
        }

        #[test]
        fn toml_shaped_text_too(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just("[local.a]".to_owned()),
                    Just("[eth-dix.e]".to_owned()),
                    Just("[name.n]".to_owned()),
                    Just("[unicast.u]".to_owned()),
                    "(bootstrap|dev|hash|mode|ethertype|reg|autobind|enrol|lb|prog|args) = (\"[a-zA-Z0-9_]{0,6}\"|[0-9]{1,6}|true|false|\\[\"[a-z]{0,3}\"\\])",
                ],
                0..12,
            )
        ) {
            fuzz_oracle(lines.join("\n").as_bytes());
        }
    }
}
