//! `irm`: the operator CLI of the IRMd, with the reference's grammar.
//!
//! `irm [--rundir DIR] <object> <command> [args]`: objects `ipcp`, `name`, `bind`, `unbind`,
//! plus our `flow`. Every object, command, option keyword and enumerated value may be
//! abbreviated to any *unambiguous* prefix (`irm n c foo` is `irm name create foo`); an exact
//! match always wins, and an ambiguous prefix is an error naming the candidates (the reference
//! takes the first table entry instead). Options are `keyword value` pairs in any order.
//!
//! [`parse`] is pure (no IRMd, no file system); [`run`] carries a parsed [`Command`] out
//! against an IRMd and returns what to print.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use o7s::irm::{Client, ClientError};
use o7s_proto::irm::{
    BindProcess, BindProgram, BootstrapIpcp, CreateIpcp, CreateName, DestroyIpcp, DestroyName,
    EndState, ErrorCode, EthConfig, EthMode, HashAlgo, IpcpConfig, IpcpInfo, IpcpSelector,
    IpcpStats, IpcpType, IpcpTypeConfig, LbPolicy, ListFlows, ListIpcps, ListNames, RegisterName,
    RegisterTarget, Request, ResponseKind, UnbindProcess, UnbindProgram, UnregisterName,
};

/// How long `irm` waits for the IRMd to answer one request.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Default EtherType of an eth-dix layer.
pub const DEFAULT_ETHERTYPE: u32 = 0xA000;

// ------------------------------------------------------------------------------------------
// Help texts
// ------------------------------------------------------------------------------------------

/// `irm --help`.
pub const USAGE: &str = "\
Usage: irm [--rundir DIR] <object> <command> [args]

Objects and commands (any unambiguous prefix works: `irm n c foo`):
  ipcp    create | destroy | bootstrap | enroll | connect | disconnect | list | stats
  name    create | destroy | register | unregister | list
  bind    program | process | ipcp
  unbind  program | process | ipcp
  flow    list

`irm <object> --help` and `irm <object> <command> --help` show the grammar.
--rundir DIR (or O7S_RUNDIR) selects the IRMd (default /run/o7s).
Exit status: 0 done, 1 failed, 2 bad command line, 3 not supported (yet).";

const IPCP_USAGE: &str = "\
Usage: irm ipcp <command> [args]
  create     name <name> type <type>
  destroy    name <name>
  bootstrap  name <name> layer <layer> [type <type>] [hash <hash>] [dev <iface>]
             [ethertype <hex>] [mode auto|xdp|native|generic|packet] [autobind]
  enroll     name <name> [layer <layer>] [dst <dst>] [type unicast|broadcast] [autobind]
  connect    name <name> dst <dst> [component dt|mgmt] [qos raw|best|voice|video|data]
  disconnect name <name> dst <dst> [component dt|mgmt]
  list       [type <type>] [name <pattern>] [layer <pattern>]
  stats      <name>
<type> = unicast | broadcast | local | udp4 | udp6 | eth-llc | eth-dix";

const IPCP_CREATE_USAGE: &str = "\
Usage: irm ipcp create name <name> type <type>
<type> = unicast | broadcast | local | udp4 | udp6 | eth-llc | eth-dix";

const IPCP_DESTROY_USAGE: &str = "Usage: irm ipcp destroy name <name>";

const IPCP_BOOTSTRAP_USAGE: &str = "\
Usage: irm ipcp bootstrap name <name> layer <layer> [type <type>] [hash <hash>]
                          [dev <iface>] [ethertype <hex>] [mode auto|xdp|native|generic|packet] [autobind]
  name       an IPCP name, or a pattern with * and ?: every matching IPCP is bootstrapped;
             if none matches, `type` is required and the IPCP is created first
  type       unicast | broadcast | local | udp4 | udp6 | eth-llc | eth-dix
  hash       SHA3_224 | SHA3_256 (default) | SHA3_384 | SHA3_512
  dev        network interface (eth-llc, eth-dix: required)
  ethertype  eth-dix EtherType in hex, 0x0600 <= e < 0xFFFF (default 0xA000)
  mode       eth backend: auto (default) | xdp (native, else generic) | native | generic |
             packet
  autobind   bind the IPCP to its name and to the layer name (unicast, broadcast)
The reference's unicast and udp options (addr, eid, ttl, addr_auth, directory, dht_*,
routing, ls_*, congestion, ip, port, dns) are recognised but not supported yet.";

const IPCP_ENROLL_USAGE: &str = "\
Usage: irm ipcp enroll name <name> [layer <layer>] [dst <dst>] [type unicast|broadcast]
                       [autobind]
(not supported yet: enrolment is for unicast and broadcast IPCPs, which o7s does not have yet)";

const IPCP_CONNECT_USAGE: &str = "\
Usage: irm ipcp connect name <name> dst <dst> [component dt|mgmt]
                        [qos raw|best|voice|video|data]
(not supported yet: connect joins unicast IPCP components, and o7s has no unicast IPCP yet)";

const IPCP_DISCONNECT_USAGE: &str = "\
Usage: irm ipcp disconnect name <name> dst <dst> [component dt|mgmt]
(not supported yet: disconnect is for unicast IPCP components, and o7s has no unicast IPCP yet)";

const IPCP_LIST_USAGE: &str = "\
Usage: irm ipcp list [type <type>] [name <pattern>] [layer <pattern>]";

const IPCP_STATS_USAGE: &str = "Usage: irm ipcp stats <name>";

const NAME_USAGE: &str = "\
Usage: irm name <command> [args]
  create     <name> [lb round-robin|spillover] [sencpath <p>] [scrtpath <p>] [skeypath <p>]
             [cencpath <p>] [ccrtpath <p>] [ckeypath <p>]
  destroy    <name>
  register   <name> (ipcp <pattern> | layer <pattern>)...
  unregister <name> (ipcp <pattern> | layer <pattern>)...
  list       [<pattern>]";

const NAME_CREATE_USAGE: &str = "\
Usage: irm name create <name> [lb round-robin|spillover] [sencpath <p>] [scrtpath <p>]
                       [skeypath <p>] [cencpath <p>] [ccrtpath <p>] [ckeypath <p>]
  lb defaults to round-robin; the paths must exist (they are checked, not sent: the
  IRM protocol carries no security paths).";

const NAME_DESTROY_USAGE: &str = "Usage: irm name destroy <name>";

const NAME_REGISTER_USAGE: &str = "\
Usage: irm name register <name> (ipcp <pattern> | layer <pattern>)...
  at least one ipcp or layer; patterns may use * and ?";

const NAME_UNREGISTER_USAGE: &str = "\
Usage: irm name unregister <name> (ipcp <pattern> | layer <pattern>)...
  at least one ipcp or layer; patterns may use * and ?";

const NAME_LIST_USAGE: &str = "Usage: irm name list [<pattern>]";

const BIND_USAGE: &str = "\
Usage: irm bind <what> ...
  program <program> name <name> [auto] [-- <args>...]
  process <pid> name <name>
  ipcp    <ipcp name> name <name>";

const BIND_PROGRAM_USAGE: &str = "\
Usage: irm bind program <program> name <name> [auto] [-- <args>...]
  <program> is resolved to an absolute path (or searched in PATH) and must be executable;
  auto starts it on demand with the arguments after --.";

const BIND_PROCESS_USAGE: &str = "Usage: irm bind process <pid> name <name>";

const BIND_IPCP_USAGE: &str = "Usage: irm bind ipcp <ipcp name> name <name>";

const UNBIND_USAGE: &str = "\
Usage: irm unbind <what> ...
  program <program> [name <name>]   (without name: forget the program)
  process <pid> [name <name>]       (without name: remove the process)
  ipcp    <ipcp name> name <name>";

const UNBIND_PROGRAM_USAGE: &str = "\
Usage: irm unbind program <program> [name <name>]
  without name: forget the program and all its bindings";

const UNBIND_PROCESS_USAGE: &str = "\
Usage: irm unbind process <pid> [name <name>]
  without name: remove the process from the registry";

const UNBIND_IPCP_USAGE: &str = "Usage: irm unbind ipcp <ipcp name> name <name>";

const FLOW_USAGE: &str = "\
Usage: irm flow <command>
  list    every flow: id, name, both ends (pid, IPCP name if it is one, state), QoS, rings";

const FLOW_LIST_USAGE: &str = "Usage: irm flow list";

// ------------------------------------------------------------------------------------------
// Parsed commands
// ------------------------------------------------------------------------------------------

/// What `irm` was asked to do, with the run directory if given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `--rundir` (else `O7S_RUNDIR`, else the default).
    pub rundir: Option<PathBuf>,
    /// The command.
    pub command: Command,
}

