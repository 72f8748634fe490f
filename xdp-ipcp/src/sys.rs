//! Every system call of the crate, and the only module with `unsafe` code.
//!
//! * AF_PACKET: a raw socket bound to one interface and EtherType, socket options, batched
//!   receive and send (`recvmmsg` / `sendmmsg`) straight from and into caller buffers.
//! * Interface queries: MAC address (`SIOCGIFHWADDR`) and MTU (`SIOCGIFMTU`).
//! * `poll` for readiness, the AF_XDP kicks (`sendto` for TX, `recvfrom` for the fill ring) and
//!   the `XDP_OPTIONS` query that tells copy from zero-copy mode.
//! * [`PoolUmem`]: the pool's data area registered as an AF_XDP UMEM, tied to the pool's lifetime.
//!
//! Errors name the call that failed ([`SysError`]) and keep the kernel's errno.
#![allow(unsafe_code, reason = "this module is the crate's syscall boundary")]

use std::ffi::CString;
use std::io;
use std::marker::PhantomData;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::time::Duration;

use o7s_pool::Pool;
use xdpilone::{Umem, UmemConfig};

/// A system call failed: which one, and the kernel's error.
#[derive(Debug, thiserror::Error)]
#[error("{call} failed: {source}")]
pub struct SysError {
    /// The call (and, where useful, its option), e.g. `"setsockopt(SO_RCVBUFFORCE)"`.
    pub call: &'static str,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

impl SysError {
    fn last(call: &'static str) -> SysError {
        SysError {
            call,
            source: io::Error::last_os_error(),
        }
    }

