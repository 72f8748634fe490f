//! A minimal writer for the `newc` cpio format the kernel unpacks as an initramfs.

use std::collections::BTreeSet;
use std::io::{self, Write};

/// An archive being built in memory. Parent directories are added automatically.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let name = name.trim_start_matches('/');
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & S_IFDIR == S_IFDIR { 2 } else { 1 },
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn parents(&mut self, path: &str) {
        let path = path.trim_start_matches('/');
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            end += i;
            self.dir(&path[..end]);
            end += 1;
        }
    }

    /// A directory (mode 0755); adding one twice is harmless.
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/').to_string();
        if path.is_empty() || self.dirs.contains(&path) {
            return;
        }
        self.parents(&path);
        self.dirs.insert(path.clone());
        self.entry(&path, S_IFDIR | 0o755, (0, 0), &[]);
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.parents(path);
        self.entry(path, S_IFREG | perm, (0, 0), data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes());
    }

    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) {
        self.parents(path);
        self.entry(path, S_IFCHR | 0o600, (major, minor), &[]);
    }

    /// Ends the archive and writes it.
    pub fn finish(mut self, w: &mut impl Write) -> io::Result<()> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        w.write_all(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let mut c = Cpio::new();
        c.file("/a/b/c", 0o644, b"hello");
        let mut out = Vec::new();
        c.finish(&mut out).unwrap();
        assert!(out.len().is_multiple_of(4));
        let text = String::from_utf8_lossy(&out);
        // Parents come before the file, the trailer last.
        let (a, ab, abc) = (
            text.find("a\0").unwrap(),
            text.find("a/b\0").unwrap(),
            text.find("a/b/c\0").unwrap(),
        );
        assert!(a < ab && ab < abc);
        assert!(text.contains("hello"));
        assert!(text.trim_end_matches('\0').ends_with("TRAILER!!!"));
        assert_eq!(&out[..6], b"070701");
    }
}