/// A connect/disconnect target component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// Data transfer.
    Dt,
    /// Management.
    Mgmt,
}

/// Everything `ipcp bootstrap` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    /// IPCP name or pattern.
    pub name: String,
    /// Layer name.
    pub layer: String,
    /// Type (required to create a missing IPCP, checked against existing ones).
    pub ipcp_type: Option<IpcpType>,
    /// Directory hash.
    pub hash: HashAlgo,
    /// Ethernet device.
    pub dev: Option<String>,
    /// eth-dix EtherType.
    pub ethertype: Option<u32>,
    /// Ethernet backend.
    pub mode: EthMode,
    /// Bind the IPCP to its name and the layer name.
    pub autobind: bool,
    /// Reference options the IRM protocol cannot carry yet (keyword, value).
    pub unsupported: Vec<(&'static str, String)>,
}

/// One `irm` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Print this help text.
    Help(&'static str),
    /// `ipcp create`.
    IpcpCreate {
        /// Name.
        name: String,
        /// Type.
        ipcp_type: IpcpType,
    },
    /// `ipcp destroy`.
    IpcpDestroy {
        /// Name.
        name: String,
    },
    /// `ipcp bootstrap`.
    IpcpBootstrap(Bootstrap),
    /// `ipcp enroll` (not in the protocol yet).
    IpcpEnroll {
        /// Name.
        name: String,
        /// Layer.
        layer: Option<String>,
        /// Destination (defaults to the layer).
        dst: Option<String>,
        /// Type (default unicast).
        ipcp_type: IpcpType,
        /// Autobind.
        autobind: bool,
    },
    /// `ipcp connect` (not in the protocol yet).
    IpcpConnect {
        /// Name.
        name: String,
        /// Destination.
        dst: String,
        /// Component (`None`: both).
        component: Option<Component>,
        /// QoS cube name.
        qos: Option<String>,
    },
    /// `ipcp disconnect` (not in the protocol yet).
    IpcpDisconnect {
        /// Name.
        name: String,
        /// Destination.
        dst: String,
        /// Component (`None`: both).
        component: Option<Component>,
    },
    /// `ipcp list`.
    IpcpList {
        /// Only this type.
        ipcp_type: Option<IpcpType>,
        /// Only names matching.
        name: Option<String>,
        /// Only layers matching.
        layer: Option<String>,
    },
    /// `ipcp stats`.
    IpcpStats {
        /// Name.
        name: String,
    },
    /// `name create`.
    NameCreate {
        /// Name.
        name: String,
        /// Policy.
        lb: LbPolicy,
        /// Security paths given (keyword, path): checked, not sent.
        paths: Vec<(&'static str, String)>,
    },
    /// `name destroy`.
    NameDestroy {
        /// Name.
        name: String,
    },
    /// `name register`.
    NameRegister {
        /// Name.
        name: String,
        /// IPCP patterns.
        ipcps: Vec<String>,
        /// Layer patterns.
        layers: Vec<String>,
    },
    /// `name unregister`.
    NameUnregister {
        /// Name.
        name: String,
        /// IPCP patterns.
        ipcps: Vec<String>,
        /// Layer patterns.
        layers: Vec<String>,
    },
    /// `name list`.
    NameList {
        /// Only names matching.
        pattern: Option<String>,
    },
    /// `bind program`.
    BindProgram {
        /// Program as given (resolved when run).
        program: String,
        /// Name.
        name: String,
        /// Auto-start.
        auto: bool,
        /// Arguments after `--`.
        args: Vec<String>,
    },
    /// `bind process`.
    BindProcess {
        /// Pid.
        pid: u32,
        /// Name.
        name: String,
    },
    /// `bind ipcp`.
    BindIpcp {
        /// IPCP name.
        ipcp: String,
        /// Name.
        name: String,
    },
    /// `unbind program`.
    UnbindProgram {
        /// Program as given.
        program: String,
        /// Name (`None`: forget the program).
        name: Option<String>,
    },
    /// `unbind process`.
    UnbindProcess {
        /// Pid.
        pid: u32,
        /// Name (`None`: remove the process).
        name: Option<String>,
    },
    /// `unbind ipcp`.
    UnbindIpcp {
        /// IPCP name.
        ipcp: String,
        /// Name.
        name: String,
    },
    /// `flow list`.
    FlowList,
}

/// A bad command line: what is wrong (and what to do), and the grammar of the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    /// What is wrong.
    pub message: String,
    /// The grammar of the command concerned.
    pub usage: &'static str,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n\n{}", self.message, self.usage)
    }
}

impl std::error::Error for UsageError {}

fn usage_err(usage: &'static str, message: impl Into<String>) -> UsageError {
    UsageError {
        message: message.into(),
        usage,
    }
}

// ------------------------------------------------------------------------------------------
// Parsing
// ------------------------------------------------------------------------------------------

fn is_help(word: &str) -> bool {
    matches!(word, "-h" | "--help" | "help")
}

/// Resolves `word` against `table`: an exact match, else the one entry it is a prefix of.
/// Unknown or ambiguous words are errors listing the candidates.
pub fn pick<'a>(
    word: &str,
    table: &[&'a str],
    what: &str,
    usage: &'static str,
) -> Result<&'a str, UsageError> {
    if let Some(exact) = table.iter().find(|t| **t == word) {
        return Ok(exact);
    }
    let candidates: Vec<&'a str> = if word.is_empty() {
        Vec::new()
    } else {
        table
            .iter()
            .copied()
            .filter(|t| t.starts_with(word))
            .collect()
    };
    match candidates.as_slice() {
        [one] => Ok(one),
        [] => Err(usage_err(
            usage,
            format!(
                "unknown {what} {word:?}: expected one of {}",
                table.join(", ")
            ),
        )),
        many => Err(usage_err(
            usage,
            format!(
                "ambiguous {what} {word:?}: it abbreviates {}; type more letters",
                many.join(", ")
            ),
        )),
    }
}

/// Does an option take a value?
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arity {
    Value,
    Flag,
}

/// Parsed `keyword [value]` options, in order (repeats kept).
struct Options {
    list: Vec<(&'static str, Option<String>)>,
    usage: &'static str,
    command: &'static str,
}

impl Options {
    /// Parses `args` as options of `spec`; `Ok(None)` when help was asked for.
    fn parse(
        args: &[String],
        spec: &[(&'static str, Arity)],
        usage: &'static str,
        command: &'static str,
    ) -> Result<Option<Self>, UsageError> {
        let keywords: Vec<&'static str> = spec.iter().map(|(k, _)| *k).collect();
        let mut list = Vec::new();
        let mut i = 0;
        while let Some(word) = args.get(i) {
            if is_help(word) && word != "help" {
                return Ok(None);
            }
            let key = pick(word, &keywords, &format!("option of `{command}`"), usage)?;
            let arity = spec
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(Arity::Flag, |(_, a)| *a);
            match arity {
                Arity::Flag => {
                    list.push((key, None));
                    i += 1;
                }
                Arity::Value => {
                    let Some(value) = args.get(i + 1) else {
                        return Err(usage_err(
                            usage,
                            format!("`{key}` needs a value: `{command} ... {key} <{key}>`"),
                        ));
                    };
                    list.push((key, Some(value.clone())));
                    i += 2;
                }
            }
        }
        Ok(Some(Self {
            list,
            usage,
            command,
        }))
    }

    /// The last value of `key`.
    fn get(&self, key: &str) -> Option<String> {
        self.list
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.clone())
    }

    /// Every value of `key`, in order.
    fn all(&self, key: &str) -> Vec<String> {
        self.list
            .iter()
            .filter(|(k, _)| *k == key)
            .filter_map(|(_, v)| v.clone())
            .collect()
    }

    fn flag(&self, key: &str) -> bool {
        self.list.iter().any(|(k, _)| *k == key)
    }

    fn require(&self, key: &str, hint: &str) -> Result<String, UsageError> {
        self.get(key).ok_or_else(|| {
            usage_err(
                self.usage,
                format!("`{}` needs `{key} {hint}`", self.command),
            )
        })
    }
}

const IPCP_TYPES: [&str; 7] = [
    "unicast",
    "broadcast",
    "local",
    "udp4",
    "udp6",
    "eth-llc",
    "eth-dix",
];

/// The reference's name of an IPCP type.
pub fn type_name(t: IpcpType) -> &'static str {
    match t {
        IpcpType::Unicast => "unicast",
        IpcpType::Broadcast => "broadcast",
        IpcpType::Local => "local",
        IpcpType::Udp4 => "udp4",
        IpcpType::Udp6 => "udp6",
        IpcpType::EthLlc => "eth-llc",
        IpcpType::EthDix => "eth-dix",
    }
}

fn parse_type(word: &str, usage: &'static str) -> Result<IpcpType, UsageError> {
    Ok(match pick(word, &IPCP_TYPES, "IPCP type", usage)? {
        "unicast" => IpcpType::Unicast,
        "broadcast" => IpcpType::Broadcast,
        "local" => IpcpType::Local,
        "udp4" => IpcpType::Udp4,
        "udp6" => IpcpType::Udp6,
        "eth-llc" => IpcpType::EthLlc,
        _ => IpcpType::EthDix,
    })
}

fn parse_hash(word: &str, usage: &'static str) -> Result<HashAlgo, UsageError> {
    let table = ["SHA3_224", "SHA3_256", "SHA3_384", "SHA3_512"];
    let upper = word.to_ascii_uppercase();
    Ok(match pick(&upper, &table, "hash", usage)? {
        "SHA3_224" => HashAlgo::Sha3_224,
        "SHA3_256" => HashAlgo::Sha3_256,
        "SHA3_384" => HashAlgo::Sha3_384,
        _ => HashAlgo::Sha3_512,
    })
}

/// Parses an EtherType in hex (with or without `0x`): 0x0600 <= e < 0xFFFF.
pub fn parse_ethertype(word: &str) -> Result<u32, String> {
    let digits = word
        .strip_prefix("0x")
        .or_else(|| word.strip_prefix("0X"))
        .unwrap_or(word);
    let e = u32::from_str_radix(digits, 16)
        .map_err(|_| format!("bad ethertype {word:?}: expected hex such as 0xA000"))?;
    if !(0x0600..0xFFFF).contains(&e) {
        return Err(format!(
            "ethertype {word} out of range: 0x0600 <= ethertype < 0xFFFF (0xA000-0xEFFF recommended)"
        ));
    }
    Ok(e)
}

fn parse_component(word: &str, usage: &'static str) -> Result<Component, UsageError> {
    Ok(match pick(word, &["dt", "mgmt"], "component", usage)? {
        "dt" => Component::Dt,
        _ => Component::Mgmt,
    })
}

fn parse_pid(word: &str, usage: &'static str) -> Result<u32, UsageError> {
    match word.parse::<u32>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(usage_err(
            usage,
            format!("bad pid {word:?}: expected a positive process id"),
        )),
    }
}

