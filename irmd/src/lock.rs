//! The IRMd's lockfile, `<rundir>/irmd.lock`: one IRMd per run directory.
//!
//! The file holds the owner's pid as text, and the owner keeps an exclusive `flock` on it for
//! its whole life. The kernel drops the lock when the owner dies, however it dies, so:
//! * lock taken by someone else → a live IRMd owns the run directory: refuse to start;
//! * lock free but the file names a pid → the previous IRMd died without cleaning up: its
//!   leftovers (socket, shared memory) are ours to remove;
//! * lock free and the file empty or absent → a clean start.
//!
//! Liveness never depends on `kill(pid, 0)`, which a reused pid fools.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another IRMd holds the lock.
    #[error(
        "another irmd (pid {}) is running on {}",
        pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
        path.display()
    )]
    Held {
        /// The lockfile.
        path: PathBuf,
        /// The pid written in it, if readable.
        pid: Option<u32>,
    },
    /// A file operation on the lockfile failed.
    #[error("{step} {}: {source}", path.display())]
    Io {
        /// What was being done.
        step: &'static str,
        /// The lockfile.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The held lock. [`Lockfile::release`] removes the file; dropping it without that (a crash)
/// leaves a stale file for the next IRMd to find.
#[derive(Debug)]
pub struct Lockfile {
    file: File,
    path: PathBuf,
    stale_pid: Option<u32>,
}

impl Lockfile {
    /// Takes the lock at `path` and writes our pid into it.
    pub fn acquire(path: &Path) -> Result<Self, LockError> {
        let err = |step, source| LockError::Io {
            step,
            path: path.to_owned(),
            source,
        };
        // Another IRMd may remove the file between our open and our flock; then we hold a lock
        // on a dead inode and must start over.
        for _ in 0..10 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(path)
                .map_err(|e| err("cannot open lockfile", e))?;
            if let Err(e) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
                if e == rustix::io::Errno::WOULDBLOCK {
                    return Err(LockError::Held {
                        path: path.to_owned(),
                        pid: read_pid(&mut file),
                    });
                }
                return Err(err("cannot flock lockfile", e.into()));
            }
            let same = match (file.metadata(), std::fs::metadata(path)) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if !same {
                continue;
            }
            let stale_pid = read_pid(&mut file);
            file.set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| writeln!(file, "{}", std::process::id()))
                .and_then(|()| file.sync_data())
                .map_err(|e| err("cannot write lockfile", e))?;
            return Ok(Self {
                file,
                path: path.to_owned(),
                stale_pid,
            });
        }
        Err(err(
            "lockfile keeps being replaced",
            io::Error::from(io::ErrorKind::WouldBlock),
        ))
    }

    /// The pid of a previous IRMd that died holding this run directory, if any.
    pub fn stale_pid(&self) -> Option<u32> {
        self.stale_pid
    }

    /// The lockfile's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the lockfile (still holding the lock, so nobody starts in between) and releases
    /// the lock.
    pub fn release(self) -> io::Result<()> {
        let result = std::fs::remove_file(&self.path);
        drop(self.file);
        result
    }
}

/// The pid written in a lockfile, if it holds one.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(64).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod test {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("o7s-lock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("irmd.lock")
    }

    #[test]
    fn held_stale_and_clean() {
        let path = tmp("hsc");
        let lock = Lockfile::acquire(&path).unwrap();
        assert_eq!(lock.stale_pid(), None);
        match Lockfile::acquire(&path) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("second lock: {other:?}"),
        }
        // Dropped without release: a crash. The next owner sees the stale pid.
        drop(lock);
        let lock = Lockfile::acquire(&path).unwrap();
        assert_eq!(lock.stale_pid(), Some(std::process::id()));
        lock.release().unwrap();
        assert!(!path.exists());
        let lock = Lockfile::acquire(&path).unwrap();
        assert_eq!(lock.stale_pid(), None);
        lock.release().unwrap();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
