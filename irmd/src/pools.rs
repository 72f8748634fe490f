//! The IRMd's packet pools: the shared pool and the per-user pools (PUPs).
//!
//! As in the reference, a process is *privileged* when it runs as root or is a member (by its
//! primary or a supplementary group) of group [`o7s_pool::SHARED_GROUP`]; privileged processes
//! use the shared pool. o7s adds the IRMd's own uid: it owns the shared pool, so its processes
//! can open it anyway (this keeps an IRMd run by an ordinary user, as in the tests, working
//! as before). Every other uid gets its own pool, `<prefix>.pup.<uid>`, mode 0600, owned by
//! that uid: created when its first process announces itself, destroyed (unlinked and
//! unmapped) when its last process is gone *and* no flow has rings in it any more (a flow
//! whose other end is an IPCP outlives the application by the time the IPCP takes to let go).
//!
//! A flow's rings live in one pool, so both ends must map it: two applications of the same
//! pool, or an application and an IPCP (IPCPs are privileged and open any pool they are told
//! of, copying SDUs between it and their own). [`flow_pool`] decides.
//!
//! [`Pools`] is bookkeeping plus the pool objects; [`Creds`] reads who a process is from
//! `/proc/<pid>/status`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use o7s_pool::{Access, Pool, PoolConfig, pool_name};

/// The uid that stands for the shared pool in flows and messages (the reference's `uid` 0).
pub const SHARED: u32 = 0;

/// Who a process is, as the kernel says in `/proc/<pid>/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// Why `/proc/<pid>/status` could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredsError {
    /// A line the credentials need is missing.
    #[error("no {0:?} line")]
    Missing(&'static str),
    /// A line is there but not as the kernel writes it.
    #[error("malformed {0:?} line")]
    Malformed(&'static str),
}

/// The effective id of a `Uid:`/`Gid:` line's value: real, effective, saved, filesystem.
fn effective(value: &str, what: &'static str) -> Result<u32, CredsError> {
    let mut ids = value.split_ascii_whitespace();
    let _real = ids.next();
    ids.next()
        .and_then(|e| e.parse().ok())
        .ok_or(CredsError::Malformed(what))
}

impl Creds {
    /// Parses the text of `/proc/<pid>/status`: the effective ids of its `Uid:` and `Gid:`
    /// lines and the ids of its `Groups:` line (which may be empty).
    pub fn parse_status(text: &str) -> Result<Self, CredsError> {
        let (mut uid, mut gid, mut groups) = (None, None, None);
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            match key {
                "Uid" => uid = Some(effective(value, "Uid")?),
                "Gid" => gid = Some(effective(value, "Gid")?),
                "Groups" => {
                    let ids: Result<Vec<u32>, _> =
                        value.split_ascii_whitespace().map(str::parse).collect();
                    groups = Some(ids.map_err(|_| CredsError::Malformed("Groups"))?);
                }
                _ => {}
            }
        }
        Ok(Self {
            uid: uid.ok_or(CredsError::Missing("Uid"))?,
            gid: gid.ok_or(CredsError::Missing("Gid"))?,
            groups: groups.ok_or(CredsError::Missing("Groups"))?,
        })
    }

    /// The credentials of process `pid`.
    pub fn of_pid(pid: u32) -> Result<Self, String> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        Self::parse_status(&text).map_err(|e| format!("{path}: {e}"))
    }

    /// Whether the process may use the shared pool: root, the IRMd's own uid (`irmd_uid`,
    /// the pool's owner), or a member of the shared group (`shared_gid`, if it exists) by its
    /// primary or a supplementary group.
    pub fn privileged(&self, irmd_uid: u32, shared_gid: Option<u32>) -> bool {
        self.uid == 0
            || self.uid == irmd_uid
            || shared_gid.is_some_and(|g| self.gid == g || self.groups.contains(&g))
    }
}

