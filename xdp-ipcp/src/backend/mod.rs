//! The I/O backends of the Ethernet layer, behind one interface ([`Backend`]).
//!
//! * [`xdp::XdpBackend`]: the XDP steering program (native or generic) plus one AF_XDP socket
//!   per RX queue, whose UMEM is the pool's data area: frames arrive in pool blocks and leave
//!   from them, with no copy in user space (the kernel copies on copy-mode drivers such as veth).
//! * [`packet::PacketBackend`]: an AF_PACKET raw socket bound to the interface and EtherType,
//!   batched with `recvmmsg`/`sendmmsg`, receiving straight into pool blocks.
//!
//! [`open`] picks one by [`ModeChoice`]; `auto` tries native XDP, then generic XDP, then
//! AF_PACKET, and logs what is in effect ([`BackendInfo`]).
//!
//! Both move [`Packet`]s whose payload window is the whole Ethernet frame: received packets come
//! out of [`Backend::recv`] that way, and [`Backend::send`] transmits the window as one frame.

pub mod packet;
pub mod xdp;

use core::fmt;
use std::io;

use o7s_pool::{Packet, Pool};
use tracing::{debug, info, warn};

use crate::sys::SysError;

pub use packet::PacketBackend;
pub use xdp::XdpBackend;

/// Which backend to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModeChoice {
    /// Native XDP, else generic XDP, else AF_PACKET.
    #[default]
    Auto,
    /// XDP in the driver only.
    Native,
    /// XDP in the core stack (skb mode) only.
    Generic,
    /// AF_PACKET only.
    Packet,
}

impl core::str::FromStr for ModeChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "auto" => Ok(ModeChoice::Auto),
            "native" => Ok(ModeChoice::Native),
            "generic" => Ok(ModeChoice::Generic),
            "packet" => Ok(ModeChoice::Packet),
            _ => Err(Error::Config(
                "mode must be auto, native, generic or packet",
            )),
        }
    }
}

/// Whether AF_XDP may, must or must not use zero-copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZeroCopy {
    /// Zero-copy where the driver supports it, else copy mode (the kernel falls back).
    #[default]
    Auto,
    /// Zero-copy or fail (`XDP_ZEROCOPY`).
    Require,
    /// Copy mode (`XDP_COPY`).
    Never,
}

/// AF_XDP ring sizes (powers of two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSizes {
    /// Fill ring entries (the frames kept lent to the kernel for RX).
    pub fill: u32,
    /// Completion ring entries.
    pub completion: u32,
    /// RX ring entries.
    pub rx: u32,
    /// TX ring entries.
    pub tx: u32,
}

impl Default for RingSizes {
    /// 4096 each: this VM kind stalls for tens of ms at times, and small rings drop frames.
    fn default() -> Self {
        RingSizes {
            fill: 4096,
            completion: 4096,
            rx: 4096,
            tx: 4096,
        }
    }
}

/// How a backend is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Interface name, resolved in the calling thread's network namespace.
    pub iface: String,
    /// EtherType to receive (host byte order).
    pub ethertype: u16,
    /// Which backend.
    pub mode: ModeChoice,
    /// AF_XDP zero-copy policy.
    pub zero_copy: ZeroCopy,
    /// AF_XDP ring sizes.
    pub rings: RingSizes,
    /// RX queues served by AF_XDP sockets; empty (the default) = every RX queue the device
    /// has in use (`ETHTOOL_GCHANNELS`; queue 0 alone where the driver does not say). A frame
    /// that arrives on a queue without a socket cannot be redirected: the program passes it to
    /// the kernel and counts a failed redirect.
    pub queues: Vec<u32>,
    /// Largest frame (MTU + 14-byte Ethernet header) the AF_PACKET backend receives.
    pub max_frame: usize,
    /// AF_PACKET socket buffer size in bytes.
    pub socket_buffer: usize,
}

