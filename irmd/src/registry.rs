//! The IRMd's registry: names, programs, processes and IPCPs, and the bindings between them.
//!
//! Pure state, no I/O: every method checks its input, changes the registry or leaves it as it
//! was, and says why it refused with a [`Refusal`] that becomes an IRM error response.
//!
//! **Invariant**: bindings live on the name side only ([`Name::programs`], [`Name::processes`]);
//! a program or process entry never lists its names, so the two sides cannot disagree. Every
//! pid in a name's `processes` is an announced process, and every path in its `programs` a
//! known program.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::flows::{AcceptWait, AllocWait, FlowTable};
use o7s_proto::irm::{
    ErrorCode, HashAlgo, IpcpInfo, IpcpList, IpcpState, IpcpType, LbPolicy, MAX_NAME_LEN, NameInfo,
    NameList, ProcessInfo, ProcessList, ProgramInfo, ProgramList, RegisterTarget,
};

/// Longest program path or argument accepted.
const MAX_PATH_LEN: usize = 4096;
/// Most arguments of a bound program.
const MAX_ARGS: usize = 256;

/// Why a request was refused: becomes `Error { code, message }`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// The IRM error code.
    pub code: ErrorCode,
    /// For humans.
    pub message: String,
}

impl Refusal {
    /// A refusal with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
}

/// Checks a name (of a name, an IPCP or a layer): 1 to [`MAX_NAME_LEN`] bytes, no control
/// characters.
pub fn check_name(what: &str, name: &str) -> Result<(), Refusal> {
    if name.is_empty() {
        return Err(Refusal::invalid(format!("empty {what}")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Refusal::invalid(format!(
            "{what} of {} bytes is longer than {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Refusal::invalid(format!(
            "{what} {name:?} contains control characters"
        )));
    }
    Ok(())
}

/// Checks a program path: absolute, bounded, no NUL.
fn check_program(program: &str) -> Result<(), Refusal> {
    if !Path::new(program).is_absolute() {
        return Err(Refusal::invalid(format!(
            "program {program:?} is not an absolute path"
        )));
    }
    if program.len() > MAX_PATH_LEN || program.contains('\0') {
        return Err(Refusal::invalid(format!(
            "program path {program:?} is too long or contains NUL"
        )));
    }
    Ok(())
}

/// Parses a load-balancing policy code.
pub fn lb_policy(code: i32) -> Result<LbPolicy, Refusal> {
    LbPolicy::try_from(code)
        .map_err(|_| Refusal::invalid(format!("unknown load-balancing policy {code}")))
}

/// A name and what is bound to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// Its policy.
    pub lb: LbPolicy,
    /// Bound programs (paths).
    pub programs: BTreeSet<String>,
    /// Bound processes.
    pub processes: BTreeSet<u32>,
    /// IPCPs it is registered in.
    pub ipcps: BTreeSet<String>,
}

impl Name {
    fn new(lb: LbPolicy) -> Self {
        Self {
            lb,
            programs: BTreeSet::new(),
            processes: BTreeSet::new(),
            ipcps: BTreeSet::new(),
        }
    }
}

/// A program bound to at least one name (or that was, until unbound by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// Arguments for an automatic start.
    pub args: Vec<String>,
    /// Started on demand.
    pub auto: bool,
}

/// An announced process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// The program it announced.
    pub program: String,
    /// Its uid, when known.
    pub uid: Option<u32>,
    /// Incarnation number: a pid can be reused once its process is reaped, so a death notice
    /// removes the entry only if it is still the incarnation it watched.
    pub generation: u64,
}

/// An IPCP known to the IRMd: a process it spawned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipcp {
    /// Its pid.
    pub pid: u32,
    /// Its type.
    pub ipcp_type: IpcpType,
    /// Where it is in its life.
    pub state: IpcpState,
    /// Its layer, once bootstrapped or enrolled.
    pub layer: Option<String>,
    /// Its layer's hash algorithm.
    pub hash: HashAlgo,
    /// Names registered in it, by hash.
    pub registered: BTreeMap<Vec<u8>, String>,
    /// The data path it reported at bootstrap (Ethernet IPCPs).
    pub backend: Option<String>,
}

