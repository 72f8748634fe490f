//! Programs any uid may run, for tests that run processes as an unprivileged uid (the build
//! tree may not be enterable by it).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::temp_dir;

/// Programs linked (or copied) into a fresh directory `temp_dir(tag)` of mode 0755, each of
/// mode 0755; the directory is removed on drop.
pub struct AnyoneBin(PathBuf);

impl AnyoneBin {
    /// Links (or copies) each `(program, name)` to `<dir>/<name>`.
    pub fn new(tag: &str, programs: &[(impl AsRef<Path>, &str)]) -> Self {
        let dir = temp_dir(tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bin dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for (program, name) in programs {
            let program = program.as_ref();
            let path = dir.join(name);
            if std::fs::hard_link(program, &path).is_err() {
                std::fs::copy(program, &path)
                    .unwrap_or_else(|e| panic!("copy {}: {e}", program.display()));
                // A copy just written may still be open for writing in a child forked meanwhile
                // (ETXTBSY on exec): give such a child time to exec.
                std::thread::sleep(Duration::from_millis(200));
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        Self(dir)
    }

    /// The program of that name in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for AnyoneBin {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