/// Parses `irm`'s arguments (without the program name).
pub fn parse(args: &[String]) -> Result<Invocation, UsageError> {
    let mut rundir = None;
    let mut rest = args;
    while let Some(first) = rest.first() {
        if first == "--rundir" {
            let Some(dir) = rest.get(1) else {
                return Err(usage_err(USAGE, "`--rundir` needs a directory"));
            };
            rundir = Some(PathBuf::from(dir));
            rest = &rest[2..];
        } else if let Some(dir) = first.strip_prefix("--rundir=") {
            rundir = Some(PathBuf::from(dir));
            rest = &rest[1..];
        } else {
            break;
        }
    }
    let command = parse_command(rest)?;
    Ok(Invocation { rundir, command })
}

fn parse_command(args: &[String]) -> Result<Command, UsageError> {
    let Some(object) = args.first() else {
        return Err(usage_err(USAGE, "no command given"));
    };
    if is_help(object) {
        return Ok(Command::Help(USAGE));
    }
    let objects = ["ipcp", "name", "bind", "unbind", "flow", "help"];
    let object = pick(object, &objects, "object", USAGE)?;
    let rest = &args[1..];
    match object {
        "ipcp" => parse_ipcp(rest),
        "name" => parse_name(rest),
        "bind" => parse_bind(rest, true),
        "unbind" => parse_bind(rest, false),
        "flow" => parse_flow(rest),
        _ => Ok(Command::Help(USAGE)),
    }
}

/// The sub-command word, or help.
fn sub<'a>(
    args: &[String],
    table: &[&'a str],
    what: &str,
    usage: &'static str,
) -> Result<Option<&'a str>, UsageError> {
    match args.first() {
        None => Err(usage_err(
            usage,
            format!("missing {what}: one of {}", table.join(", ")),
        )),
        Some(w) if is_help(w) => Ok(None),
        Some(w) => pick(w, table, what, usage).map(Some),
    }
}

fn parse_ipcp(args: &[String]) -> Result<Command, UsageError> {
    let table = [
        "create",
        "destroy",
        "bootstrap",
        "enroll",
        "connect",
        "disconnect",
        "list",
        "stats",
    ];
    let Some(command) = sub(args, &table, "ipcp command", IPCP_USAGE)? else {
        return Ok(Command::Help(IPCP_USAGE));
    };
    let rest = &args[1..];
    use Arity::{Flag, Value};
    macro_rules! options {
        ($spec:expr, $usage:expr, $name:expr) => {
            match Options::parse(rest, $spec, $usage, $name)? {
                Some(o) => o,
                None => return Ok(Command::Help($usage)),
            }
        };
    }
    match command {
        "create" => {
            let u = IPCP_CREATE_USAGE;
            let o = options!(&[("name", Value), ("type", Value)], u, "irm ipcp create");
            let name = o.require("name", "<name>")?;
            let ipcp_type = parse_type(&o.require("type", "<type>")?, u)?;
            Ok(Command::IpcpCreate { name, ipcp_type })
        }
        "destroy" => {
            let u = IPCP_DESTROY_USAGE;
            let o = options!(&[("name", Value)], u, "irm ipcp destroy");
            Ok(Command::IpcpDestroy {
                name: o.require("name", "<name>")?,
            })
        }
        "bootstrap" => parse_bootstrap(rest),
        "enroll" => {
            let u = IPCP_ENROLL_USAGE;
            let o = options!(
                &[
                    ("name", Value),
                    ("layer", Value),
                    ("dst", Value),
                    ("type", Value),
                    ("autobind", Flag),
                ],
                u,
                "irm ipcp enroll"
            );
            let name = o.require("name", "<name>")?;
            let (layer, dst) = (o.get("layer"), o.get("dst"));
            if layer.is_none() && dst.is_none() {
                return Err(usage_err(
                    u,
                    "`irm ipcp enroll` needs `layer <layer>` or `dst <dst>` (or both)",
                ));
            }
            let ipcp_type = match o.get("type") {
                None => IpcpType::Unicast,
                Some(t) => match pick(&t, &["unicast", "broadcast"], "enrollment type", u)? {
                    "unicast" => IpcpType::Unicast,
                    _ => IpcpType::Broadcast,
                },
            };
            Ok(Command::IpcpEnroll {
                name,
                layer,
                dst,
                ipcp_type,
                autobind: o.flag("autobind"),
            })
        }
        "connect" | "disconnect" => {
            let connect = command == "connect";
            let (u, cmd) = if connect {
                (IPCP_CONNECT_USAGE, "irm ipcp connect")
            } else {
                (IPCP_DISCONNECT_USAGE, "irm ipcp disconnect")
            };
            let spec: &[(&str, Arity)] = if connect {
                &[
                    ("name", Value),
                    ("dst", Value),
                    ("component", Value),
                    ("qos", Value),
                ]
            } else {
                &[("name", Value), ("dst", Value), ("component", Value)]
            };
            let o = options!(spec, u, cmd);
            let name = o.require("name", "<name>")?;
            let dst = o.require("dst", "<dst>")?;
            let component = o
                .get("component")
                .map(|c| parse_component(&c, u))
                .transpose()?;
            if connect {
                let qos = o
                    .get("qos")
                    .map(|q| {
                        pick(&q, &["raw", "best", "voice", "video", "data"], "QoS", u)
                            .map(str::to_owned)
                    })
                    .transpose()?;
                Ok(Command::IpcpConnect {
                    name,
                    dst,
                    component,
                    qos,
                })
            } else {
                Ok(Command::IpcpDisconnect {
                    name,
                    dst,
                    component,
                })
            }
        }
        "list" => {
            let u = IPCP_LIST_USAGE;
            let o = options!(
                &[("type", Value), ("name", Value), ("layer", Value)],
                u,
                "irm ipcp list"
            );
            Ok(Command::IpcpList {
                ipcp_type: o.get("type").map(|t| parse_type(&t, u)).transpose()?,
                name: o.get("name"),
                layer: o.get("layer"),
            })
        }
        _ => {
            let u = IPCP_STATS_USAGE;
            match rest {
                [h, ..] if is_help(h) => Ok(Command::Help(u)),
                [name] => Ok(Command::IpcpStats { name: name.clone() }),
                [kw, name] if kw == "name" => Ok(Command::IpcpStats { name: name.clone() }),
                [] => Err(usage_err(u, "`irm ipcp stats` needs the IPCP's name")),
                _ => Err(usage_err(u, "`irm ipcp stats` takes exactly one IPCP name")),
            }
        }
    }
}