impl BackendConfig {
    /// Defaults for `iface`: auto mode, EtherType 0xA000, rings of 4096, every RX queue,
    /// 1514-byte frames, 8 MiB socket buffers.
    #[must_use]
    pub fn new(iface: &str) -> BackendConfig {
        BackendConfig {
            iface: iface.to_owned(),
            ethertype: o7s_proto::dix::DEFAULT_ETHERTYPE,
            mode: ModeChoice::Auto,
            zero_copy: ZeroCopy::Auto,
            rings: RingSizes::default(),
            queues: Vec::new(),
            max_frame: 1514,
            socket_buffer: 8 << 20,
        }
    }
}

/// Every RX queue `iface` has in use, or queue 0 when the driver does not report channels.
fn device_queues(iface: &str) -> Vec<u32> {
    match crate::sys::if_rx_queues(iface) {
        Ok(n) if n as usize > crate::sys::MAX_POLL_FDS => {
            let max = crate::sys::MAX_POLL_FDS;
            warn!(
                iface,
                queues = n,
                "serving the first {max} RX queues only: frames steered to the others reach \
                 the kernel (reduce them with `ethtool -L {iface} combined {max}`)"
            );
            (0..max as u32).collect()
        }
        Ok(n) if n > 0 => (0..n).collect(),
        Ok(_) => vec![0],
        Err(e) => {
            debug!(iface, error = %e, "no channel count from the driver: serving queue 0");
            vec![0]
        }
    }
}

/// Which backend is in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// AF_XDP with the program attached in this mode.
    Xdp(o7s_ebpf::Mode),
    /// AF_PACKET.
    Packet,
}

/// The backend in effect, as logged at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendInfo {
    /// AF_XDP (native or generic) or AF_PACKET.
    pub kind: BackendKind,
    /// AF_XDP sockets run in zero-copy mode (false: copy mode, or AF_PACKET).
    pub zero_copy: bool,
    /// RX queues served (one AF_XDP socket each; AF_PACKET: 1).
    pub queues: u32,
}

impl fmt::Display for BackendInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            BackendKind::Xdp(mode) => {
                let copy = if self.zero_copy { "zero-copy" } else { "copy" };
                match self.queues {
                    0 | 1 => write!(f, "xdp {mode} ({copy})"),
                    n => write!(f, "xdp {mode} ({copy}, {n} queues)"),
                }
            }
            BackendKind::Packet => f.write_str("packet"),
        }
    }
}

/// Backend counters. They only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Frames handed out by [`Backend::recv`].
    pub rx_frames: u64,
    /// Frames given to the kernel for sending.
    pub tx_frames: u64,
    /// Frames received while the pool had no block (AF_PACKET: read into scratch and dropped),
    /// or fill-ring top-ups that found the pool empty (AF_XDP).
    pub rx_no_buffer: u64,
    /// Frames longer than the receive buffer (dropped).
    pub rx_truncated: u64,
    /// RX descriptors the pool did not recognise as lent blocks (dropped; a bug if ever seen).
    pub rx_bad_desc: u64,
    /// Frames copied into a frame block because their own block cannot be an AF_XDP TX
    /// descriptor (larger than a UMEM chunk).
    pub tx_copied: u64,
    /// TX kicks (`sendto`) done.
    pub tx_kicks: u64,
    /// Blocks the kernel gave back on the completion ring.
    pub tx_completed: u64,
}

/// The kernel's counters of the AF_XDP sockets (`getsockopt(XDP_STATISTICS)`), summed over the
/// backend's sockets. They only grow while the sockets live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Received frames the kernel dropped for any reason (e.g. larger than a chunk).
    pub rx_dropped: u64,
    /// Frames dropped because the RX ring was full (user space did not keep up).
    pub rx_ring_full: u64,
    /// Times the kernel wanted a block and found the fill ring empty (the frame was dropped).
    pub fill_ring_empty: u64,
    /// Invalid descriptors on the fill ring.
    pub rx_invalid: u64,
    /// Invalid TX descriptors (bad address or length), skipped by the kernel.
    pub tx_invalid: u64,
    /// Times the kernel found the TX ring empty when woken.
    pub tx_ring_empty: u64,
}

