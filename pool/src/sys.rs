//! The one place where the pool talks to the kernel: shared-memory objects, mappings, futexes,
//! robust mutex attributes and process liveness. Every `unsafe` call into libc lives here.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Maps `-1` returns to `io::Error::last_os_error()`.
macro_rules! syscall {
    ($call:expr) => {{
        let ret = $call;
        if ret == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }};
}

fn shm_name(name: &str) -> io::Result<CString> {
    if name.is_empty() || name.contains('/') || name.len() > 200 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad shared-memory name {name:?}: 1..=200 characters, no '/'"),
        ));
    }
    CString::new(format!("/{name}"))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in shared-memory name"))
}

/// `shm_open(O_CREAT | O_EXCL | O_RDWR)` with `mode`, then `fchmod` (the umask must not weaken or
/// widen what we asked for).
pub fn shm_create(name: &str, mode: u32) -> io::Result<OwnedFd> {
    let cname = shm_name(name)?;
    // SAFETY: cname is a valid NUL-terminated string; shm_open returns a new fd or -1.
    let fd = syscall!(unsafe {
        libc::shm_open(
            cname.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
            mode as libc::mode_t,
        )
    })?;
    // SAFETY: shm_open just returned this fd and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fd is a valid open descriptor.
    syscall!(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })?;
    Ok(fd)
}

/// `shm_open(O_RDWR)` of an existing object.
pub fn shm_open(name: &str) -> io::Result<OwnedFd> {
    let cname = shm_name(name)?;
    let flags = libc::O_RDWR | libc::O_CLOEXEC;
    // SAFETY: cname is a valid NUL-terminated string.
    let fd = syscall!(unsafe { libc::shm_open(cname.as_ptr(), flags, 0) })?;
    // SAFETY: shm_open just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn shm_unlink(name: &str) -> io::Result<()> {
    let cname = shm_name(name)?;
    // SAFETY: cname is a valid NUL-terminated string.
    syscall!(unsafe { libc::shm_unlink(cname.as_ptr()) }).map(drop)
}

pub fn ftruncate(fd: &OwnedFd, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "object too large"))?;
    // SAFETY: fd is a valid open descriptor.
    syscall!(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }).map(drop)
}

pub fn fchown(fd: &OwnedFd, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let uid = uid.unwrap_or(u32::MAX);
    let gid = gid.unwrap_or(u32::MAX);
    // SAFETY: fd is valid; -1 (u32::MAX) leaves that id unchanged.
    syscall!(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }).map(drop)
}

/// Size, owner uid, gid and permission bits of an open object.
pub fn fstat(fd: &OwnedFd) -> io::Result<(u64, u32, u32, u32)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: st points to writable memory of the right size; fd is valid.
    syscall!(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded and filled the struct.
    let st = unsafe { st.assume_init() };
    Ok((st.st_size as u64, st.st_uid, st.st_gid, st.st_mode & 0o7777))
}

/// A shared, read-write mapping of a whole object. Unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all access to it goes through atomics or through
// block ownership that the pool protocol enforces across threads and processes alike.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn map(fd: &OwnedFd, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh shared mapping chosen by the kernel; we check for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Self { base, len })
    }

    pub fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base/len describe a mapping we created and nobody can use after drop (all
        // borrows of the pool end before the pool, which owns the mapping, is dropped).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Waits while `*word == expected`, at most `timeout` (None: forever). Returns on wake-up, value
/// change, signal or time-out; callers re-check their condition.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: word points into a live shared mapping (FUTEX_WAIT without PRIVATE works across
    // processes); ts_ptr is null or points to a timespec that outlives the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

/// Wakes every waiter on `word`, in any process.
pub fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: word points into a live shared mapping.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

/// The most words one `futex_waitv` call takes (the kernel's `FUTEX_WAITV_MAX`).
pub const FUTEX_WAITV_MAX: usize = 128;

/// How a [`futex_waitv`] call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waitv {
    /// Woken on word `i` (the kernel names one; others may have been woken too).
    Woken(usize),
    /// Some word did not hold its expected value when the call started.
    Changed,
    /// The timeout passed.
    TimedOut,
    /// A signal interrupted the wait.
    Interrupted,
}

/// `struct futex_waitv` of `<linux/futex.h>`.
#[repr(C)]
struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

/// `FUTEX2_SIZE_U32` (shared, not private: the words may live in shared mappings).
const FUTEX2_SIZE_U32: u32 = 0x02;

/// Waits while every `words[i].0 == words[i].1`, at most `timeout` (None: forever), with one
/// `futex_waitv` (Linux 5.16). At most [`FUTEX_WAITV_MAX`] words; no allocation.
///
/// # Errors
/// `EINVAL` for more than [`FUTEX_WAITV_MAX`] words or none, `ENOSYS` on older kernels.
pub fn futex_waitv(words: &[(&AtomicU32, u32)], timeout: Option<Duration>) -> io::Result<Waitv> {
    if words.is_empty() || words.len() > FUTEX_WAITV_MAX {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut waiters = [const {
        FutexWaitv {
            val: 0,
            uaddr: 0,
            flags: 0,
            reserved: 0,
        }
    }; FUTEX_WAITV_MAX];
    for (w, (word, expected)) in waiters.iter_mut().zip(words) {
        w.val = u64::from(*expected);
        w.uaddr = word.as_ptr() as u64;
        w.flags = FUTEX2_SIZE_U32;
    }
    // futex_waitv takes an absolute CLOCK_MONOTONIC deadline.
    let deadline = match timeout {
        None => None,
        Some(t) => {
            let mut now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `now` is a valid, writable timespec.
            syscall!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) })?;
            let nanos = i128::from(now.tv_nsec) + i128::from(t.subsec_nanos());
            let secs = i128::from(now.tv_sec)
                + i128::from(t.as_secs().min(i64::MAX as u64))
                + nanos / 1_000_000_000;
            Some(libc::timespec {
                tv_sec: secs.min(i128::from(i64::MAX)) as libc::time_t,
                tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
            })
        }
    };
    let ts_ptr = deadline
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `waiters[..words.len()]` are initialised futex_waitv entries whose addresses point
    // at live `AtomicU32`s (borrowed for the call); ts_ptr is null or a timespec that outlives
    // the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex_waitv,
            waiters.as_ptr(),
            words.len() as libc::c_uint,
            0 as libc::c_uint,
            ts_ptr,
            libc::CLOCK_MONOTONIC,
        )
    };
    if r >= 0 {
        return Ok(Waitv::Woken(r as usize));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) => Ok(Waitv::Changed),
        Some(libc::ETIMEDOUT) => Ok(Waitv::TimedOut),
        Some(libc::EINTR) => Ok(Waitv::Interrupted),
        _ => Err(e),
    }
}