/// Reference bootstrap options our protocol cannot carry yet.
const UNSUPPORTED_BOOTSTRAP: [&str; 18] = [
    "addr",
    "eid",
    "ttl",
    "addr_auth",
    "directory",
    "dht_alpha",
    "dht_k",
    "dht_t_expire",
    "dht_t_refresh",
    "dht_t_replicate",
    "routing",
    "ls_t_recalc",
    "ls_t_update",
    "ls_t_timeo",
    "congestion",
    "ip",
    "port",
    "dns",
];

fn parse_bootstrap(args: &[String]) -> Result<Command, UsageError> {
    let u = IPCP_BOOTSTRAP_USAGE;
    let mut spec: Vec<(&'static str, Arity)> = vec![
        ("name", Arity::Value),
        ("layer", Arity::Value),
        ("type", Arity::Value),
        ("hash", Arity::Value),
        ("device", Arity::Value),
        ("ethertype", Arity::Value),
        ("mode", Arity::Value),
        ("autobind", Arity::Flag),
    ];
    spec.extend(UNSUPPORTED_BOOTSTRAP.iter().map(|k| (*k, Arity::Value)));
    let Some(o) = Options::parse(args, &spec, u, "irm ipcp bootstrap")? else {
        return Ok(Command::Help(u));
    };
    let name = o.require("name", "<name>")?;
    let layer = o.require("layer", "<layer>")?;
    let ipcp_type = o.get("type").map(|t| parse_type(&t, u)).transpose()?;
    let hash = o
        .get("hash")
        .map(|h| parse_hash(&h, u))
        .transpose()?
        .unwrap_or(HashAlgo::Sha3_256);
    let ethertype = o
        .get("ethertype")
        .map(|e| parse_ethertype(&e).map_err(|m| usage_err(u, m)))
        .transpose()?;
    let mode = match o.get("mode") {
        None => EthMode::Auto,
        Some(m) => match pick(
            &m,
            &["auto", "xdp", "native", "generic", "packet"],
            "eth mode",
            u,
        )? {
            "auto" => EthMode::Auto,
            "xdp" => EthMode::Xdp,
            "native" => EthMode::Native,
            "generic" => EthMode::Generic,
            _ => EthMode::Packet,
        },
    };
    let unsupported = o
        .list
        .iter()
        .filter(|(k, _)| UNSUPPORTED_BOOTSTRAP.contains(k))
        .map(|(k, v)| (*k, v.clone().unwrap_or_default()))
        .collect();
    Ok(Command::IpcpBootstrap(Bootstrap {
        name,
        layer,
        ipcp_type,
        hash,
        dev: o.get("device"),
        ethertype,
        mode,
        autobind: o.flag("autobind"),
        unsupported,
    }))
}

/// Splits `<positional> options...`, or help.
fn positional<'a>(
    args: &'a [String],
    what: &str,
    usage: &'static str,
    command: &str,
) -> Result<Option<(&'a String, &'a [String])>, UsageError> {
    match args.split_first() {
        None => Err(usage_err(usage, format!("`{command}` needs {what}"))),
        Some((first, _)) if is_help(first) && first != "help" => Ok(None),
        Some((first, rest)) => Ok(Some((first, rest))),
    }
}

fn parse_name(args: &[String]) -> Result<Command, UsageError> {
    let table = ["create", "destroy", "register", "unregister", "list"];
    let Some(command) = sub(args, &table, "name command", NAME_USAGE)? else {
        return Ok(Command::Help(NAME_USAGE));
    };
    let rest = &args[1..];
    match command {
        "create" => {
            let u = NAME_CREATE_USAGE;
            let Some((name, rest)) = positional(rest, "the name", u, "irm name create")? else {
                return Ok(Command::Help(u));
            };
            let keys = [
                "sencpath", "scrtpath", "skeypath", "cencpath", "ccrtpath", "ckeypath",
            ];
            let mut spec = vec![("lb", Arity::Value)];
            spec.extend(keys.iter().map(|k| (*k, Arity::Value)));
            let Some(o) = Options::parse(rest, &spec, u, "irm name create")? else {
                return Ok(Command::Help(u));
            };
            let lb = match o.get("lb") {
                None => LbPolicy::RoundRobin,
                Some(p) => match pick(&p, &["round-robin", "spillover"], "lb policy", u)? {
                    "round-robin" => LbPolicy::RoundRobin,
                    _ => LbPolicy::Spillover,
                },
            };
            let paths = o
                .list
                .iter()
                .filter(|(k, _)| *k != "lb")
                .map(|(k, v)| (*k, v.clone().unwrap_or_default()))
                .collect();
            Ok(Command::NameCreate {
                name: name.clone(),
                lb,
                paths,
            })
        }
        "destroy" => {
            let u = NAME_DESTROY_USAGE;
            match rest {
                [h] if is_help(h) && h != "help" => Ok(Command::Help(u)),
                [name] => Ok(Command::NameDestroy { name: name.clone() }),
                [] => Err(usage_err(u, "`irm name destroy` needs the name")),
                _ => Err(usage_err(u, "`irm name destroy` takes exactly one name")),
            }
        }
        "register" | "unregister" => {
            let register = command == "register";
            let (u, cmd) = if register {
                (NAME_REGISTER_USAGE, "irm name register")
            } else {
                (NAME_UNREGISTER_USAGE, "irm name unregister")
            };
            let Some((name, rest)) = positional(rest, "the name", u, cmd)? else {
                return Ok(Command::Help(u));
            };
            let spec = [("ipcp", Arity::Value), ("layer", Arity::Value)];
            let Some(o) = Options::parse(rest, &spec, u, cmd)? else {
                return Ok(Command::Help(u));
            };
            let (ipcps, layers) = (o.all("ipcp"), o.all("layer"));
            if ipcps.is_empty() && layers.is_empty() {
                return Err(usage_err(
                    u,
                    format!("`{cmd}` needs at least one `ipcp <pattern>` or `layer <pattern>`"),
                ));
            }
            let name = name.clone();
            Ok(if register {
                Command::NameRegister {
                    name,
                    ipcps,
                    layers,
                }
            } else {
                Command::NameUnregister {
                    name,
                    ipcps,
                    layers,
                }
            })
        }
        _ => {
            let u = NAME_LIST_USAGE;
            match rest {
                [h] if is_help(h) && h != "help" => Ok(Command::Help(u)),
                [] => Ok(Command::NameList { pattern: None }),
                [p] => Ok(Command::NameList {
                    pattern: Some(p.clone()),
                }),
                _ => Err(usage_err(u, "`irm name list` takes at most one pattern")),
            }
        }
    }
}

fn parse_bind(args: &[String], bind: bool) -> Result<Command, UsageError> {
    let (usage, what) = if bind {
        (BIND_USAGE, "bind target")
    } else {
        (UNBIND_USAGE, "unbind target")
    };
    let table = ["program", "process", "ipcp"];
    let Some(kind) = sub(args, &table, what, usage)? else {
        return Ok(Command::Help(usage));
    };
    let rest = &args[1..];
    let (u, cmd, target) = match (bind, kind) {
        (true, "program") => (BIND_PROGRAM_USAGE, "irm bind program", "a program"),
        (true, "process") => (BIND_PROCESS_USAGE, "irm bind process", "a pid"),
        (true, _) => (BIND_IPCP_USAGE, "irm bind ipcp", "an IPCP name"),
        (false, "program") => (UNBIND_PROGRAM_USAGE, "irm unbind program", "a program"),
        (false, "process") => (UNBIND_PROCESS_USAGE, "irm unbind process", "a pid"),
        (false, _) => (UNBIND_IPCP_USAGE, "irm unbind ipcp", "an IPCP name"),
    };
    let Some((subject, rest)) = positional(rest, target, u, cmd)? else {
        return Ok(Command::Help(u));
    };
    // `bind program` takes the program's arguments after `--`.
    let (rest, prog_args) = match rest.iter().position(|a| a == "--") {
        Some(i) if bind && kind == "program" => (&rest[..i], rest[i + 1..].to_vec()),
        Some(_) => {
            return Err(usage_err(
                u,
                format!("`{cmd}` takes no arguments after `--`"),
            ));
        }
        None => (rest, Vec::new()),
    };
    let mut spec = vec![("name", Arity::Value)];
    if bind && kind == "program" {
        spec.push(("auto", Arity::Flag));
    }
    let Some(o) = Options::parse(rest, &spec, u, cmd)? else {
        return Ok(Command::Help(u));
    };
    let subject = subject.clone();
    Ok(match (bind, kind) {
        (true, "program") => Command::BindProgram {
            program: subject,
            name: o.require("name", "<name>")?,
            auto: o.flag("auto"),
            args: prog_args,
        },
        (true, "process") => Command::BindProcess {
            pid: parse_pid(&subject, u)?,
            name: o.require("name", "<name>")?,
        },
        (true, _) => Command::BindIpcp {
            ipcp: subject,
            name: o.require("name", "<name>")?,
        },
        (false, "program") => Command::UnbindProgram {
            program: subject,
            name: o.get("name"),
        },
        (false, "process") => Command::UnbindProcess {
            pid: parse_pid(&subject, u)?,
            name: o.get("name"),
        },
        (false, _) => Command::UnbindIpcp {
            ipcp: subject,
            name: o.require("name", "<name>")?,
        },
    })
}