impl XskStats {
    /// Adds one socket's counters.
    pub fn add(&mut self, s: &xdpilone::xdp::XdpStatisticsV2) {
        self.rx_dropped += s.rx_dropped;
        self.rx_ring_full += s.rx_ring_full;
        self.fill_ring_empty += s.rx_fill_ring_empty_descs;
        self.rx_invalid += s.rx_invalid_descs;
        self.tx_invalid += s.tx_invalid_descs;
        self.tx_ring_empty += s.tx_ring_empty_descs;
    }
}

/// What failed in a backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// An AF_XDP setup step failed (xdpilone), with the kernel's errno.
    #[error("AF_XDP {step} failed: {source}")]
    Xsk {
        /// The step, e.g. `"bind"`.
        step: &'static str,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// Loading or attaching the XDP program, or registering the socket, failed.
    #[error(transparent)]
    Ebpf(#[from] o7s_ebpf::Error),
    /// The pool refused an operation.
    #[error("pool: {0}")]
    Pool(#[from] o7s_pool::Error),
    /// An invalid configuration.
    #[error("invalid backend configuration: {0}")]
    Config(&'static str),
    /// The interface cannot be used.
    #[error("interface {iface:?}: {source}")]
    Interface {
        /// Its name.
        iface: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The TX queue is full: poll (or wait) and try again.
    #[error("TX queue full")]
    WouldBlock,
    /// Every mode `auto` tried failed; the last error.
    #[error("no backend works on {iface:?} (native, generic and packet all failed): {last}")]
    NoBackend {
        /// The interface.
        iface: String,
        /// The AF_PACKET attempt's error.
        #[source]
        last: Box<Error>,
    },
}

impl Error {
    pub(crate) fn xsk(step: &'static str) -> impl FnOnce(xdpilone::Errno) -> Error {
        move |e| Error::Xsk {
            step,
            source: crate::sys::errno(e),
        }
    }
}

/// One Ethernet I/O backend. Packets carry whole frames (header included) in their window.
pub trait Backend<'p> {
    /// The backend in effect.
    fn info(&self) -> BackendInfo;

    /// Receives up to `max` frames without waiting and hands each to `deliver` as an owned
    /// packet whose window is the frame. Returns how many were delivered.
    ///
    /// # Errors
    /// A failing system call; frames already delivered stay delivered.
    fn recv(&mut self, max: usize, deliver: &mut dyn FnMut(Packet<'p>)) -> Result<usize, Error>;

    /// Queues `frame` (its window) for transmission; [`flush`](Self::flush) pushes the queue to
    /// the kernel (done here too when the queue is full). When even that leaves no room, the
    /// packet comes back with [`Error::WouldBlock`].
    ///
    /// # Errors
    /// [`Error::WouldBlock`], or a failing system call (the packet comes back).
    #[expect(
        clippy::result_large_err,
        reason = "the packet must come back; only the rare error path moves the bytes"
    )]
    fn send(&mut self, frame: Packet<'p>) -> Result<(), (Packet<'p>, Error)>;

    /// Pushes queued frames to the kernel and takes back the blocks it has finished with.
    /// Returns how many frames are still waiting to be taken by the kernel (0: flush again
    /// only when new frames are queued).
    ///
    /// # Errors
    /// A failing system call.
    fn flush(&mut self) -> Result<usize, Error>;

    /// The fds that become readable when frames arrive (one per RX queue served; at most
    /// [`crate::sys::MAX_POLL_FDS`]).
    fn rx_fds(&self) -> &[std::os::fd::RawFd];

    /// The counters.
    fn stats(&self) -> BackendStats;
}

/// Either backend, chosen at run time.
#[derive(Debug)]
pub enum AnyBackend<'p> {
    /// AF_XDP.
    Xdp(Box<XdpBackend<'p>>),
    /// AF_PACKET.
    Packet(PacketBackend<'p>),
}

macro_rules! dispatch {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            AnyBackend::Xdp($b) => $e,
            AnyBackend::Packet($b) => $e,
        }
    };
}

impl AnyBackend<'_> {
    /// The kernel's AF_XDP socket counters; `None` for AF_PACKET.
    ///
    /// # Errors
    /// [`Error::Xsk`] if `getsockopt(XDP_STATISTICS)` fails.
    pub fn xsk_stats(&self) -> Result<Option<XskStats>, Error> {
        match self {
            AnyBackend::Xdp(x) => x.xsk_stats().map(Some),
            AnyBackend::Packet(_) => Ok(None),
        }
    }

    /// The steering program's counters; `None` for AF_PACKET.
    ///
    /// # Errors
    /// [`Error::Ebpf`] if the program's map cannot be read.
    pub fn program_counters(&self) -> Result<Option<o7s_ebpf::Counters>, Error> {
        match self {
            AnyBackend::Xdp(x) => x.program_counters(),
            AnyBackend::Packet(_) => Ok(None),
        }
    }
}

impl<'p> Backend<'p> for AnyBackend<'p> {
    fn info(&self) -> BackendInfo {
        dispatch!(self, b => b.info())
    }
    fn recv(&mut self, max: usize, deliver: &mut dyn FnMut(Packet<'p>)) -> Result<usize, Error> {
        dispatch!(self, b => b.recv(max, deliver))
    }
    fn send(&mut self, frame: Packet<'p>) -> Result<(), (Packet<'p>, Error)> {
        dispatch!(self, b => b.send(frame))
    }
    fn flush(&mut self) -> Result<usize, Error> {
        dispatch!(self, b => b.flush())
    }
    fn rx_fds(&self) -> &[std::os::fd::RawFd] {
        dispatch!(self, b => b.rx_fds())
    }
    fn stats(&self) -> BackendStats {
        dispatch!(self, b => b.stats())
    }
}

/// Opens the backend `config.mode` asks for on `config.iface`, with `pool` as the packet
/// memory (and, for AF_XDP, the UMEM). Must run on a thread inside the interface's network
/// namespace. `auto` falls back native → generic → packet, logging each failure.
///
/// # Errors
/// The chosen mode's error; for `auto`, [`Error::NoBackend`] with the last one.
pub fn open<'p>(pool: &'p Pool, config: &BackendConfig) -> Result<AnyBackend<'p>, Error> {
    let mut config = config.clone();
    if config.queues.is_empty() {
        config.queues = device_queues(&config.iface);
    }
    let config = &config;
    let xdp = |mode| XdpBackend::open(pool, config, mode).map(|b| AnyBackend::Xdp(Box::new(b)));
    let packet = || PacketBackend::open(pool, config).map(AnyBackend::Packet);
    let backend = match config.mode {
        ModeChoice::Native => xdp(o7s_ebpf::Mode::Native)?,
        ModeChoice::Generic => xdp(o7s_ebpf::Mode::Generic)?,
        ModeChoice::Packet => packet()?,
        ModeChoice::Auto => {
            let mut found = None;
            for mode in [o7s_ebpf::Mode::Native, o7s_ebpf::Mode::Generic] {
                match xdp(mode) {
                    Ok(b) => {
                        found = Some(b);
                        break;
                    }
                    Err(e) => {
                        warn!(iface = %config.iface, %mode, error = %e, "XDP mode unavailable")
                    }
                }
            }
            match found {
                Some(b) => b,
                None => packet().map_err(|e| Error::NoBackend {
                    iface: config.iface.clone(),
                    last: Box::new(e),
                })?,
            }
        }
    };
    info!(iface = %config.iface, backend = %backend.info(), "Ethernet backend up");
    Ok(backend)
}
