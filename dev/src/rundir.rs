//! Where an IRMd lives: its run directory, control socket, lockfile and shared-memory prefix.
//! The daemon (`o7s-irmd` re-exports these) and every client use the same functions, so they
//! cannot disagree on where to meet.

use std::path::{Path, PathBuf};

/// The run directory when neither `--rundir` nor [`RUNDIR_ENV`] says otherwise.
pub const DEFAULT_RUNDIR: &str = "/run/o7s";
/// Environment variable naming the run directory (for the daemon and its clients).
pub const RUNDIR_ENV: &str = "O7S_RUNDIR";
/// Shared-memory prefix of the IRMd of [`DEFAULT_RUNDIR`].
pub const DEFAULT_SHM_PREFIX: &str = "o7s";

/// The control socket of a run directory.
pub fn socket_path(rundir: &Path) -> PathBuf {
    rundir.join("irmd.sock")
}

/// The lockfile of a run directory.
pub fn lock_path(rundir: &Path) -> PathBuf {
    rundir.join("irmd.lock")
}

/// The run directory from [`RUNDIR_ENV`], else [`DEFAULT_RUNDIR`].
pub fn default_rundir() -> PathBuf {
    std::env::var_os(RUNDIR_ENV).map_or_else(|| PathBuf::from(DEFAULT_RUNDIR), PathBuf::from)
}

/// The shared-memory prefix of a run directory: [`DEFAULT_SHM_PREFIX`] for the default one,
/// `o7s-<hash of the absolute path>` for any other, so IRMds of different run directories (say,
/// one per network namespace in a test) never share a pool name.
pub fn shm_prefix_for(rundir: &Path) -> String {
    let absolute = std::path::absolute(rundir).unwrap_or_else(|_| rundir.to_owned());
    if absolute == Path::new(DEFAULT_RUNDIR) {
        return DEFAULT_SHM_PREFIX.to_owned();
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in absolute.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{DEFAULT_SHM_PREFIX}-{hash:016x}")
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn prefixes_differ_per_rundir() {
        assert_eq!(shm_prefix_for(Path::new("/run/o7s")), "o7s");
        assert_eq!(shm_prefix_for(Path::new("/run/o7s/")), "o7s");
        let a = shm_prefix_for(Path::new("/tmp/a"));
        let b = shm_prefix_for(Path::new("/tmp/b"));
        assert_ne!(a, b);
        assert!(a.starts_with("o7s-") && a.len() == 4 + 16, "{a}");
    }
}