impl Ipcp {
    /// A just-spawned IPCP.
    pub fn new(pid: u32, ipcp_type: IpcpType) -> Self {
        Self {
            pid,
            ipcp_type,
            state: IpcpState::Booting,
            layer: None,
            hash: HashAlgo::Sha3_256,
            registered: BTreeMap::new(),
            backend: None,
        }
    }
}

/// The registry.
#[derive(Debug, Default)]
pub struct Registry {
    names: BTreeMap<String, Name>,
    programs: BTreeMap<String, Program>,
    processes: BTreeMap<u32, Process>,
    ipcps: BTreeMap<String, Ipcp>,
    next_generation: u64,
    /// Flows and the accepts and allocations waiting for each other.
    pub flows: FlowTable,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates a name; an existing name is left as it is (not an error, as in the reference).
    pub fn create_name(&mut self, name: &str, lb: i32) -> Result<(), Refusal> {
        check_name("name", name)?;
        let lb = lb_policy(lb)?;
        self.names
            .entry(name.to_owned())
            .or_insert_with(|| Name::new(lb));
        Ok(())
    }

    /// Destroys a name and its bindings.
    pub fn destroy_name(&mut self, name: &str) -> Result<(), Refusal> {
        self.names
            .remove(name)
            .map(drop)
            .ok_or_else(|| Refusal::not_found(format!("no name {name:?}")))
    }

    /// The name, if it exists.
    pub fn name(&self, name: &str) -> Option<&Name> {
        self.names.get(name)
    }

    /// Every name, sorted.
    pub fn list_names(&self) -> NameList {
        NameList {
            names: self
                .names
                .iter()
                .map(|(name, n)| NameInfo {
                    name: name.clone(),
                    lb: n.lb.into(),
                    programs: n.programs.iter().cloned().collect(),
                    processes: n.processes.iter().copied().collect(),
                    ipcps: n.ipcps.iter().cloned().collect(),
                })
                .collect(),
        }
    }

    /// The IPCPs a (un)registration targets: the named IPCP, or every IPCP of the layer. Each
    /// must be operational (bootstrapped), since the name is hashed with its layer's algorithm.
    /// Returns (IPCP name, pid, hash algorithm).
    pub fn registration_targets(
        &self,
        what: &str,
        name: &str,
        target: Option<&RegisterTarget>,
    ) -> Result<Vec<(String, u32, HashAlgo)>, Refusal> {
        check_name("name", name)?;
        let chosen: Vec<(&String, &Ipcp)> = match target {
            None => return Err(Refusal::invalid(format!("{what} without an IPCP or layer"))),
            Some(RegisterTarget::Ipcp(ipcp)) => {
                let i = self
                    .ipcps
                    .get_key_value(ipcp)
                    .ok_or_else(|| Refusal::not_found(format!("no IPCP named {ipcp:?}")))?;
                vec![i]
            }
            Some(RegisterTarget::Layer(layer)) => {
                let v: Vec<_> = self
                    .ipcps
                    .iter()
                    .filter(|(_, i)| i.layer.as_deref() == Some(layer.as_str()))
                    .collect();
                if v.is_empty() {
                    return Err(Refusal::not_found(format!("no IPCP in layer {layer:?}")));
                }
                v
            }
        };
        chosen
            .into_iter()
            .map(|(n, i)| {
                if i.state != IpcpState::Operational {
                    return Err(Refusal::new(
                        ErrorCode::InvalidArgument,
                        format!("IPCP {n:?} is not bootstrapped: no layer to {what} {name:?} in"),
                    ));
                }
                Ok((n.clone(), i.pid, i.hash))
            })
            .collect()
    }