fn parse_flow(args: &[String]) -> Result<Command, UsageError> {
    let Some(_list) = sub(args, &["list"], "flow command", FLOW_USAGE)? else {
        return Ok(Command::Help(FLOW_USAGE));
    };
    match &args[1..] {
        [] => Ok(Command::FlowList),
        [h] if is_help(h) => Ok(Command::Help(FLOW_LIST_USAGE)),
        _ => Err(usage_err(
            FLOW_LIST_USAGE,
            "`irm flow list` takes no arguments",
        )),
    }
}

/// Shell-style pattern: `*` any run, `?` any one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn is_pattern(s: &str) -> bool {
    s.contains(['*', '?'])
}

// ------------------------------------------------------------------------------------------
// Tables
// ------------------------------------------------------------------------------------------

/// A boxed table like the reference's: right-aligned columns, each at least its minimum width.
pub fn table(columns: &[(&str, usize)], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (head, min))| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([head.chars().count(), *min])
                .max()
                .unwrap_or(*min)
        })
        .collect();
    let rule = {
        let mut s = String::from("+");
        for w in &widths {
            s.push_str(&"-".repeat(w + 2));
            s.push('+');
        }
        s
    };
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::from("|");
        for (w, c) in widths.iter().zip(cells) {
            s.push_str(&format!(" {c:>w$} |"));
        }
        s
    };
    let mut out = vec![rule.clone()];
    out.push(line(&mut columns.iter().map(|(h, _)| *h)));
    out.push(rule.clone());
    for r in rows {
        out.push(line(&mut r.iter().map(String::as_str)));
    }
    out.push(rule);
    out.join("\n")
}

// ------------------------------------------------------------------------------------------
// Running
// ------------------------------------------------------------------------------------------

/// Why a command failed.
#[derive(Debug)]
pub enum RunError {
    /// The IRMd (or the IRM protocol) does not support this yet.
    NotSupported(String),
    /// Anything else.
    Failed(String),
}

impl RunError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NotSupported(_) => 3,
            Self::Failed(_) => 1,
        }
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotSupported(m) | Self::Failed(m) => f.write_str(m),
        }
    }
}

/// `ipcp enroll`, `connect` and `disconnect` act on unicast (and broadcast) IPCPs only.
fn needs_unicast(command: &Command) -> RunError {
    let what = match command {
        Command::IpcpEnroll { .. } => {
            "ipcp enroll is not supported yet: enrolment is for unicast and broadcast IPCPs, \
             which o7s does not have yet (local and eth-dix IPCPs are bootstrapped)"
        }
        Command::IpcpConnect { .. } => {
            "ipcp connect is not supported yet: it joins unicast IPCP components, and o7s has \
             no unicast IPCP yet"
        }
        _ => {
            "ipcp disconnect is not supported yet: it acts on unicast IPCP components, and o7s \
             has no unicast IPCP yet"
        }
    };
    RunError::NotSupported(what.to_owned())
}

fn not_in_protocol(what: &str, missing: &str) -> RunError {
    RunError::NotSupported(format!(
        "{what} is not supported yet: the IRM protocol has no {missing}"
    ))
}

struct Irm {
    client: Client,
}

impl Irm {
    fn connect(rundir: &Path) -> Result<Self, RunError> {
        let client = Client::connect(rundir)
            .map_err(|e| RunError::Failed(format!("failed to communicate with the IRMd: {e}")))?;
        client
            .set_timeout(Some(TIMEOUT))
            .map_err(|e| RunError::Failed(e.to_string()))?;
        Ok(Self { client })
    }

    /// Sends a request; `what` names it in errors ("cannot create name \"x\"").
    fn call(&mut self, what: &str, request: impl Into<Request>) -> Result<ResponseKind, RunError> {
        self.client.call_ok(request).map_err(|e| match e {
            ClientError::Refused {
                code: ErrorCode::NotSupported,
                message,
            } => RunError::NotSupported(format!(
                "{what}: not supported by this irmd yet ({message})"
            )),
            ClientError::Refused { message, .. } => RunError::Failed(format!("{what}: {message}")),
            other => RunError::Failed(format!("{what}: {other}")),
        })
    }

    fn ipcps(&mut self) -> Result<Vec<IpcpInfo>, RunError> {
        match self.call("cannot list IPCPs", ListIpcps {})? {
            ResponseKind::Ipcps(l) => Ok(l.ipcps),
            other => Err(unexpected(&other)),
        }
    }

    fn ipcp_pid(&mut self, name: &str) -> Result<u32, RunError> {
        self.ipcps()?
            .into_iter()
            .find(|i| i.name == name)
            .map(|i| i.pid)
            .ok_or_else(|| {
                RunError::Failed(format!("no IPCP named {name:?} (see `irm ipcp list`)"))
            })
    }
}

fn unexpected(kind: &ResponseKind) -> RunError {
    RunError::Failed(format!("unexpected answer from the IRMd: {kind:?}"))
}

/// Resolves a program as the reference does: a path with a `/` is made absolute, a bare name
/// is searched in `PATH`; it must be an executable file.
pub fn resolve_program(program: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = std::fs::canonicalize(program)
            .map_err(|e| format!("program {program:?} not found: {e}"))?;
        if !executable(&path) {
            return Err(format!(
                "program {} is not an executable file",
                path.display()
            ));
        }
        return Ok(path);
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path_var) {
        let candidate = dir.join(program);
        if executable(&candidate) {
            return std::fs::canonicalize(&candidate).map_err(|e| e.to_string());
        }
    }
    Err(format!(
        "program {program:?} not found in PATH (give a path, e.g. ./{program})"
    ))
}

fn lb_name(code: i32) -> &'static str {
    match LbPolicy::try_from(code) {
        Ok(LbPolicy::RoundRobin) => "round-robin",
        Ok(LbPolicy::Spillover) => "spillover",
        Err(_) => "UNKNOWN",
    }
}

fn end_state(code: i32) -> &'static str {
    match EndState::try_from(code) {
        Ok(EndState::Active) => "active",
        Ok(EndState::Deallocated) => "deallocated",
        Ok(EndState::Dead) => "dead",
        _ => "unknown",
    }
}

fn qos_name(q: Option<&o7s::QosSpec>) -> String {
    let Some(q) = q else {
        return "-".to_owned();
    };
    for name in ["raw", "best", "voice", "video", "data"] {
        if o7s::qos::by_name(name).as_ref() == Some(q) {
            return name.to_owned();
        }
    }
    "custom".to_owned()
}

fn join_or_dash<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Carries out a parsed command; returns what to print on stdout (may be empty) and warnings
/// for stderr.
pub fn run(invocation: &Invocation) -> Result<(String, Vec<String>), RunError> {
    let mut warnings = Vec::new();
    let command = &invocation.command;
    // Commands the protocol lacks fail before touching the IRMd.
    match command {
        Command::Help(text) => return Ok(((*text).to_owned(), warnings)),
        Command::IpcpEnroll { .. }
        | Command::IpcpConnect { .. }
        | Command::IpcpDisconnect { .. } => {
            return Err(needs_unicast(command));
        }
        Command::IpcpBootstrap(b) if !b.unsupported.is_empty() => {
            let keys: Vec<&str> = b.unsupported.iter().map(|(k, _)| *k).collect();
            return Err(not_in_protocol(
                "ipcp bootstrap",
                &format!("field for `{}`", keys.join("`, `")),
            ));
        }
        Command::NameCreate { paths, .. } => {
            for (key, path) in paths {
                if !Path::new(path).exists() {
                    return Err(RunError::Failed(format!("{key} {path:?} does not exist")));
                }
            }
            if !paths.is_empty() {
                warnings.push(
                    "security paths are checked but not sent: the IRM protocol has no field for them"
                        .to_owned(),
                );
            }
        }
        _ => {}
    }
    let rundir = invocation
        .rundir
        .clone()
        .unwrap_or_else(o7s::rundir::default_rundir);
    let mut irm = Irm::connect(&rundir)?;
    let out = execute(&mut irm, command, &mut warnings)?;
    Ok((out, warnings))
}