/// The fuzz oracle of [`Creds::parse_status`]: any bytes parse or fail with an error that
/// says something, never panic; what parses is written back in the kernel's format and parses
/// to the same credentials, and the effective ids found are in the input.
#[doc(hidden)]
pub fn fuzz_oracle(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let creds = match Creds::parse_status(&text) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "an error that says nothing");
            return;
        }
    };
    for id in [creds.uid, creds.gid] {
        assert!(text.contains(&id.to_string()), "{id} is not in the input");
    }
    let groups: Vec<String> = creds.groups.iter().map(u32::to_string).collect();
    let again = format!(
        "Uid:\t0\t{uid}\t0\t0\nGid:\t0\t{gid}\t0\t0\nGroups:\t{} \n",
        groups.join(" "),
        uid = creds.uid,
        gid = creds.gid
    );
    assert_eq!(Creds::parse_status(&again), Ok(creds), "round trip");
}

/// Why a flow cannot have rings both ends can map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// The allocating end's pool owner ([`SHARED`] or a uid).
    pub alloc: u32,
    /// The accepting end's.
    pub accept: u32,
}

/// The pool of a flow's rings between an allocating and an accepting end, given each end's
/// pool owner and whether it is an IPCP: an application's pool (an IPCP at the other end
/// opens it), or the one pool both applications share.
pub fn flow_pool(
    (alloc, alloc_is_ipcp): (u32, bool),
    (accept, accept_is_ipcp): (u32, bool),
) -> Result<u32, Mismatch> {
    match (alloc_is_ipcp, accept_is_ipcp) {
        (true, false) => Ok(accept),
        (false, true) => Ok(alloc),
        _ if alloc == accept => Ok(alloc),
        _ => Err(Mismatch { alloc, accept }),
    }
}

/// A per-user pool and who keeps it alive.
#[derive(Debug)]
struct UserPool {
    pool: Arc<Pool>,
    /// Announced processes of the uid, until they die.
    pids: BTreeSet<u32>,
    /// Flows with rings in the pool, until their rings are destroyed.
    flows: BTreeSet<u32>,
}

/// Why a per-user pool could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the per-user pool {name:?} for uid {uid}: {source}")]
pub struct CreateError {
    /// The pool's name.
    pub name: String,
    /// Its owner.
    pub uid: u32,
    /// What failed.
    #[source]
    pub source: o7s_pool::Error,
}

impl CreateError {
    /// The IRM error code for a process refused because its pool could not be made: only a
    /// refused system call is a permission problem; out of memory or /dev/shm space is
    /// [`ErrorCode::Busy`]; anything else is the IRMd's own failure.
    #[must_use]
    pub fn code(&self) -> o7s_proto::irm::ErrorCode {
        use o7s_proto::irm::ErrorCode;
        use std::io::ErrorKind;
        match &self.source {
            o7s_pool::Error::Sys { source, .. } => match source.kind() {
                ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
                ErrorKind::OutOfMemory | ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
                    ErrorCode::Busy
                }
                _ => ErrorCode::Internal,
            },
            _ => ErrorCode::Internal,
        }
    }
}

/// The shared pool and the per-user pools, with who uses each.
#[derive(Debug)]
pub struct Pools {
    prefix: String,
    shared: Arc<Pool>,
    config: PoolConfig,
    users: BTreeMap<u32, UserPool>,
    /// Each announced process's pool owner ([`SHARED`] or its uid).
    homes: HashMap<u32, u32>,
}

impl Pools {
    /// The IRMd's pools under `prefix`: `shared` now, per-user pools of `config` on demand.
    pub fn new(prefix: &str, shared: Arc<Pool>, config: PoolConfig) -> Self {
        Self {
            prefix: prefix.to_owned(),
            shared,
            config,
            users: BTreeMap::new(),
            homes: HashMap::new(),
        }
    }

    /// The name of `uid`'s pool ([`SHARED`]: the shared pool).
    pub fn name_of(&self, uid: u32) -> String {
        if uid == SHARED {
            self.shared.name().to_owned()
        } else {
            pool_name(&self.prefix, Access::User { uid })
        }
    }

    /// The pool of owner `uid` ([`SHARED`]: the shared pool), if it exists.
    pub fn get(&self, uid: u32) -> Option<Arc<Pool>> {
        if uid == SHARED {
            Some(self.shared.clone())
        } else {
            self.users.get(&uid).map(|u| u.pool.clone())
        }
    }