    /// Records that `name` (created, spillover, if needed) is registered in IPCP `ipcp` under
    /// `hash`.
    pub fn add_registration(&mut self, name: &str, ipcp: &str, hash: Vec<u8>) {
        if let Some(i) = self.ipcps.get_mut(ipcp) {
            i.registered.insert(hash, name.to_owned());
            self.names
                .entry(name.to_owned())
                .or_insert_with(|| Name::new(LbPolicy::Spillover))
                .ipcps
                .insert(ipcp.to_owned());
        }
    }

    /// Forgets a registration of `name` in `ipcp`.
    pub fn remove_registration(&mut self, name: &str, ipcp: &str) {
        if let Some(i) = self.ipcps.get_mut(ipcp) {
            i.registered.retain(|_, n| n != name);
        }
        if let Some(n) = self.names.get_mut(name) {
            n.ipcps.remove(ipcp);
        }
    }

    /// Binds a program to a name, creating the name (spillover) and the program if needed.
    pub fn bind_program(
        &mut self,
        name: &str,
        program: &str,
        args: &[String],
        auto: bool,
    ) -> Result<(), Refusal> {
        check_name("name", name)?;
        check_program(program)?;
        if args.len() > MAX_ARGS || args.iter().any(|a| a.len() > MAX_PATH_LEN) {
            return Err(Refusal::invalid(format!(
                "at most {MAX_ARGS} arguments of at most {MAX_PATH_LEN} bytes"
            )));
        }
        if args.iter().any(|a| a.contains('\0')) {
            return Err(Refusal::invalid("an argument contains NUL"));
        }
        self.programs.insert(
            program.to_owned(),
            Program {
                args: args.to_vec(),
                auto,
            },
        );
        let entry = self
            .names
            .entry(name.to_owned())
            .or_insert_with(|| Name::new(LbPolicy::Spillover));
        entry.programs.insert(program.to_owned());
        // Running processes of the program serve the name too.
        for (pid, p) in &self.processes {
            if program_matches(program, &p.program) {
                entry.processes.insert(*pid);
            }
        }
        Ok(())
    }

    /// Unbinds a program from one name, or (without a name) forgets it and all its bindings.
    pub fn unbind_program(&mut self, program: &str, name: Option<&str>) -> Result<(), Refusal> {
        if !self.programs.contains_key(program) {
            return Err(Refusal::not_found(format!("no program {program:?}")));
        }
        match name {
            Some(name) => {
                let n = self
                    .names
                    .get_mut(name)
                    .ok_or_else(|| Refusal::not_found(format!("no name {name:?}")))?;
                if !n.programs.remove(program) {
                    return Err(Refusal::not_found(format!(
                        "program {program:?} is not bound to {name:?}"
                    )));
                }
            }
            None => {
                self.programs.remove(program);
                for n in self.names.values_mut() {
                    n.programs.remove(program);
                }
            }
        }
        Ok(())
    }

    /// Every program, by path.
    pub fn list_programs(&self) -> ProgramList {
        ProgramList {
            programs: self
                .programs
                .iter()
                .map(|(path, p)| ProgramInfo {
                    program: path.clone(),
                    args: p.args.clone(),
                    auto: p.auto,
                    names: self
                        .names
                        .iter()
                        .filter(|(_, n)| n.programs.contains(path))
                        .map(|(name, _)| name.clone())
                        .collect(),
                })
                .collect(),
        }
    }

    /// Records an announced process and returns its incarnation number. A pid announced again
    /// keeps its bindings. The process inherits the names its program is bound to.
    pub fn announce(&mut self, pid: u32, program: &str, uid: Option<u32>) -> u64 {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.processes.insert(
            pid,
            Process {
                program: program.to_owned(),
                uid,
                generation,
            },
        );
        for n in self.names.values_mut() {
            if n.programs.iter().any(|p| program_matches(p, program)) {
                n.processes.insert(pid);
            }
        }
        generation
    }

    /// The process, if announced.
    pub fn process(&self, pid: u32) -> Option<&Process> {
        self.processes.get(&pid)
    }