    /// The errno, if the error came from the kernel.
    #[must_use]
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// Maps a `-1` return to the last OS error, naming the call.
macro_rules! syscall {
    ($call:expr, $e:expr) => {{
        let r = $e;
        if r == -1 {
            Err(SysError::last($call))
        } else {
            Ok(r)
        }
    }};
}

// Not in the libc crate for linux-gnu (values from <asm-generic/socket.h>, <linux/if_packet.h>).
const SO_SNDBUFFORCE: libc::c_int = 32;
const SO_RCVBUFFORCE: libc::c_int = 33;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// Largest batch [`recv_batch`] and [`send_batch`] handle in one call.
pub const MAX_BATCH: usize = 64;

/// Opens an `AF_PACKET` raw socket (non-blocking, close-on-exec) that receives only frames of
/// `ethertype` arriving on interface `ifindex`, and ignores frames this host sends.
///
/// # Errors
/// The failing `socket`, `bind` or `setsockopt` call.
pub fn packet_socket(ifindex: u32, ethertype: u16) -> Result<OwnedFd, SysError> {
    // Protocol 0 until bound: the socket receives nothing before `bind` narrows it to one
    // interface, so no frame of another interface can slip in between.
    // SAFETY: plain socket(2); the result is checked.
    let raw = syscall!("socket(AF_PACKET)", unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // Frames we send must not come back to us (the kernel loops outgoing frames to packet
    // sockets). Best effort: kernels before 4.20 lack the option, and `classify_rx` drops our
    // own frames anyway.
    let _ = set_int_opt(
        fd.as_fd(),
        libc::SOL_PACKET,
        PACKET_IGNORE_OUTGOING,
        1,
        "setsockopt(PACKET_IGNORE_OUTGOING)",
    );
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ethertype.to_be();
    addr.sll_ifindex = i32::try_from(ifindex).map_err(|_| SysError {
        call: "bind(AF_PACKET)",
        source: io::Error::new(io::ErrorKind::InvalidInput, "ifindex above i32::MAX"),
    })?;
    // SAFETY: `addr` is a valid sockaddr_ll, its size is passed, and it outlives the call.
    syscall!("bind(AF_PACKET)", unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// `setsockopt(fd, level, name, &value)` for an `int` option.
///
/// # Errors
/// `call`, with the kernel's errno.
pub fn set_int_opt(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
    call: &'static str,
) -> Result<(), SysError> {
    // SAFETY: `value` is a live c_int and its exact size is passed.
    syscall!(call, unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Sets the socket's receive and send buffers to `bytes`, beyond the sysctl limits when
/// privileged (`SO_*BUFFORCE`), else as far as the limits allow.
///
/// # Errors
/// The failing `setsockopt`.
pub fn set_buffers(fd: BorrowedFd<'_>, bytes: usize) -> Result<(), SysError> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let sol = libc::SOL_SOCKET;
    if set_int_opt(fd, sol, SO_RCVBUFFORCE, v, "setsockopt(SO_RCVBUFFORCE)").is_err() {
        set_int_opt(fd, sol, libc::SO_RCVBUF, v, "setsockopt(SO_RCVBUF)")?;
    }
    if set_int_opt(fd, sol, SO_SNDBUFFORCE, v, "setsockopt(SO_SNDBUFFORCE)").is_err() {
        set_int_opt(fd, sol, libc::SO_SNDBUF, v, "setsockopt(SO_SNDBUF)")?;
    }
    Ok(())
}

/// What [`recv_batch`] learnt about one received frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes written into the buffer (at most its length).
    pub len: usize,
    /// The frame was longer than the buffer and was cut (`MSG_TRUNC`).
    pub truncated: bool,
}

/// Receives up to `bufs.len()` (at most [`MAX_BATCH`]) frames with one `recvmmsg`, frame `i`
/// into `bufs[i]`, without waiting. Returns how many arrived (0 when none is queued).
///
/// # Errors
/// `recvmmsg`, except `EAGAIN`/`EINTR` (which return 0).
pub fn recv_batch(
    fd: BorrowedFd<'_>,
    bufs: &mut [&mut [u8]],
    meta: &mut [RecvMeta],
) -> Result<usize, SysError> {
    let n = bufs.len().min(meta.len()).min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: iovec and mmsghdr are plain data; all-zero is a valid value of both.
    let mut iov: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
    for i in 0..n {
        iov[i].iov_base = bufs[i].as_mut_ptr().cast();
        iov[i].iov_len = bufs[i].len();
        msgs[i].msg_hdr.msg_iov = &raw mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `msgs[..n]` point at `iov[..n]`, which point at the caller's `n` distinct mutable
    // buffers with their lengths; all of them outlive the call. No address or control buffers.
    let r = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            ptr::null_mut(),
        )
    };
    if r < 0 {
        let e = SysError::last("recvmmsg");
        return match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => Ok(0),
            _ => Err(e),
        };
    }
    let got = usize::try_from(r).unwrap_or(0).min(n);
    for i in 0..got {
        meta[i] = RecvMeta {
            len: (msgs[i].msg_len as usize).min(bufs[i].len()),
            truncated: msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        };
    }
    Ok(got)
}

/// Sends up to `frames.len()` (at most [`MAX_BATCH`]) frames with one `sendmmsg` on a bound
/// packet socket, without waiting. Returns how many the kernel took, from the front (0 when
/// its queue is full).
///
/// # Errors
/// `sendmmsg`, except `EAGAIN`/`ENOBUFS`/`EINTR` (which return 0).
pub fn send_batch(fd: BorrowedFd<'_>, frames: &[&[u8]]) -> Result<usize, SysError> {
    let n = frames.len().min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: iovec and mmsghdr are plain data; all-zero is a valid value of both.
    let mut iov: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
    for i in 0..n {
        iov[i].iov_base = frames[i].as_ptr().cast_mut().cast();
        iov[i].iov_len = frames[i].len();
        msgs[i].msg_hdr.msg_iov = &raw mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `msgs[..n]` point at `iov[..n]`, which point at the caller's frames; the kernel
    // only reads them. Everything outlives the call. The socket is bound, so no address.
    let r = unsafe {
        libc::sendmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        let e = SysError::last("sendmmsg");
        return match e.raw_os_error() {
            Some(libc::EAGAIN | libc::ENOBUFS | libc::EINTR) => Ok(0),
            _ => Err(e),
        };
    }
    Ok(usize::try_from(r).unwrap_or(0))
}

fn ifreq_for(ifname: &str) -> Result<libc::ifreq, SysError> {
    let name = CString::new(ifname).map_err(|_| SysError {
        call: "ioctl(SIOCGIF*)",
        source: io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"),
    })?;
    let bytes = name.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(SysError {
            call: "ioctl(SIOCGIF*)",
            source: io::Error::new(io::ErrorKind::InvalidInput, "interface name too long"),
        });
    }
    // SAFETY: ifreq is plain data (a name and a union of plain data); all-zero is valid.
    let mut req: libc::ifreq = unsafe { zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// A throwaway socket for interface ioctls: any socket reaches the device ioctls, and an
/// AF_UNIX one needs no privilege.
fn ioctl_socket() -> Result<OwnedFd, SysError> {
    // SAFETY: plain socket(2); the result is checked.
    let raw = syscall!("socket(AF_UNIX) for ioctl", unsafe {
        libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The MAC address of `ifname` in the calling thread's network namespace.
///
/// # Errors
/// `ioctl(SIOCGIFHWADDR)` (e.g. `ENODEV`).
pub fn if_hwaddr(ifname: &str) -> Result<[u8; 6], SysError> {
    let sock = ioctl_socket()?;
    let mut req = ifreq_for(ifname)?;
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; SIOCGIFHWADDR writes a
    // sockaddr into its union, which is large enough.
    syscall!("ioctl(SIOCGIFHWADDR)", unsafe {
        libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &raw mut req)
    })?;
    // SAFETY: the kernel filled the `ifru_hwaddr` member of the union.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (dst, &src) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *dst = src as u8;
    }
    Ok(mac)
}

/// The MTU of `ifname` in the calling thread's network namespace.
///
/// # Errors
/// `ioctl(SIOCGIFMTU)`.
pub fn if_mtu(ifname: &str) -> Result<u32, SysError> {
    let sock = ioctl_socket()?;
    let mut req = ifreq_for(ifname)?;
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; SIOCGIFMTU writes an int into
    // its union.
    syscall!("ioctl(SIOCGIFMTU)", unsafe {
        libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &raw mut req)
    })?;
    // SAFETY: the kernel filled the `ifru_mtu` member of the union.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(u32::try_from(mtu).unwrap_or(0))
}

/// `struct ethtool_channels` (linux/ethtool.h).
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// How many RX queues `ifname` has in use (`ETHTOOL_GCHANNELS`: combined + rx-only
/// channels), in the calling thread's network namespace.
///
/// # Errors
/// `ioctl(SIOCETHTOOL)`: `EOPNOTSUPP` for drivers without channel reporting.
pub fn if_rx_queues(ifname: &str) -> Result<u32, SysError> {
    let sock = ioctl_socket()?;
    let mut req = ifreq_for(ifname)?;
    let mut channels = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..EthtoolChannels::default()
    };
    req.ifr_ifru.ifru_data = (&raw mut channels).cast();
    // SAFETY: `req` names the device and points at a live ethtool_channels, which
    // ETHTOOL_GCHANNELS fills in; nothing else refers to it during the call.
    syscall!("ioctl(SIOCETHTOOL, ETHTOOL_GCHANNELS)", unsafe {
        libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &raw mut req)
    })?;
    Ok(channels.combined_count + channels.rx_count)
}

/// Waits until `fd` is readable or `timeout` passes; returns whether it is readable.
///
/// # Errors
/// `poll`, except `EINTR` (which returns false).
pub fn poll_readable(fd: RawFd, timeout: Duration) -> Result<bool, SysError> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, count 1.
    let r = unsafe { libc::poll(&raw mut pfd, 1, ms) };
    if r < 0 {
        let e = SysError::last("poll");
        return if e.raw_os_error() == Some(libc::EINTR) {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(r > 0 && pfd.revents & libc::POLLIN != 0)
}

/// The most fds [`poll_readable_set`] waits on (RX queues served by one backend).
pub const MAX_POLL_FDS: usize = 64;

/// Waits until one of `fds` (the first [`MAX_POLL_FDS`]) or `extra` (skipped when negative)
/// is readable (or hung up), or `timeout` passes; returns (any of `fds`, `extra`). No
/// allocation.
///
/// # Errors
/// `poll`, except `EINTR` (which returns none ready).
pub fn poll_readable_set(
    fds: &[RawFd],
    extra: RawFd,
    timeout: Duration,
) -> Result<(bool, bool), SysError> {
    let unused = libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    };
    let mut pfds = [unused; MAX_POLL_FDS + 1];
    let n = fds.len().min(MAX_POLL_FDS);
    for (p, &fd) in pfds.iter_mut().zip(&fds[..n]) {
        p.fd = fd;
        p.events = libc::POLLIN;
    }
    pfds[n].fd = extra;
    pfds[n].events = libc::POLLIN;
    // Rounded up: a sub-millisecond timeout must not become a busy poll.
    let ms = libc::c_int::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
    // SAFETY: the first n + 1 entries of `pfds` are valid pollfds (a negative fd is ignored).
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), (n + 1) as libc::nfds_t, ms) };
    if r < 0 {
        let e = SysError::last("poll");
        return if e.raw_os_error() == Some(libc::EINTR) {
            Ok((false, false))
        } else {
            Err(e)
        };
    }
    let ready = |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
    Ok((pfds[..n].iter().any(ready), ready(&pfds[n])))
}

/// Outcome of an AF_XDP TX kick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// The kernel went through the TX ring.
    Done,
    /// The kernel stopped early (copy mode sends 32 frames a call, or the device queue or the
    /// completion ring is full): kick again.
    Again,
}