    /// Process `pid`'s pool owner (a process never announced: the shared pool).
    pub fn home_of(&self, pid: u32) -> u32 {
        self.homes.get(&pid).copied().unwrap_or(SHARED)
    }

    /// Every pool (to reclaim a dead process's share in each).
    pub fn all(&self) -> Vec<Arc<Pool>> {
        std::iter::once(self.shared.clone())
            .chain(self.users.values().map(|u| u.pool.clone()))
            .collect()
    }

    /// Records that process `pid` uses `uid`'s pool ([`SHARED`]: the shared pool), creating
    /// that per-user pool if it is the uid's first. A pid that used another pool before (an
    /// earlier incarnation) leaves it, which may destroy it: the names of the pools destroyed
    /// are returned with the pool.
    pub fn attach(&mut self, pid: u32, uid: u32) -> Result<(Arc<Pool>, Vec<String>), CreateError> {
        let pool = if uid == SHARED {
            self.shared.clone()
        } else if let Some(u) = self.users.get_mut(&uid) {
            u.pids.insert(pid);
            u.pool.clone()
        } else {
            let name = pool_name(&self.prefix, Access::User { uid });
            // A pool of this name left by an earlier IRMd of this prefix was removed at start;
            // one left by a failed creation is removed by `Pool::create` itself.
            let pool = Pool::create(&name, &self.config, Access::User { uid })
                .map(Arc::new)
                .map_err(|source| CreateError {
                    name: name.clone(),
                    uid,
                    source,
                })?;
            self.users.insert(
                uid,
                UserPool {
                    pool: pool.clone(),
                    pids: BTreeSet::from([pid]),
                    flows: BTreeSet::new(),
                },
            );
            pool
        };
        let mut destroyed = Vec::new();
        if let Some(old) = self.homes.insert(pid, uid)
            && old != uid
        {
            destroyed.extend(self.leave(old, |u| {
                u.pids.remove(&pid);
            }));
        }
        Ok((pool, destroyed))
    }

    /// Process `pid` is gone (dead, its blocks reclaimed): it no longer keeps its pool alive.
    /// Returns the name of the pool this destroyed, if any.
    pub fn detach(&mut self, pid: u32) -> Option<String> {
        let uid = self.homes.remove(&pid)?;
        self.leave(uid, |u| {
            u.pids.remove(&pid);
        })
    }

    /// Flow `flow` has rings in `uid`'s pool.
    pub fn add_flow(&mut self, uid: u32, flow: u32) {
        if let Some(u) = self.users.get_mut(&uid) {
            u.flows.insert(flow);
        }
    }

    /// Flow `flow`'s rings in `uid`'s pool are destroyed. Returns the name of the pool this
    /// destroyed, if any.
    pub fn remove_flow(&mut self, uid: u32, flow: u32) -> Option<String> {
        self.leave(uid, |u| {
            u.flows.remove(&flow);
        })
    }

    /// Changes `uid`'s pool's users with `change`; destroys the pool if nobody uses it any
    /// more and returns its name.
    fn leave(&mut self, uid: u32, change: impl FnOnce(&mut UserPool)) -> Option<String> {
        let u = self.users.get_mut(&uid)?;
        change(u);
        if !u.pids.is_empty() || !u.flows.is_empty() {
            return None;
        }
        let u = self.users.remove(&uid)?;
        let name = u.pool.name().to_owned();
        // Unlinked while `self` is locked: a new process of the uid gets a new object, never
        // this one's name removed under it. Mappings (an IPCP's) stay valid until dropped.
        let _ = Pool::unlink(&name);
        Some(name)
    }