    /// Removes a process and its bindings.
    pub fn remove_process(&mut self, pid: u32) -> Result<Process, Refusal> {
        let p = self
            .processes
            .remove(&pid)
            .ok_or_else(|| Refusal::not_found(format!("process {pid} has not announced itself")))?;
        for n in self.names.values_mut() {
            n.processes.remove(&pid);
        }
        Ok(p)
    }

    /// Removes a process if it is still the incarnation `generation` (its death was noticed).
    pub fn remove_dead(&mut self, pid: u32, generation: u64) -> Option<Process> {
        if self.processes.get(&pid)?.generation != generation {
            return None;
        }
        self.remove_process(pid).ok()
    }

    /// Binds an announced process to a name, creating the name (spillover) if needed.
    pub fn bind_process(&mut self, pid: u32, name: &str) -> Result<(), Refusal> {
        check_name("name", name)?;
        if !self.processes.contains_key(&pid) {
            return Err(Refusal::not_found(format!(
                "process {pid} has not announced itself"
            )));
        }
        self.names
            .entry(name.to_owned())
            .or_insert_with(|| Name::new(LbPolicy::Spillover))
            .processes
            .insert(pid);
        Ok(())
    }

    /// Unbinds a process from one name, or (without a name) removes the process entry.
    pub fn unbind_process(&mut self, pid: u32, name: Option<&str>) -> Result<(), Refusal> {
        match name {
            None => self.remove_process(pid).map(drop),
            Some(name) => {
                let n = self
                    .names
                    .get_mut(name)
                    .ok_or_else(|| Refusal::not_found(format!("no name {name:?}")))?;
                if n.processes.remove(&pid) {
                    Ok(())
                } else {
                    Err(Refusal::not_found(format!(
                        "process {pid} is not bound to {name:?}"
                    )))
                }
            }
        }
    }

    /// Every announced process, by pid, with the names it is bound to.
    pub fn list_processes(&self) -> ProcessList {
        ProcessList {
            processes: self
                .processes
                .iter()
                .map(|(pid, p)| ProcessInfo {
                    pid: *pid,
                    program: p.program.clone(),
                    names: self
                        .names
                        .iter()
                        .filter(|(_, n)| n.processes.contains(pid))
                        .map(|(name, _)| name.clone())
                        .collect(),
                })
                .collect(),
        }
    }

    /// Whether process `pid` is bound to `name`.
    pub fn is_bound(&self, pid: u32, name: &str) -> bool {
        self.names
            .get(name)
            .is_some_and(|n| n.processes.contains(&pid))
    }

    /// Whether process `pid` is bound to any name.
    pub fn is_bound_anywhere(&self, pid: u32) -> bool {
        self.names.values().any(|n| n.processes.contains(&pid))
    }

    /// Takes the waiting accept that gets a flow to `dst`, by the name's load-balancing
    /// policy, among processes bound to `dst` for which `fits` holds (those whose pool the
    /// allocating side can share).
    pub fn take_acceptor(&mut self, dst: &str, fits: impl Fn(u32) -> bool) -> Option<AcceptWait> {
        let name = self.names.get(dst)?;
        let lb = name.lb;
        let bound = &name.processes;
        self.flows
            .take_acceptor(dst, |pid| bound.contains(&pid) && fits(pid), lb)
    }

    /// A process bound to `dst` waiting to accept a flow for it, whether it fits or not (only
    /// to say why none fits: [`Registry::take_acceptor`] with the same rule takes the ones
    /// that do).
    pub fn acceptor_for(&self, dst: &str) -> Option<u32> {
        let bound = &self.names.get(dst)?.processes;
        self.flows.acceptor_for(dst, |pid| bound.contains(&pid))
    }