/// Initialises a process-shared, robust pthread mutex in place.
///
/// # Safety
/// `m` must point to writable memory of `pthread_mutex_t` size that no process is using yet.
pub unsafe fn robust_mutex_init(m: *mut libc::pthread_mutex_t) -> io::Result<()> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
    // SAFETY: attr is writable; each call's result is checked; attr is destroyed at the end.
    unsafe {
        check(libc::pthread_mutexattr_init(attr.as_mut_ptr()))?;
        let res = (|| {
            check(libc::pthread_mutexattr_setpshared(
                attr.as_mut_ptr(),
                libc::PTHREAD_PROCESS_SHARED,
            ))?;
            check(libc::pthread_mutexattr_setrobust(
                attr.as_mut_ptr(),
                PTHREAD_MUTEX_ROBUST,
            ))?;
            check(libc::pthread_mutex_init(m, attr.as_ptr()))
        })();
        libc::pthread_mutexattr_destroy(attr.as_mut_ptr());
        res
    }
}

const PTHREAD_MUTEX_ROBUST: libc::c_int = 1;

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(ret))
    }
}

/// Outcome of locking a robust mutex.
pub enum LockOutcome {
    Locked,
    /// The previous owner died holding it: the protected data must be repaired, then
    /// [`robust_mutex_consistent`] called, before unlocking.
    OwnerDied,
}

/// # Safety
/// `m` must point to a mutex initialised by [`robust_mutex_init`] in a live mapping.
pub unsafe fn robust_mutex_lock(m: *mut libc::pthread_mutex_t) -> io::Result<LockOutcome> {
    // SAFETY: guaranteed by the caller.
    match unsafe { libc::pthread_mutex_lock(m) } {
        0 => Ok(LockOutcome::Locked),
        libc::EOWNERDEAD => Ok(LockOutcome::OwnerDied),
        err => Err(io::Error::from_raw_os_error(err)),
    }
}

/// As [`robust_mutex_lock`] without waiting: `Ok(None)` while another thread holds it.
///
/// # Safety
/// As for [`robust_mutex_lock`].
pub unsafe fn robust_mutex_trylock(
    m: *mut libc::pthread_mutex_t,
) -> io::Result<Option<LockOutcome>> {
    // SAFETY: guaranteed by the caller.
    match unsafe { libc::pthread_mutex_trylock(m) } {
        0 => Ok(Some(LockOutcome::Locked)),
        libc::EOWNERDEAD => Ok(Some(LockOutcome::OwnerDied)),
        libc::EBUSY => Ok(None),
        err => Err(io::Error::from_raw_os_error(err)),
    }
}

/// # Safety
/// `m` must be locked by this thread after an `OwnerDied` outcome.
pub unsafe fn robust_mutex_consistent(m: *mut libc::pthread_mutex_t) {
    // SAFETY: guaranteed by the caller.
    unsafe { libc::pthread_mutex_consistent(m) };
}

/// # Safety
/// `m` must be locked by this thread.
pub unsafe fn robust_mutex_unlock(m: *mut libc::pthread_mutex_t) {
    // SAFETY: guaranteed by the caller.
    unsafe { libc::pthread_mutex_unlock(m) };
}

pub fn getpid() -> u32 {
    std::process::id()
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// True unless the kernel says no process `pid` exists. A zombie counts as dead: it holds no
/// mappings and runs no code.
pub fn process_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let ret = unsafe { libc::kill(pid as libc::pid_t, 0) };
    if ret == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => ret == 0,
    }
}

/// The gid of a group by name, if it exists.
pub fn group_gid(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    let mut grp = std::mem::MaybeUninit::<libc::group>::uninit();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getgrnam_r is the thread-safe variant.
    let ret = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            grp.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if ret != 0 || result.is_null() {
        return None;
    }
    // SAFETY: getgrnam_r succeeded and result points at grp.
    Some(unsafe { (*result).gr_gid })
}

/// Whether the calling process may use the shared pool: root, or member of `group`.
pub fn in_group_or_root(group: &str) -> bool {
    if geteuid() == 0 {
        return true;
    }
    let Some(gid) = group_gid(group) else {
        return false;
    };
    // SAFETY: getegid cannot fail.
    if unsafe { libc::getegid() } == gid {
        return true;
    }
    let mut groups = vec![0 as libc::gid_t; 256];
    // SAFETY: groups has room for groups.len() entries.
    let n = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    n > 0 && groups[..n as usize].contains(&gid)
}