    /// Unlinks every per-user pool (the IRMd stops).
    pub fn unlink_all(&mut self) -> Vec<String> {
        let names: Vec<String> = self
            .users
            .values()
            .map(|u| u.pool.name().to_owned())
            .collect();
        for name in &names {
            let _ = Pool::unlink(name);
        }
        self.users.clear();
        names
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;

    const STATUS: &str = "Name:\toping\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\n\
                          Uid:\t1000\t1001\t1001\t1001\nGid:\t100\t101\t101\t101\n\
                          FDSize:\t64\nGroups:\t4 24 27 \nNStgid:\t42\n";

    #[test]
    fn status_gives_the_effective_ids_and_the_groups() {
        let c = Creds::parse_status(STATUS).expect("parses");
        assert_eq!(
            c,
            Creds {
                uid: 1001,
                gid: 101,
                groups: vec![4, 24, 27],
            }
        );
        let no_groups = STATUS.replace("Groups:\t4 24 27 ", "Groups:\t");
        assert_eq!(
            Creds::parse_status(&no_groups).expect("parses").groups,
            Vec::<u32>::new()
        );
        assert_eq!(
            Creds::parse_status(&STATUS.replace("Uid:", "Xid:")),
            Err(CredsError::Missing("Uid"))
        );
        assert_eq!(
            Creds::parse_status(&STATUS.replace("Gid:\t100\t101", "Gid:\t100\tx")),
            Err(CredsError::Malformed("Gid"))
        );
        assert_eq!(
            Creds::parse_status(&STATUS.replace("27 ", "-1")),
            Err(CredsError::Malformed("Groups"))
        );
    }

    #[test]
    fn our_own_status_is_ours() {
        let c = Creds::of_pid(std::process::id()).expect("own status");
        assert_eq!(c.uid, rustix::process::geteuid().as_raw());
        assert_eq!(c.gid, rustix::process::getegid().as_raw());
    }

    #[test]
    fn privileged_is_root_the_irmd_uid_or_the_group() {
        let who = |uid, gid, groups: &[u32]| Creds {
            uid,
            gid,
            groups: groups.to_vec(),
        };
        assert!(who(0, 0, &[]).privileged(1000, None));
        assert!(who(1000, 1000, &[]).privileged(1000, None));
        assert!(!who(65534, 65534, &[]).privileged(0, None));
        assert!(!who(65534, 65534, &[]).privileged(0, Some(999)));
        assert!(who(65534, 999, &[]).privileged(0, Some(999)), "primary");
        assert!(
            who(65534, 65534, &[5, 999]).privileged(0, Some(999)),
            "supplementary"
        );
    }

    #[test]
    fn a_flow_lives_in_the_applications_pool() {
        const U: u32 = 65534;
        assert_eq!(flow_pool((U, false), (U, false)), Ok(U));
        assert_eq!(flow_pool((SHARED, false), (SHARED, false)), Ok(SHARED));
        assert_eq!(
            flow_pool((U, false), (SHARED, false)),
            Err(Mismatch {
                alloc: U,
                accept: SHARED
            })
        );
        assert_eq!(
            flow_pool((U, false), (1000, false)).map_err(|m| m.accept),
            Err(1000)
        );
        // An IPCP at one end opens the application's pool.
        assert_eq!(flow_pool((SHARED, true), (U, false)), Ok(U));
        assert_eq!(flow_pool((U, false), (SHARED, true)), Ok(U));
    }

    /// A per-user pool lives while a process or a flow uses it, and its name goes with it.
    #[test]
    fn a_user_pool_lives_while_used() {
        let euid = rustix::process::geteuid().as_raw();
        // Root makes the pool for another uid (chown); anyone else for its own uid.
        let uid = if euid == 0 { 65534 } else { euid };
        let prefix = format!("o7s-pools-unit-{}", std::process::id());
        let shared_name = pool_name(&prefix, Access::Shared);
        let shared = Arc::new(
            Pool::create(&shared_name, &PoolConfig::small(), Access::Shared).expect("shared"),
        );
        let mut pools = Pools::new(&prefix, shared, PoolConfig::small());
        let shm = |name: &str| std::path::Path::new("/dev/shm").join(name).exists();
        let (pup, gone) = pools.attach(10, uid).expect("create the pup");
        assert!(gone.is_empty());
        let name = pup.name().to_owned();
        assert_eq!(name, format!("{prefix}.pup.{uid}"));
        assert!(shm(&name));
        assert_eq!(pools.name_of(uid), name);
        assert_eq!(pools.home_of(10), uid);
        assert_eq!(pools.home_of(99), SHARED, "never announced");
        let (again, _) = pools.attach(11, uid).expect("the same pup");
        assert!(Arc::ptr_eq(&pup, &again));
        pools.add_flow(uid, 7);
        assert_eq!(pools.detach(10), None);
        assert_eq!(pools.detach(11), None, "flow 7 still has rings in it");
        assert_eq!(pools.all().len(), 2);
        assert_eq!(pools.remove_flow(uid, 7), Some(name.clone()));
        assert!(!shm(&name), "unlinked with its last user");
        assert!(pools.get(uid).is_none());
        // A pid reused by a privileged process leaves its old pool.
        pools.attach(12, uid).expect("a new pup");
        assert!(shm(&name));
        let (s, gone) = pools.attach(12, SHARED).expect("shared");
        assert_eq!(s.name(), shared_name);
        assert_eq!(gone, [name.as_str()]);
        assert!(!shm(&name));
        pools.attach(13, uid).expect("a new pup");
        assert_eq!(pools.unlink_all(), [name.as_str()]);
        assert!(!shm(&name));
        let _ = Pool::unlink(&shared_name);
    }

    #[test]
    fn a_pool_creation_failure_gets_the_code_of_its_cause() {
        use o7s_proto::irm::ErrorCode;
        let failed = |source: std::io::Error| CreateError {
            name: "o7s.pup.1000".into(),
            uid: 1000,
            source: o7s_pool::Error::Sys {
                call: "shm_open",
                name: "o7s.pup.1000".into(),
                source,
            },
        };
        let errno = std::io::Error::from_raw_os_error;
        assert_eq!(
            failed(errno(13)).code(),
            ErrorCode::PermissionDenied,
            "EACCES"
        );
        assert_eq!(failed(errno(28)).code(), ErrorCode::Busy, "ENOSPC");
        assert_eq!(failed(errno(12)).code(), ErrorCode::Busy, "ENOMEM");
        assert_eq!(failed(errno(22)).code(), ErrorCode::Internal, "EINVAL");
        let corrupt = CreateError {
            name: "o7s.pup.1000".into(),
            uid: 1000,
            source: o7s_pool::Error::BadConfig("x".into()),
        };
        assert_eq!(corrupt.code(), ErrorCode::Internal);
    }

    #[test]
    fn the_oracle_holds_on_the_fuzz_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/proc_status");
        let mut parsed = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/proc_status") {
            let bytes = std::fs::read(entry.expect("seed").path()).expect("seed");
            fuzz_oracle(&bytes);
            parsed += usize::from(Creds::parse_status(&String::from_utf8_lossy(&bytes)).is_ok());
        }
        assert!(parsed >= 2, "the seeds include real status files");
        // And this process's own, as the kernel writes it now.
        fuzz_oracle(&std::fs::read("/proc/self/status").expect("own status"));
    }

    proptest! {
        #[test]
        fn any_text_parses_or_fails_cleanly(text in "\\PC{0,200}") {
            fuzz_oracle(text.as_bytes());
        }

        #[test]
        fn any_bytes_parse_or_fail_cleanly(
            data in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            fuzz_oracle(&data);
        }

        #[test]
        fn well_formed_status_round_trips(
            ids in proptest::array::uniform8(any::<u32>()),
            groups in proptest::collection::vec(any::<u32>(), 0..32),
            noise in proptest::collection::vec("[A-Za-z_]{1,12}:\t[ -~]{0,30}", 0..6),
        ) {
            let list: Vec<String> = groups.iter().map(u32::to_string).collect();
            let mut lines = noise.clone();
            lines.push(format!("Uid:\t{}\t{}\t{}\t{}", ids[0], ids[1], ids[2], ids[3]));
            lines.push(format!("Gid:\t{}\t{}\t{}\t{}", ids[4], ids[5], ids[6], ids[7]));
            lines.push(format!("Groups:\t{} ", list.join(" ")));
            lines.rotate_left(noise.len() / 2);
            let parsed = Creds::parse_status(&lines.join("\n"));
            // A noise line may itself be named Uid/Gid/Groups and win or fail; otherwise the
            // values come back.
            let named = |k: &str| noise.iter().any(|n| n.starts_with(&format!("{k}:")));
            if !named("Uid") && !named("Gid") && !named("Groups") {
                prop_assert_eq!(parsed, Ok(Creds { uid: ids[1], gid: ids[5], groups }));
            }
        }
    }
}