    /// Takes the oldest waiting allocation process `pid` can accept (for `name`, or for any
    /// name it is bound to), among those from processes for which `fits` holds (those whose
    /// pool `pid` can share); the others wait on for an acceptor that fits them.
    pub fn take_alloc_for(
        &mut self,
        pid: u32,
        name: Option<&str>,
        fits: impl Fn(u32) -> bool,
    ) -> Option<AllocWait> {
        let names = &self.names;
        self.flows.take_alloc(name, |dst, alloc| {
            names.get(dst).is_some_and(|n| n.processes.contains(&pid)) && fits(alloc)
        })
    }

    /// The IPCP of that name, if any.
    pub fn ipcp(&self, name: &str) -> Option<&Ipcp> {
        self.ipcps.get(name)
    }

    /// The IPCP with that pid, if any.
    pub fn ipcp_by_pid(&self, pid: u32) -> Option<(&str, &Ipcp)> {
        self.ipcps
            .iter()
            .find(|(_, i)| i.pid == pid)
            .map(|(n, i)| (n.as_str(), i))
    }

    /// The pids of every IPCP.
    pub fn ipcp_pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.ipcps.values().map(|i| i.pid)
    }

    /// Every IPCP (none until IPCP spawning exists).
    pub fn list_ipcps(&self) -> IpcpList {
        IpcpList {
            ipcps: self
                .ipcps
                .iter()
                .map(|(name, i)| IpcpInfo {
                    pid: i.pid,
                    ipcp_type: i.ipcp_type.into(),
                    name: name.clone(),
                    layer: i.layer.clone(),
                    hash: i.hash.into(),
                    state: i.state.into(),
                    backend: i.backend.clone(),
                })
                .collect(),
        }
    }

    /// Records a spawned IPCP; refuses a name in use.
    pub fn add_ipcp(&mut self, name: &str, ipcp: Ipcp) -> Result<(), Refusal> {
        check_name("IPCP name", name)?;
        if self.ipcps.contains_key(name) {
            return Err(Refusal::new(
                ErrorCode::AlreadyExists,
                format!("an IPCP named {name:?} exists already"),
            ));
        }
        self.ipcps.insert(name.to_owned(), ipcp);
        Ok(())
    }

    /// The IPCP, to change it.
    pub fn ipcp_mut(&mut self, name: &str) -> Option<&mut Ipcp> {
        self.ipcps.get_mut(name)
    }

    /// Forgets the IPCP of process `pid` and every name registered in it; returns its name.
    pub fn remove_ipcp_pid(&mut self, pid: u32) -> Option<(String, Ipcp)> {
        let name = self.ipcp_by_pid(pid)?.0.to_owned();
        let ipcp = self.ipcps.remove(&name)?;
        for n in self.names.values_mut() {
            n.ipcps.remove(&name);
        }
        Some((name, ipcp))
    }

    /// The operational IPCPs a name is registered in, in the reference's order (type, pid):
    /// (IPCP name, pid, hash algorithm).
    pub fn ipcps_of_name(&self, name: &str) -> Vec<(String, u32, HashAlgo)> {
        let Some(n) = self.names.get(name) else {
            return Vec::new();
        };
        let mut v: Vec<_> = n
            .ipcps
            .iter()
            .filter_map(|i| self.ipcps.get(i).map(|x| (i, x)))
            .filter(|(_, x)| x.state == IpcpState::Operational)
            .map(|(i, x)| (x.ipcp_type, x.pid, i.clone(), x.hash))
            .collect();
        v.sort();
        v.into_iter().map(|(_, pid, i, h)| (i, pid, h)).collect()
    }

    /// Every operational IPCP in the reference's order (type, then pid): the candidates for a
    /// name this host does not know.
    pub fn operational_ipcps(&self) -> Vec<(String, u32, HashAlgo)> {
        let mut v: Vec<_> = self
            .ipcps
            .iter()
            .filter(|(_, x)| x.state == IpcpState::Operational)
            .map(|(i, x)| (x.ipcp_type, x.pid, i.clone(), x.hash))
            .collect();
        v.sort();
        v.into_iter().map(|(_, pid, i, h)| (i, pid, h)).collect()
    }

    /// The name registered in IPCP `pid` under `hash`.
    pub fn name_of_hash(&self, pid: u32, hash: &[u8]) -> Option<String> {
        self.ipcp_by_pid(pid)?.1.registered.get(hash).cloned()
    }
}