/// Kicks an AF_XDP socket's TX ring (`sendto` with no data, `MSG_DONTWAIT`).
///
/// # Errors
/// `sendto`, except `EAGAIN`/`EBUSY`/`ENOBUFS`/`EINTR` ([`Kick::Again`]).
pub fn xsk_kick_tx(fd: RawFd) -> Result<Kick, SysError> {
    // SAFETY: a zero-length send with no buffer and no address; the kernel reads nothing. A
    // stale fd can only make the call fail (or kick another socket), never touch memory.
    let r = unsafe { libc::sendto(fd, ptr::null(), 0, libc::MSG_DONTWAIT, ptr::null(), 0) };
    if r < 0 {
        let e = SysError::last("sendto (AF_XDP TX kick)");
        return match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::EINTR) => Ok(Kick::Again),
            _ => Err(e),
        };
    }
    Ok(Kick::Done)
}

/// Wakes the kernel to consume an AF_XDP fill ring (`recvfrom` with no buffer, as libxdp does).
pub fn xsk_kick_fill(fd: RawFd) {
    // SAFETY: a zero-length receive with no buffer and no address; the kernel writes nothing.
    // Its result carries no information (EAGAIN is normal), so it is ignored.
    let _ = unsafe {
        libc::recvfrom(
            fd,
            ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
}

/// Whether a bound AF_XDP socket runs in zero-copy mode (`XDP_OPTIONS`).
///
/// # Errors
/// `getsockopt(XDP_OPTIONS)`.
pub fn xsk_zero_copy(fd: RawFd) -> Result<bool, SysError> {
    let mut opts = libc::xdp_options { flags: 0 };
    let mut len = size_of::<libc::xdp_options>() as libc::socklen_t;
    // SAFETY: `opts` and `len` are live and `len` is its exact size.
    syscall!("getsockopt(XDP_OPTIONS)", unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            libc::XDP_OPTIONS,
            (&raw mut opts).cast(),
            &raw mut len,
        )
    })?;
    Ok(opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0)
}

