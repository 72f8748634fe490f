//! Who may open which pool: a real unprivileged uid, in a child process, cannot open the
//! shared pool or another user's pool, and can open its own.

mod util;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use o7s_pool::{Access, Pool, PoolConfig};
use util::ShmName;

const NOBODY: u32 = 65534;
const OTHER: u32 = 65533;

/// The tool binary, copied where an unprivileged uid can execute it (the build tree may sit
/// under a directory only root can enter).
fn tool_for_anyone() -> (std::path::PathBuf, ShmName) {
    let dir_name = ShmName::new("tooldir");
    let dir = std::env::temp_dir().join(&dir_name.0);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = dir.join("o7s-pool-tool");
    std::fs::copy(env!("CARGO_BIN_EXE_o7s-pool-tool"), &path).expect("copy tool");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (path, dir_name)
}

fn open_as(tool: &std::path::Path, uid: u32, name: &str) -> Option<i32> {
    Command::new(tool)
        .args(["open", name])
        .uid(uid)
        .gid(uid) // std drops supplementary groups when root sets a uid
        .status()
        .expect("spawn as unprivileged uid")
        .code()
}

#[test]
fn unprivileged_uid_opens_only_its_own_pool() {
    if !util::is_root() {
        eprintln!("skipped: needs root to create pools for other uids and to drop to uid {NOBODY}");
        return;
    }
    let cfg = PoolConfig::small();
    let shared = ShmName::new("shared");
    let mine = ShmName::new("pup-nobody");
    let theirs = ShmName::new("pup-other");
    let _s = Pool::create(&shared.0, &cfg, Access::Shared).expect("shared");
    let _m = Pool::create(&mine.0, &cfg, Access::User { uid: NOBODY }).expect("pup");
    let _t = Pool::create(&theirs.0, &cfg, Access::User { uid: OTHER }).expect("pup");

    let meta = |n: &ShmName| std::fs::metadata(format!("/dev/shm/{}", n.0)).expect("stat");
    assert_eq!(meta(&shared).mode() & 0o777, 0o660);
    assert_eq!(
        (meta(&mine).mode() & 0o777, meta(&mine).uid()),
        (0o600, NOBODY)
    );
    assert_eq!(
        (meta(&theirs).mode() & 0o777, meta(&theirs).uid()),
        (0o600, OTHER)
    );

    let (tool, dir) = tool_for_anyone();
    assert_eq!(
        open_as(&tool, NOBODY, &mine.0),
        Some(0),
        "its own per-user pool"
    );
    assert_eq!(
        open_as(&tool, NOBODY, &shared.0),
        Some(13),
        "the shared pool"
    );
    assert_eq!(
        open_as(&tool, NOBODY, &theirs.0),
        Some(13),
        "another user's pool"
    );
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(&dir.0));
}

#[test]
fn pool_names_follow_the_prefix() {
    assert_eq!(o7s_pool::pool_name("o7s", Access::Shared), "o7s.pool");
    assert_eq!(
        o7s_pool::pool_name("hostA", Access::User { uid: 1000 }),
        "hostA.pup.1000"
    );
}

#[test]
fn the_shared_group_is_looked_up_by_name() {
    // What NSS says, through getent (absent group, or no getent: none).
    let expected: Option<u32> = Command::new("getent")
        .args(["group", o7s_pool::SHARED_GROUP])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|line| line.split(':').nth(2)?.trim().parse().ok());
    assert_eq!(o7s_pool::shared_group_gid(), expected);
}