/// Whether an announced program (a path or a basename) is the bound program `path`.
fn program_matches(path: &str, announced: &str) -> bool {
    path == announced
        || Path::new(path)
            .file_name()
            .is_some_and(|f| f.to_str() == Some(announced))
}

#[cfg(test)]
mod test {
    use super::*;

    const SPILL: i32 = LbPolicy::Spillover as i32;
    const RR: i32 = LbPolicy::RoundRobin as i32;

    #[test]
    fn names_are_created_once_and_destroyed_with_their_bindings() {
        let mut r = Registry::new();
        r.create_name("a", RR).unwrap();
        r.create_name("a", SPILL).unwrap();
        assert_eq!(r.name("a").unwrap().lb, LbPolicy::RoundRobin);
        r.bind_program("a", "/bin/true", &[], false).unwrap();
        r.destroy_name("a").unwrap();
        assert_eq!(r.destroy_name("a").unwrap_err().code, ErrorCode::NotFound);
        assert_eq!(r.list_programs().programs[0].names, Vec::<String>::new());
    }

    #[test]
    fn bad_input_is_refused() {
        let mut r = Registry::new();
        let code = |e: Result<(), Refusal>| e.unwrap_err().code;
        assert_eq!(code(r.create_name("", RR)), ErrorCode::InvalidArgument);
        assert_eq!(
            code(r.create_name(&"x".repeat(256), RR)),
            ErrorCode::InvalidArgument
        );
        assert_eq!(code(r.create_name("a\n", RR)), ErrorCode::InvalidArgument);
        assert_eq!(code(r.create_name("a", 9)), ErrorCode::InvalidArgument);
        assert_eq!(
            code(r.bind_program("a", "relative", &[], false)),
            ErrorCode::InvalidArgument
        );
        assert_eq!(code(r.bind_process(5, "a")), ErrorCode::NotFound);
        assert_eq!(code(r.unbind_program("/x", None)), ErrorCode::NotFound);
        assert_eq!(
            code(
                r.registration_targets(
                    "registration",
                    "a",
                    Some(&RegisterTarget::Ipcp("i".into()))
                )
                .map(drop)
            ),
            ErrorCode::NotFound
        );
        assert!(r.list_names().names.is_empty(), "nothing was created");
    }

    #[test]
    fn processes_inherit_their_programs_names() {
        let mut r = Registry::new();
        r.bind_program("srv", "/usr/bin/oecho", &[], false).unwrap();
        let g = r.announce(10, "oecho", Some(0));
        assert_eq!(r.name("srv").unwrap().processes, BTreeSet::from([10]));
        r.bind_process(10, "other").unwrap();
        assert_eq!(r.list_processes().processes[0].names, ["other", "srv"]);
        // A stale death notice does nothing; the right one removes every binding.
        let g2 = r.announce(10, "oecho", None);
        assert!(r.remove_dead(10, g).is_none());
        assert!(r.remove_dead(10, g2).is_some());
        assert!(r.name("srv").unwrap().processes.is_empty());
        assert!(r.name("other").unwrap().processes.is_empty());
        assert!(r.list_processes().processes.is_empty());
    }

    #[test]
    fn unbind_program_by_name_or_entirely() {
        let mut r = Registry::new();
        r.bind_program("a", "/p", &["x".into()], true).unwrap();
        r.bind_program("b", "/p", &[], false).unwrap();
        r.unbind_program("/p", Some("a")).unwrap();
        assert_eq!(
            r.unbind_program("/p", Some("a")).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(r.list_programs().programs[0].names, ["b"]);
        r.unbind_program("/p", None).unwrap();
        assert!(r.list_programs().programs.is_empty());
        assert!(r.name("b").unwrap().programs.is_empty());
    }
}