fn execute(
    irm: &mut Irm,
    command: &Command,
    warnings: &mut Vec<String>,
) -> Result<String, RunError> {
    match command {
        Command::Help(text) => Ok((*text).to_owned()),
        Command::IpcpCreate { name, ipcp_type } => {
            let what = format!("cannot create IPCP {name:?}");
            let reply = irm.call(
                &what,
                CreateIpcp {
                    ipcp_type: (*ipcp_type).into(),
                    name: name.clone(),
                },
            )?;
            Ok(match reply {
                ResponseKind::Ipcp(i) => format!(
                    "Created IPCP {} (pid {}, {}).",
                    i.name,
                    i.pid,
                    type_name(i.ipcp_type())
                ),
                _ => String::new(),
            })
        }
        Command::IpcpDestroy { name } => {
            irm.call(
                &format!("cannot destroy IPCP {name:?}"),
                DestroyIpcp {
                    ipcp: Some(IpcpSelector::Name(name.clone())),
                },
            )?;
            Ok(String::new())
        }
        Command::IpcpBootstrap(b) => bootstrap(irm, b, warnings),
        Command::IpcpEnroll { .. }
        | Command::IpcpConnect { .. }
        | Command::IpcpDisconnect { .. } => Err(needs_unicast(command)),
        Command::IpcpList {
            ipcp_type,
            name,
            layer,
        } => {
            let ipcps: Vec<IpcpInfo> = irm
                .ipcps()?
                .into_iter()
                .filter(|i| ipcp_type.is_none_or(|t| i.ipcp_type() == t))
                .filter(|i| name.as_deref().is_none_or(|p| glob_match(p, &i.name)))
                .filter(|i| {
                    layer
                        .as_deref()
                        .is_none_or(|p| glob_match(p, i.layer.as_deref().unwrap_or("")))
                })
                .collect();
            if ipcps.is_empty() {
                return Ok("No IPCPs in system.".to_owned());
            }
            // The data path column appears only when some IPCP reported one.
            let with_backend = ipcps.iter().any(|i| i.backend.is_some());
            let rows: Vec<Vec<String>> = ipcps
                .iter()
                .map(|i| {
                    let mut row = vec![
                        i.pid.to_string(),
                        i.name.clone(),
                        type_name(i.ipcp_type()).to_owned(),
                        i.layer
                            .clone()
                            .unwrap_or_else(|| "Not enrolled.".to_owned()),
                    ];
                    if with_backend {
                        row.push(i.backend.clone().unwrap_or_default());
                    }
                    row
                })
                .collect();
            let mut columns = vec![("pid", 7), ("name", 20), ("type", 10), ("layer", 20)];
            if with_backend {
                columns.push(("data path", 24));
            }
            Ok(table(&columns, &rows))
        }
        Command::IpcpStats { name } => {
            match irm.call(
                &format!("cannot get the statistics of IPCP {name:?}"),
                IpcpStats { name: name.clone() },
            )? {
                ResponseKind::Stats(s) => {
                    let rows: Vec<Vec<String>> = s
                        .counters
                        .iter()
                        .map(|c| vec![c.name.clone(), c.value.to_string()])
                        .collect();
                    Ok(format!(
                        "IPCP {}\n{}",
                        s.name,
                        table(&[("counter", 30), ("value", 20)], &rows)
                    ))
                }
                other => Err(unexpected(&other)),
            }
        }
        Command::NameCreate { name, lb, .. } => {
            irm.call(
                &format!("cannot create name {name:?}"),
                CreateName {
                    name: name.clone(),
                    lb: (*lb).into(),
                },
            )?;
            Ok(String::new())
        }
        Command::NameDestroy { name } => {
            irm.call(
                &format!("cannot destroy name {name:?}"),
                DestroyName { name: name.clone() },
            )?;
            Ok(String::new())
        }
        Command::NameRegister {
            name,
            ipcps,
            layers,
        } => {
            for target in targets(irm, ipcps, layers)? {
                let what = format!("cannot register {name:?} in {}", describe(&target));
                irm.call(
                    &what,
                    RegisterName {
                        name: name.clone(),
                        target: Some(target),
                    },
                )?;
            }
            Ok(String::new())
        }
        Command::NameUnregister {
            name,
            ipcps,
            layers,
        } => {
            for target in targets(irm, ipcps, layers)? {
                let what = format!("cannot unregister {name:?} from {}", describe(&target));
                irm.call(
                    &what,
                    UnregisterName {
                        name: name.clone(),
                        target: Some(target),
                    },
                )?;
            }
            Ok(String::new())
        }
        Command::NameList { pattern } => {
            let names = match irm.call("cannot list names", ListNames {})? {
                ResponseKind::Names(n) => n.names,
                other => return Err(unexpected(&other)),
            };
            let rows: Vec<Vec<String>> = names
                .iter()
                .filter(|n| pattern.as_deref().is_none_or(|p| glob_match(p, &n.name)))
                .map(|n| {
                    vec![
                        n.name.clone(),
                        lb_name(n.lb).to_owned(),
                        join_or_dash(&n.programs),
                        join_or_dash(&n.processes),
                        join_or_dash(&n.ipcps),
                    ]
                })
                .collect();
            if rows.is_empty() {
                return Ok("No names in system.".to_owned());
            }
            Ok(table(
                &[
                    ("name", 20),
                    ("load-balance policy", 20),
                    ("programs", 8),
                    ("processes", 9),
                    ("registered in", 13),
                ],
                &rows,
            ))
        }
        Command::BindProgram {
            program,
            name,
            auto,
            args,
        } => {
            let path = resolve_program(program).map_err(RunError::Failed)?;
            let path = path.to_string_lossy().into_owned();
            irm.call(
                &format!("cannot bind {path} to {name:?}"),
                BindProgram {
                    name: name.clone(),
                    program: path.clone(),
                    args: args.clone(),
                    auto: *auto,
                },
            )?;
            Ok(String::new())
        }
        Command::BindProcess { pid, name } => {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return Err(RunError::Failed(format!("no process with pid {pid}")));
            }
            irm.call(
                &format!("cannot bind process {pid} to {name:?}"),
                BindProcess {
                    pid: *pid,
                    name: name.clone(),
                },
            )?;
            Ok(String::new())
        }
        Command::BindIpcp { ipcp, name } => {
            let pid = irm.ipcp_pid(ipcp)?;
            irm.call(
                &format!("cannot bind IPCP {ipcp:?} to {name:?}"),
                BindProcess {
                    pid,
                    name: name.clone(),
                },
            )?;
            Ok(String::new())
        }
        Command::UnbindProgram { program, name } => {
            // The program may be gone from disk: fall back to the path as given.
            let path = match resolve_program(program) {
                Ok(p) => p.to_string_lossy().into_owned(),
                Err(_) if Path::new(program).is_absolute() => program.clone(),
                Err(e) => return Err(RunError::Failed(e)),
            };
            irm.call(
                &format!("cannot unbind {path}"),
                UnbindProgram {
                    program: path.clone(),
                    name: name.clone(),
                },
            )?;
            Ok(String::new())
        }
        Command::UnbindProcess { pid, name } => {
            irm.call(
                &format!("cannot unbind process {pid}"),
                UnbindProcess {
                    pid: *pid,
                    name: name.clone(),
                },
            )?;
            Ok(String::new())
        }
        Command::UnbindIpcp { ipcp, name } => {
            let pid = irm.ipcp_pid(ipcp)?;
            irm.call(
                &format!("cannot unbind IPCP {ipcp:?} from {name:?}"),
                UnbindProcess {
                    pid,
                    name: Some(name.clone()),
                },
            )?;
            Ok(String::new())
        }
        Command::FlowList => {
            let flows = match irm.call("cannot list flows", ListFlows {})? {
                ResponseKind::Flows(f) => f.flows,
                other => return Err(unexpected(&other)),
            };
            if flows.is_empty() {
                return Ok("No flows in system.".to_owned());
            }
            // An end that is an IPCP is shown with the IPCP's name.
            let ipcps: std::collections::HashMap<u32, String> =
                irm.ipcps()?.into_iter().map(|i| (i.pid, i.name)).collect();
            let end = |pid: u32| match ipcps.get(&pid) {
                Some(name) => format!("{pid} (ipcp {name})"),
                None => pid.to_string(),
            };
            let rows: Vec<Vec<String>> = flows
                .iter()
                .map(|f| {
                    vec![
                        f.flow_id.to_string(),
                        f.name.clone(),
                        end(f.n_pid),
                        end_state(f.n_state).to_owned(),
                        end(f.n_1_pid),
                        end_state(f.n_1_state).to_owned(),
                        qos_name(f.qos.as_ref()),
                        format!("{}/{}", f.tx_ring, f.rx_ring),
                    ]
                })
                .collect();
            Ok(table(
                &[
                    ("id", 5),
                    ("name", 20),
                    ("alloc pid", 9),
                    ("state", 11),
                    ("accept pid", 10),
                    ("state", 11),
                    ("qos", 6),
                    ("rings", 9),
                ],
                &rows,
            ))
        }
    }
}