/// The pool's data area registered as an AF_XDP UMEM (`XDP_UMEM_REG`). Borrows the pool, so
/// the mapping outlives the registration.
pub struct PoolUmem<'p> {
    umem: Umem,
    _pool: PhantomData<&'p Pool>,
}

impl std::fmt::Debug for PoolUmem<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolUmem").finish_non_exhaustive()
    }
}

impl<'p> PoolUmem<'p> {
    /// Registers `pool.umem()` (chunk = the frame class's 4096 bytes, headroom 0) with fill and
    /// completion rings of the given sizes.
    ///
    /// # Errors
    /// The kernel's errno from `socket(AF_XDP)` or `setsockopt(XDP_UMEM_REG)` (as an
    /// `io::Error`; xdpilone's `Errno` is not a `std::error::Error`).
    pub fn register(pool: &'p Pool, fill_size: u32, complete_size: u32) -> io::Result<Self> {
        let region = pool.umem();
        let base = NonNull::new(region.base)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "null UMEM base"))?;
        let area = NonNull::slice_from_raw_parts(base, region.len);
        let config = UmemConfig {
            fill_size,
            complete_size,
            frame_size: region.chunk_size,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: `region` is the pool's data area: page-aligned, `len` bytes, mapped for as
        // long as the pool, which `'p` keeps alive for as long as this value (and so the Umem).
        // The memory is shared with the kernel by design; the pool's descriptors say who may
        // touch each block.
        let umem = unsafe { Umem::new(config, area) }.map_err(errno)?;
        Ok(PoolUmem {
            umem,
            _pool: PhantomData,
        })
    }

    /// The registered UMEM.
    #[must_use]
    pub fn umem(&self) -> &Umem {
        &self.umem
    }
}

/// xdpilone's errno as an `io::Error` (it reports some as negative values).
#[must_use]
pub fn errno(e: xdpilone::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.get_raw().abs())
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn loopback_queries() {
        // The loopback interface exists in every namespace and has no MAC (all zero).
        let mtu = if_mtu("lo").expect("SIOCGIFMTU lo");
        assert!(mtu >= 1500, "{mtu}");
        assert_eq!(if_hwaddr("lo").expect("SIOCGIFHWADDR lo"), [0; 6]);
        let err = if_mtu("o7s-no-such-if").unwrap_err();
        assert_eq!(err.call, "ioctl(SIOCGIFMTU)");
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
    }
}
