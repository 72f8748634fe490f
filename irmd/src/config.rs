//! `irmd.conf`: the reference's TOML configuration, same tables and keys.
//!
//! Parsing is strict: an unknown table or key is an error that names it (serde's
//! `deny_unknown_fields`), and every value is checked as the reference checks it. What this
//! IRMd cannot do yet is refused with `not supported yet: <key>` rather than ignored, so a
//! configuration never half-applies silently. Today that is the security file keys of
//! `[name.X]` and every IPCP table (IPCPs cannot be spawned yet).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use o7s_proto::irm::LbPolicy;
use serde::Deserialize;

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
    /// `[local.X]`.
    #[serde(default)]
    pub local: BTreeMap<String, LocalSection>,
    /// `[eth-llc.X]`.
    #[serde(default, rename = "eth-llc")]
    pub eth_llc: BTreeMap<String, EthLlcSection>,
    /// `[eth-dix.X]`.
    #[serde(default, rename = "eth-dix")]
    pub eth_dix: BTreeMap<String, EthDixSection>,
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

fn check_hash(key: &str, hash: Option<&String>) -> Result<(), ConfigError> {
    match hash.map(String::as_str) {
        None | Some("SHA3_224" | "SHA3_256" | "SHA3_384" | "SHA3_512") => Ok(()),
        Some(other) => Err(invalid(
            format!("{key}.hash"),
            format!("{other:?} is not SHA3_224, SHA3_256, SHA3_384 or SHA3_512"),
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

impl Config {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
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
        let mut ipcps: Vec<String> = Vec::new();
        for (n, s) in &self.local {
            let key = format!("local.{n}");
            check_hash(&key, s.hash.as_ref())?;
            ipcps.push(key);
        }
        for (n, s) in &self.eth_llc {
            let key = format!("eth-llc.{n}");
            check_hash(&key, s.hash.as_ref())?;
            check_dev(&key, s.dev.as_ref())?;
            ipcps.push(key);
        }
        for (n, s) in &self.eth_dix {
            let key = format!("eth-dix.{n}");
            check_hash(&key, s.hash.as_ref())?;
            check_dev(&key, s.dev.as_ref())?;
            check_range(&format!("{key}.ethertype"), s.ethertype, 0x0600, 0xfffe)?;
            ipcps.push(key);
        }
        for (n, s) in &self.udp4 {
            let key = format!("udp4.{n}");
            if s.ip.is_none() {
                return Err(invalid(format!("{key}.ip"), "required"));
            }
            check_ip::<Ipv4Addr>(&format!("{key}.ip"), s.ip.as_ref())?;
            check_ip::<Ipv4Addr>(&format!("{key}.dns"), s.dns.as_ref())?;
            check_range(&format!("{key}.port"), s.port, 1, 65535)?;
            ipcps.push(key);
        }
        for (n, s) in &self.udp6 {
            let key = format!("udp6.{n}");
            if s.ip.is_none() {
                return Err(invalid(format!("{key}.ip"), "required"));
            }
            check_ip::<Ipv6Addr>(&format!("{key}.ip"), s.ip.as_ref())?;
            check_ip::<Ipv6Addr>(&format!("{key}.dns"), s.dns.as_ref())?;
            check_range(&format!("{key}.port"), s.port, 1, 65535)?;
            ipcps.push(key);
        }
        for n in self.broadcast.keys() {
            ipcps.push(format!("broadcast.{n}"));
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
            ipcps.push(key);
        }
        if let Some(key) = ipcps.into_iter().next() {
            return Err(ConfigError::NotSupported { key });
        }
        Ok(())
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

#[cfg(test)]
mod test {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
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
        let e = parse("[eth-dix.e]\ndev = \"veth0\"\nbootstrap = \"l\"\n").unwrap_err();
        assert_eq!(e, "not supported yet: eth-dix.e");
        let e = parse("[unicast.u]\ndev = \"veth0\"\n").unwrap_err();
        assert!(e.contains("dev"), "unicast has no dev: {e}");
        let e = parse("[unicast.u]\ndht_k = 50\n").unwrap_err();
        assert!(e.contains("unicast.u.dht_k"), "{e}");
    }
}