fn describe(target: &RegisterTarget) -> String {
    match target {
        RegisterTarget::Ipcp(i) => format!("IPCP {i:?}"),
        RegisterTarget::Layer(l) => format!("layer {l:?}"),
    }
}

/// Expands IPCP and layer patterns against the IPCPs there are; plain names go as they are
/// (the IRMd says if they do not exist).
fn targets(
    irm: &mut Irm,
    ipcps: &[String],
    layers: &[String],
) -> Result<Vec<RegisterTarget>, RunError> {
    let known = if ipcps.iter().chain(layers).any(|p| is_pattern(p)) {
        irm.ipcps()?
    } else {
        Vec::new()
    };
    let mut out = Vec::new();
    for p in ipcps {
        if !is_pattern(p) {
            out.push(RegisterTarget::Ipcp(p.clone()));
            continue;
        }
        let matched: Vec<RegisterTarget> = known
            .iter()
            .filter(|i| glob_match(p, &i.name))
            .map(|i| RegisterTarget::Ipcp(i.name.clone()))
            .collect();
        if matched.is_empty() {
            return Err(RunError::Failed(format!("no IPCP matches {p:?}")));
        }
        out.extend(matched);
    }
    for p in layers {
        if !is_pattern(p) {
            out.push(RegisterTarget::Layer(p.clone()));
            continue;
        }
        let mut matched: Vec<String> = known
            .iter()
            .filter_map(|i| i.layer.clone())
            .filter(|l| glob_match(p, l))
            .collect();
        matched.sort();
        matched.dedup();
        if matched.is_empty() {
            return Err(RunError::Failed(format!("no layer matches {p:?}")));
        }
        out.extend(matched.into_iter().map(RegisterTarget::Layer));
    }
    Ok(out)
}

fn bootstrap(irm: &mut Irm, b: &Bootstrap, warnings: &mut Vec<String>) -> Result<String, RunError> {
    let mut matches: Vec<IpcpInfo> = irm
        .ipcps()?
        .into_iter()
        .filter(|i| glob_match(&b.name, &i.name))
        .collect();
    if matches.is_empty() {
        let Some(t) = b.ipcp_type else {
            return Err(RunError::Failed(format!(
                "no IPCP matches {:?}: give `type <type>` to create it",
                b.name
            )));
        };
        if is_pattern(&b.name) {
            return Err(RunError::Failed(format!(
                "no IPCP matches {:?}, and a pattern cannot name a new IPCP",
                b.name
            )));
        }
        let reply = irm.call(
            &format!("cannot create IPCP {:?}", b.name),
            CreateIpcp {
                ipcp_type: t.into(),
                name: b.name.clone(),
            },
        )?;
        matches = match reply {
            ResponseKind::Ipcp(i) => vec![i],
            _ => irm
                .ipcps()?
                .into_iter()
                .filter(|i| i.name == b.name)
                .collect(),
        };
    }
    for ipcp in &matches {
        let t = ipcp.ipcp_type();
        if let Some(want) = b.ipcp_type
            && want != t
        {
            return Err(RunError::Failed(format!(
                "IPCP {:?} is of type {}, not {}",
                ipcp.name,
                type_name(t),
                type_name(want)
            )));
        }
    }
    for ipcp in &matches {
        let t = ipcp.ipcp_type();
        let type_config = match t {
            IpcpType::EthDix | IpcpType::EthLlc => {
                let Some(dev) = b.dev.clone() else {
                    return Err(RunError::Failed(format!(
                        "bootstrapping {} IPCP {:?} needs `dev <iface>`",
                        type_name(t),
                        ipcp.name
                    )));
                };
                Some(IpcpTypeConfig::Eth(EthConfig {
                    dev,
                    ethertype: if t == IpcpType::EthDix {
                        b.ethertype.unwrap_or(DEFAULT_ETHERTYPE)
                    } else {
                        0
                    },
                    mode: b.mode.into(),
                }))
            }
            _ => None,
        };
        let autobind = b.autobind && matches!(t, IpcpType::Unicast | IpcpType::Broadcast);
        if b.autobind && !autobind {
            warnings.push(format!(
                "autobind is for unicast and broadcast IPCPs; ignored for {} IPCP {:?}",
                type_name(t),
                ipcp.name
            ));
        }
        if autobind {
            for n in [&ipcp.name, &b.layer] {
                irm.call(
                    &format!("cannot bind IPCP {:?} to {n:?}", ipcp.name),
                    BindProcess {
                        pid: ipcp.pid,
                        name: n.clone(),
                    },
                )?;
            }
        }
        let result = irm.call(
            &format!(
                "cannot bootstrap IPCP {:?} in layer {:?}",
                ipcp.name, b.layer
            ),
            BootstrapIpcp {
                name: ipcp.name.clone(),
                config: Some(IpcpConfig {
                    layer: b.layer.clone(),
                    hash: b.hash.into(),
                    type_config,
                }),
            },
        );
        if let Err(e) = result {
            if autobind {
                for n in [&ipcp.name, &b.layer] {
                    let _ = irm.call(
                        "undo autobind",
                        UnbindProcess {
                            pid: ipcp.pid,
                            name: Some(n.clone()),
                        },
                    );
                }
            }
            return Err(e);
        }
    }
    Ok(String::new())
}

#[cfg(test)]
mod test {
    use super::*;

    fn p(line: &str) -> Result<Command, UsageError> {
        let args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        parse(&args).map(|i| i.command)
    }

    fn ok(line: &str) -> Command {
        p(line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    fn err(line: &str) -> String {
        match p(line) {
            Ok(c) => panic!("{line}: parsed as {c:?}"),
            Err(e) => e.message,
        }
    }

    #[test]
    fn prefixes_resolve_uniquely_and_exact_wins() {
        assert_eq!(pick("n", &["name", "ipcp"], "x", USAGE), Ok("name"));
        assert_eq!(pick("list", &["list", "listen"], "x", USAGE), Ok("list"));
        let e = pick("c", &["create", "connect"], "ipcp command", USAGE).unwrap_err();
        assert!(e.message.contains("ambiguous ipcp command \"c\""), "{e}");
        assert!(e.message.contains("create, connect"), "{e}");
        let e = pick("zap", &["create", "connect"], "ipcp command", USAGE).unwrap_err();
        assert!(e.message.contains("expected one of create, connect"), "{e}");
        assert!(pick("", &["a"], "x", USAGE).is_err());
    }

    #[test]
    fn name_commands() {
        assert_eq!(
            ok("n c foo"),
            Command::NameCreate {
                name: "foo".into(),
                lb: LbPolicy::RoundRobin,
                paths: vec![]
            }
        );
        assert_eq!(
            ok("name create foo lb spill"),
            Command::NameCreate {
                name: "foo".into(),
                lb: LbPolicy::Spillover,
                paths: vec![]
            }
        );
        assert_eq!(
            ok("name create foo l r sencpath /x"),
            Command::NameCreate {
                name: "foo".into(),
                lb: LbPolicy::RoundRobin,
                paths: vec![("sencpath", "/x".into())]
            }
        );
        assert_eq!(
            ok("name d foo"),
            Command::NameDestroy { name: "foo".into() }
        );
        assert_eq!(
            ok("name reg foo ipcp a* layer l1 i b"),
            Command::NameRegister {
                name: "foo".into(),
                ipcps: vec!["a*".into(), "b".into()],
                layers: vec!["l1".into()]
            }
        );
        assert_eq!(
            ok("name u foo layer l1"),
            Command::NameUnregister {
                name: "foo".into(),
                ipcps: vec![],
                layers: vec!["l1".into()]
            }
        );
        assert_eq!(ok("name list"), Command::NameList { pattern: None });
        assert_eq!(
            ok("name li op*"),
            Command::NameList {
                pattern: Some("op*".into())
            }
        );
        assert!(err("name create").contains("needs the name"));
        assert!(err("name create foo lb").contains("`lb` needs a value"));
        assert!(err("name create foo lb fair").contains("unknown lb policy"));
        assert!(err("name create foo colour red").contains("expected one of lb, sencpath"));
        assert!(err("name register foo").contains("at least one `ipcp <pattern>`"));
        assert!(err("name x").contains("unknown name command \"x\""));
        assert!(err("name").contains("missing name command"));
    }

    #[test]
    fn ipcp_commands() {
        assert_eq!(
            ok("i cr name l0 type local"),
            Command::IpcpCreate {
                name: "l0".into(),
                ipcp_type: IpcpType::Local
            }
        );
        assert_eq!(
            ok("ipcp create type eth-d name e0"),
            Command::IpcpCreate {
                name: "e0".into(),
                ipcp_type: IpcpType::EthDix
            }
        );
        assert!(err("ipcp create name e0 type eth").contains("ambiguous IPCP type"));
        assert!(err("ipcp create name e0").contains("needs `type <type>`"));
        assert!(err("ipcp c name x").contains("ambiguous ipcp command \"c\""));
        assert!(err("ipcp d name x").contains("destroy, disconnect"));
        assert_eq!(ok("ipcp de n x"), Command::IpcpDestroy { name: "x".into() });
        assert_eq!(
            ok("i b n e0 la l ty eth-dix dev veth0 eth 0xa001 mode xdp hash sha3_512 autobind"),
            Command::IpcpBootstrap(Bootstrap {
                name: "e0".into(),
                layer: "l".into(),
                ipcp_type: Some(IpcpType::EthDix),
                hash: HashAlgo::Sha3_512,
                dev: Some("veth0".into()),
                ethertype: Some(0xA001),
                mode: EthMode::Xdp,
                autobind: true,
                unsupported: vec![],
            })
        );
        let Command::IpcpBootstrap(b) = ok("ipcp bootstrap name u layer l addr 4 ttl 3") else {
            panic!("bootstrap")
        };
        assert_eq!(
            b.unsupported,
            vec![("addr", "4".to_owned()), ("ttl", "3".to_owned())]
        );
        assert!(err("ipcp bootstrap name x").contains("needs `layer <layer>`"));
        assert!(err("ipcp bootstrap name x layer l ethertype 0x0500").contains("out of range"));
        assert!(err("ipcp bootstrap name x layer l ethertype zz").contains("bad ethertype"));
        assert!(err("ipcp bootstrap name x layer l d eth0").contains("ambiguous"));
        assert!(err("ipcp bootstrap name x layer l t local").contains("abbreviates type, ttl"));
        assert_eq!(
            ok("ipcp enroll name u dst peer autobind"),
            Command::IpcpEnroll {
                name: "u".into(),
                layer: None,
                dst: Some("peer".into()),
                ipcp_type: IpcpType::Unicast,
                autobind: true
            }
        );
        assert!(err("ipcp enroll name u").contains("needs `layer <layer>` or `dst <dst>`"));
        assert!(err("ipcp enroll name u layer l type local").contains("unknown enrollment type"));
        assert_eq!(
            ok("ipcp conn name u dst p comp dt qos vo"),
            Command::IpcpConnect {
                name: "u".into(),
                dst: "p".into(),
                component: Some(Component::Dt),
                qos: Some("voice".into())
            }
        );
        assert!(err("ipcp connect name u dst p qos v").contains("ambiguous QoS"));
        assert_eq!(
            ok("ipcp disc name u dst p component m"),
            Command::IpcpDisconnect {
                name: "u".into(),
                dst: "p".into(),
                component: Some(Component::Mgmt)
            }
        );
        assert!(err("ipcp disconnect name u dst p qos raw").contains("unknown option"));
        assert_eq!(
            ok("ipcp l"),
            Command::IpcpList {
                ipcp_type: None,
                name: None,
                layer: None
            }
        );
        assert_eq!(
            ok("ipcp list type unicast name u*"),
            Command::IpcpList {
                ipcp_type: Some(IpcpType::Unicast),
                name: Some("u*".into()),
                layer: None
            }
        );
        assert_eq!(ok("ipcp s e0"), Command::IpcpStats { name: "e0".into() });
        assert_eq!(
            ok("ipcp stats name e0"),
            Command::IpcpStats { name: "e0".into() }
        );
        assert!(err("ipcp stats").contains("needs the IPCP's name"));
    }

    #[test]
    fn bind_and_unbind_commands() {
        assert_eq!(
            ok("b prog /bin/oping n oping auto -- -l -n oping"),
            Command::BindProgram {
                program: "/bin/oping".into(),
                name: "oping".into(),
                auto: true,
                args: vec!["-l".into(), "-n".into(), "oping".into()]
            }
        );
        assert_eq!(
            ok("bind program oping name x"),
            Command::BindProgram {
                program: "oping".into(),
                name: "x".into(),
                auto: false,
                args: vec![]
            }
        );
        assert!(err("bind p 12 name x").contains("ambiguous bind target \"p\""));
        assert_eq!(
            ok("bind proc 12 name x"),
            Command::BindProcess {
                pid: 12,
                name: "x".into()
            }
        );
        assert!(err("bind process abc name x").contains("bad pid \"abc\""));
        assert!(err("bind process 12").contains("needs `name <name>`"));
        assert_eq!(
            ok("bind ipcp u0 name l"),
            Command::BindIpcp {
                ipcp: "u0".into(),
                name: "l".into()
            }
        );
        assert_eq!(
            ok("unb prog /bin/oping"),
            Command::UnbindProgram {
                program: "/bin/oping".into(),
                name: None
            }
        );
        assert_eq!(
            ok("unbind process 7 name x"),
            Command::UnbindProcess {
                pid: 7,
                name: Some("x".into())
            }
        );
        assert_eq!(
            ok("unbind ipcp u0 name l"),
            Command::UnbindIpcp {
                ipcp: "u0".into(),
                name: "l".into()
            }
        );
        assert!(err("unbind ipcp u0").contains("needs `name <name>`"));
        assert!(err("unbind process 7 -- x").contains("no arguments after `--`"));
        assert!(err("bind program").contains("needs a program"));
        assert!(err("bind").contains("missing bind target"));
    }

    #[test]
    fn flow_list_rundir_and_help() {
        assert_eq!(ok("flow list"), Command::FlowList);
        assert_eq!(ok("f l"), Command::FlowList);
        assert!(err("flow list x").contains("takes no arguments"));
        let args: Vec<String> = ["--rundir", "/tmp/r", "n", "l"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let inv = parse(&args).expect("parses");
        assert_eq!(inv.rundir, Some(PathBuf::from("/tmp/r")));
        assert_eq!(inv.command, Command::NameList { pattern: None });
        assert_eq!(
            parse(&["--rundir=/x".to_owned(), "f".to_owned(), "l".to_owned()])
                .expect("parses")
                .rundir,
            Some(PathBuf::from("/x"))
        );
        assert!(err("--rundir").contains("needs a directory"));
        assert_eq!(ok("--help"), Command::Help(USAGE));
        assert_eq!(ok("help"), Command::Help(USAGE));
        assert_eq!(ok("ipcp --help"), Command::Help(IPCP_USAGE));
        assert_eq!(ok("ipcp bootstrap -h"), Command::Help(IPCP_BOOTSTRAP_USAGE));
        assert_eq!(
            ok("ipcp create name x --help"),
            Command::Help(IPCP_CREATE_USAGE)
        );
        assert_eq!(ok("name create --help"), Command::Help(NAME_CREATE_USAGE));
        assert_eq!(ok("name list --help"), Command::Help(NAME_LIST_USAGE));
        assert_eq!(ok("bind program -h"), Command::Help(BIND_PROGRAM_USAGE));
        assert_eq!(ok("unbind --help"), Command::Help(UNBIND_USAGE));
        assert_eq!(ok("flow list --help"), Command::Help(FLOW_LIST_USAGE));
        assert_eq!(ok("ipcp stats --help"), Command::Help(IPCP_STATS_USAGE));
        // A name that looks like help is still a name where a value is expected.
        assert_eq!(
            ok("name create help"),
            Command::NameCreate {
                name: "help".into(),
                lb: LbPolicy::RoundRobin,
                paths: vec![]
            }
        );
        assert!(err("").contains("no command given"));
        assert!(err("x").contains("expected one of ipcp, name, bind, unbind, flow, help"));
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("e*", "eth0"));
        assert!(glob_match("e?h*0", "eth0"));
        assert!(glob_match("*0", "eth0"));
        assert!(!glob_match("e*1", "eth0"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("abc", "abcd"));
    }

    #[test]
    fn tables_are_aligned() {
        let t = table(
            &[("pid", 3), ("name", 4)],
            &[vec!["1".into(), "longname".into()]],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "+-----+----------+");
        assert_eq!(lines[1], "| pid |     name |");
        assert_eq!(lines[3], "|   1 | longname |");
        assert!(lines.iter().all(|l| l.len() == lines[0].len()));
    }
}
