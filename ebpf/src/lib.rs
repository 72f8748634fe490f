//! The XDP program that steers Ouroboros frames into AF_XDP sockets, and a safe API to drive it.
//!
//! `src/steer.bpf.c` is compiled by `build.rs` with `clang -O2 -g -target bpfel` and embedded in
//! this crate ([`object`]). [`SteerProgram`] loads it with aya, attaches it to interfaces through
//! a `bpf_link` (so nothing stays attached when the process dies), fills the `xsks` XSKMAP with
//! AF_XDP sockets and reads the per-CPU counters. [`SteerProgram::test_run`] runs the loaded
//! program on a crafted frame (`BPF_PROG_TEST_RUN`), without any interface.
//!
//! What the program does with each received frame:
//! - shorter than an Ethernet header: `XDP_PASS`, counted as [`Counters::runt`];
//! - EtherType equal to the configured one (default [`DEFAULT_ETHERTYPE`], 0xA000): counted as
//!   [`Counters::matched`], redirected to the AF_XDP socket registered for the frame's RX queue;
//!   when that queue has no socket the frame goes to the kernel (`XDP_PASS`) and is also counted as
//!   [`Counters::redirect_failed`];
//! - any other EtherType: `XDP_PASS`, counted as [`Counters::passed`].
//!
//! # Maps (contract with `steer.bpf.c`)
//!
//! | name | type | key → value |
//! |---|---|---|
//! | `config` | `ARRAY`, 1 entry | `0` → `u16` EtherType in **host** byte order; `0` = default |
//! | `xsks` | `XSKMAP`, [`MAX_QUEUES`] entries | RX queue → AF_XDP socket fd |
//! | `stats` | `PERCPU_ARRAY`, 4 entries | `0` matched, `1` passed, `2` redirect failed, `3` runt (`u64`) |
//!
//! # Requirements
//!
//! Root (or `CAP_BPF` + `CAP_NET_ADMIN`), kernel ≥ 5.18 for `xdp.frags` (multi-buffer, needed to
//! attach natively on an MTU-9000 veth). Native mode needs driver support; generic mode works on
//! any interface. Attachment always goes through a `bpf_link`: if the kernel refuses one, attaching
//! fails with [`Error::NoBpfLink`] instead of silently leaving a netlink attachment behind.
//!
//! # Examples
//!
//! ```no_run
//! use o7s_ebpf::{Mode, SteerProgram};
//!
//! let mut steer = SteerProgram::load(o7s_ebpf::DEFAULT_ETHERTYPE)?;
//! let mode = steer.attach("eth1", Mode::Native)?;
//! println!("attached in {mode} mode");
//! // steer.register_socket(0, xsk_user.as_raw_fd())?; // an AF_XDP socket bound to eth1, queue 0
//! println!("{:?}", steer.counters()?);
//! # Ok::<(), o7s_ebpf::Error>(())
//! ```

use std::{fmt, io, os::fd::AsRawFd};

use aya::{
    Ebpf, EbpfError,
    maps::{Array, MapData, MapError, PerCpuArray, XskMap},
    programs::{Link as _, ProgramError, TestRun as _, TestRunOptions, Xdp, XdpMode, xdp::XdpLink},
};

/// EtherType steered when none is configured (the one Ouroboros' eth-dix layer uses by default).
pub const DEFAULT_ETHERTYPE: u16 = 0xA000;

/// Number of entries in the `xsks` XSKMAP: the highest usable RX queue index is `MAX_QUEUES - 1`.
pub const MAX_QUEUES: u32 = 64;

/// Name of the XDP program (the C function) inside [`object`].
pub const PROGRAM_NAME: &str = "o7s_steer";

/// ELF section of the program: `xdp.frags` makes aya load it with `BPF_F_XDP_HAS_FRAGS`.
pub const PROGRAM_SECTION: &str = "xdp.frags";

/// Names of the maps inside [`object`].
pub const MAP_NAMES: [&str; 3] = [CONFIG_MAP, XSKS_MAP, STATS_MAP];

const CONFIG_MAP: &str = "config";
const XSKS_MAP: &str = "xsks";
const STATS_MAP: &str = "stats";

/// Smallest value that is an EtherType rather than an IEEE 802.3 length.
const MIN_ETHERTYPE: u16 = 0x0600;

/// Indices into the `stats` map, as in `enum o7s_stat` of `steer.bpf.c`.
const STAT_MATCHED: u32 = 0;
const STAT_PASSED: u32 = 1;
const STAT_REDIRECT_FAILED: u32 = 2;
const STAT_RUNT: u32 = 3;

/// Forces 8-byte alignment on the embedded object: aya's ELF parser reads it in place.
#[repr(C, align(8))]
struct Aligned<Bytes: ?Sized> {
    bytes: Bytes,
}

static OBJECT: &Aligned<[u8]> = &Aligned {
    bytes: *include_bytes!(concat!(env!("OUT_DIR"), "/steer.bpf.o")),
};

/// The compiled BPF object (ELF, 8-byte aligned). Empty when built with `O7S_EBPF_SKIP=1`.
pub fn object() -> &'static [u8] {
    &OBJECT.bytes
}

/// Whether the crate was built with the real object (not the `O7S_EBPF_SKIP=1` stub).
pub fn is_built() -> bool {
    !object().is_empty()
}

/// Errors from loading, attaching and driving the steering program. Each names the step that
/// failed and keeps the kernel's error (and the verifier log, for [`Error::Load`]) as its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The crate was built with `O7S_EBPF_SKIP=1`, so there is no program to load.
    #[error(
        "o7s-ebpf was built with O7S_EBPF_SKIP=1 and holds no XDP object; \
         install clang (`cargo xtask setup`) and rebuild without O7S_EBPF_SKIP"
    )]
    NotBuilt,
    /// aya could not parse the object or create its maps in the kernel.
    #[error("opening the XDP object (parsing it, creating its maps): {0}")]
    Open(#[source] EbpfError),
    /// The object lacks a program or map this crate expects (a build mismatch).
    #[error("the XDP object has no {kind} named `{name}`")]
    Missing {
        /// `"program"` or `"map"`.
        kind: &'static str,
        /// The name looked up.
        name: &'static str,
    },
    /// A map in the object does not have the type or sizes this crate expects.
    #[error("map `{name}` does not have the expected type: {source}")]
    MapType {
        /// The map.
        name: &'static str,
        /// aya's complaint.
        #[source]
        source: MapError,
    },
    /// The program in the object is not an XDP program.
    #[error("program `{PROGRAM_NAME}` is not an XDP program: {0}")]
    ProgramType(#[source] ProgramError),
    /// `BPF_PROG_LOAD` failed; the message includes the verifier log.
    #[error("loading the XDP program into the kernel: {0}")]
    Load(#[source] ProgramError),
    /// The value is below 0x0600, so it would be read as an 802.3 length, not an EtherType.
    #[error("{0:#06x} is not an EtherType (EtherTypes are at least 0x0600)")]
    InvalidEthertype(u16),
    /// Writing or reading the `config` map failed.
    #[error("{step} the EtherType in the `config` map: {source}")]
    Config {
        /// `"writing"` or `"reading"`.
        step: &'static str,
        /// The kernel's error.
        #[source]
        source: MapError,
    },
    /// The interface name does not resolve in the calling thread's network namespace.
    #[error("unknown network interface `{name}`: {source}")]
    UnknownInterface {
        /// The name given.
        name: String,
        /// The error from `if_nametoindex`.
        #[source]
        source: io::Error,
    },
    /// This program is already attached to that interface.
    #[error("the steering program is already attached to ifindex {0}")]
    AlreadyAttached(u32),
    /// This program is not attached to that interface.
    #[error("the steering program is not attached to ifindex {0}")]
    NotAttached(u32),
    /// `bpf_link_create` failed (for example `EOPNOTSUPP` for native mode on a driver without
    /// XDP, `ERANGE` for an MTU the driver cannot do, `EBUSY` if another program is attached).
    #[error("attaching to ifindex {ifindex} in {mode} mode: {source}")]
    Attach {
        /// The interface.
        ifindex: u32,
        /// The mode asked for.
        mode: Mode,
        /// aya's error, holding the syscall's.
        #[source]
        source: ProgramError,
    },
    /// The kernel rejected `bpf_link_create` with `EINVAL` and aya 0.14 fell back to a netlink
    /// attachment, which would outlive the process; it has been detached again.
    #[error(
        "attaching to ifindex {ifindex} in {mode} mode: the kernel did not create a bpf_link \
         (aya fell back to netlink, which would survive a crash); detached again"
    )]
    NoBpfLink {
        /// The interface.
        ifindex: u32,
        /// The mode asked for.
        mode: Mode,
    },
    /// Detaching (closing the `bpf_link`) failed.
    #[error("detaching from ifindex {ifindex}: {source}")]
    Detach {
        /// The interface.
        ifindex: u32,
        /// aya's error.
        #[source]
        source: ProgramError,
    },
    /// The queue index is not below [`MAX_QUEUES`].
    #[error("RX queue {0} is out of range: the XSKMAP has {MAX_QUEUES} entries")]
    QueueOutOfRange(u32),
    /// Updating the XSKMAP failed (for example the fd is not an AF_XDP socket, or is not bound).
    #[error("{step} the AF_XDP socket for RX queue {queue} in the `xsks` map: {source}")]
    Socket {
        /// `"registering"` or `"unregistering"`.
        step: &'static str,
        /// The queue.
        queue: u32,
        /// The kernel's error.
        #[source]
        source: MapError,
    },
    /// `BPF_PROG_TEST_RUN` failed (`EINVAL` for frames shorter than 14 bytes or longer than a
    /// page).
    #[error("test-running the XDP program on a {len}-byte frame: {source}")]
    TestRun {
        /// Length of the frame given.
        len: usize,
        /// aya's error, holding the syscall's.
        #[source]
        source: ProgramError,
    },
    /// Reading the `stats` map failed.
    #[error("reading counter {index} of the `stats` map: {source}")]
    Counters {
        /// Index in the `stats` map.
        index: u32,
        /// The kernel's error.
        #[source]
        source: MapError,
    },
}

impl Error {
    /// The OS error number at the root of this error, if any (for example `EPERM` when the
    /// process may not use BPF, `EOPNOTSUPP` when a driver has no native XDP).
    pub fn raw_os_error(&self) -> Option<i32> {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = source {
            if let Some(errno) = error
                .downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error)
            {
                return Some(errno);
            }
            source = error.source();
        }
        None
    }
}

/// Where the program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// In the driver, before an skb exists (aya `XdpMode::Driver`, `XDP_FLAGS_DRV_MODE`).
    Native,
    /// In the core network stack, after the skb is built (aya `XdpMode::Skb`,
    /// `XDP_FLAGS_SKB_MODE`). Works on every interface; slower.
    Generic,
}

impl Mode {
    fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Generic => XdpMode::Skb,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic",
        })
    }
}

/// A network interface, by name or by index. Names resolve in the network namespace of the
/// calling thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interface {
    /// An interface name such as `eth0`.
    Name(String),
    /// An interface index.
    Index(u32),
}

impl Interface {
    /// The interface index, in the calling thread's network namespace.
    pub fn index(&self) -> Result<u32, Error> {
        match self {
            Self::Index(index) => Ok(*index),
            Self::Name(name) => nix::net::if_::if_nametoindex(name.as_str()).map_err(|errno| {
                Error::UnknownInterface {
                    name: name.clone(),
                    source: io::Error::from(errno),
                }
            }),
        }
    }
}

impl From<&str> for Interface {
    fn from(name: &str) -> Self {
        Self::Name(name.to_owned())
    }
}

impl From<String> for Interface {
    fn from(name: String) -> Self {
        Self::Name(name)
    }
}

impl From<u32> for Interface {
    fn from(index: u32) -> Self {
        Self::Index(index)
    }
}

/// What the program decided for a frame ([`SteerProgram::test_run`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// `XDP_PASS`: the frame goes to the kernel stack.
    Pass,
    /// `XDP_REDIRECT`: the frame goes to the AF_XDP socket of its queue.
    Redirect,
    /// Any other action (`XDP_ABORTED`, `XDP_DROP`, `XDP_TX`); this program never returns them.
    Other(u32),
}

impl Verdict {
    fn from_action(action: u32) -> Self {
        // enum xdp_action in <linux/bpf.h>.
        const XDP_PASS: u32 = 2;
        const XDP_REDIRECT: u32 = 4;
        match action {
            XDP_PASS => Self::Pass,
            XDP_REDIRECT => Self::Redirect,
            other => Self::Other(other),
        }
    }
}

/// The program's counters, summed over all CPUs. They only grow (wrapping at `u64::MAX`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Counters {
    /// Frames with the steered EtherType (whether or not a socket took them).
    pub matched: u64,
    /// Frames with any other EtherType, passed to the kernel.
    pub passed: u64,
    /// Matched frames that went to the kernel because no socket is registered on their queue.
    pub redirect_failed: u64,
    /// Frames shorter than an Ethernet header, passed to the kernel.
    pub runt: u64,
}

/// One interface the program is attached to. Dropping the link detaches it.
#[derive(Debug)]
struct Attachment {
    ifindex: u32,
    mode: Mode,
    link: XdpLink,
}

/// The loaded steering program, its maps and its attachments.
///
/// Dropping it detaches the program from every interface and releases the maps; if the process
/// dies instead, the kernel does the same when it closes the `bpf_link` file descriptors.
#[doc(alias = "BPF_PROG_TYPE_XDP")]
pub struct SteerProgram {
    // Declared first so the links are closed before the program and maps.
    attachments: Vec<Attachment>,
    config: Array<MapData, u16>,
    xsks: XskMap<MapData>,
    stats: PerCpuArray<MapData, u64>,
    ebpf: Ebpf,
}

impl SteerProgram {
    /// Loads the program into the kernel (not attached anywhere yet), steering `ethertype`
    /// (host byte order; [`DEFAULT_ETHERTYPE`] is the Ouroboros default).
    ///
    /// # Errors
    ///
    /// [`Error::NotBuilt`] without a compiled object, [`Error::InvalidEthertype`] below 0x0600,
    /// [`Error::Open`] / [`Error::Load`] when the kernel refuses the maps or the program (the
    /// verifier log is in the message; `EPERM` without privileges).
    pub fn load(ethertype: u16) -> Result<Self, Error> {
        check_ethertype(ethertype)?;
        if !is_built() {
            return Err(Error::NotBuilt);
        }
        let mut ebpf = Ebpf::load(object()).map_err(Error::Open)?;

        xdp_program(&mut ebpf)?.load().map_err(Error::Load)?;

        let config =
            Array::try_from(take_map(&mut ebpf, CONFIG_MAP)?).map_err(|source| Error::MapType {
                name: CONFIG_MAP,
                source,
            })?;
        let xsks =
            XskMap::try_from(take_map(&mut ebpf, XSKS_MAP)?).map_err(|source| Error::MapType {
                name: XSKS_MAP,
                source,
            })?;
        let stats = PerCpuArray::try_from(take_map(&mut ebpf, STATS_MAP)?).map_err(|source| {
            Error::MapType {
                name: STATS_MAP,
                source,
            }
        })?;

        let mut steer = Self {
            attachments: Vec::new(),
            config,
            xsks,
            stats,
            ebpf,
        };
        steer.set_ethertype(ethertype)?;
        Ok(steer)
    }

    /// Attaches the program to `interface` in `mode` through a `bpf_link` and returns the mode
    /// now in effect (the kernel fails a mode it cannot do rather than substituting another).
    ///
    /// Must be called from a thread in the interface's network namespace.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownInterface`], [`Error::AlreadyAttached`], [`Error::Attach`] (the kernel's
    /// errno is kept: `EOPNOTSUPP`, `ERANGE`, `EBUSY`…), [`Error::NoBpfLink`].
    pub fn attach(&mut self, interface: impl Into<Interface>, mode: Mode) -> Result<Mode, Error> {
        let ifindex = interface.into().index()?;
        if self.attachments.iter().any(|a| a.ifindex == ifindex) {
            return Err(Error::AlreadyAttached(ifindex));
        }
        let program = self.program()?;
        let link_id = program
            .attach_to_if_index(ifindex, mode.xdp_mode())
            .map_err(|source| Error::Attach {
                ifindex,
                mode,
                source,
            })?;
        // aya 0.14 silently falls back to a netlink attachment when bpf_link_create returns
        // EINVAL. Such an attachment outlives the process, which we promise never happens. The
        // link id's variant is private; its Debug form is the only way to tell.
        if format!("{link_id:?}").contains("NlLinkId") {
            program
                .detach(link_id)
                .map_err(|source| Error::Detach { ifindex, source })?;
            return Err(Error::NoBpfLink { ifindex, mode });
        }
        let link = program.take_link(link_id).map_err(|source| Error::Attach {
            ifindex,
            mode,
            source,
        })?;
        self.attachments.push(Attachment {
            ifindex,
            mode,
            link,
        });
        Ok(mode)
    }

    /// Attaches in native mode if the driver supports it, else in generic mode; returns the mode
    /// in effect.
    ///
    /// # Errors
    ///
    /// As [`SteerProgram::attach`]; the error is the generic attempt's when both fail.
    pub fn attach_best(&mut self, interface: impl Into<Interface>) -> Result<Mode, Error> {
        let ifindex = interface.into().index()?;
        match self.attach(ifindex, Mode::Native) {
            Ok(mode) => Ok(mode),
            Err(Error::Attach { .. } | Error::NoBpfLink { .. }) => {
                self.attach(ifindex, Mode::Generic)
            }
            Err(e) => Err(e),
        }
    }

    /// Detaches the program from `interface` (closes its `bpf_link`).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownInterface`], [`Error::NotAttached`], [`Error::Detach`].
    pub fn detach(&mut self, interface: impl Into<Interface>) -> Result<(), Error> {
        let ifindex = interface.into().index()?;
        let position = self
            .attachments
            .iter()
            .position(|a| a.ifindex == ifindex)
            .ok_or(Error::NotAttached(ifindex))?;
        let attachment = self.attachments.swap_remove(position);
        attachment
            .link
            .detach()
            .map_err(|source| Error::Detach { ifindex, source })
    }

    /// The interfaces (by index) the program is attached to, with their modes.
    pub fn attachments(&self) -> impl Iterator<Item = (u32, Mode)> + '_ {
        self.attachments.iter().map(|a| (a.ifindex, a.mode))
    }

    /// Steers `ethertype` (host byte order) from now on. Takes effect on the next frame.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEthertype`] below 0x0600, [`Error::Config`] if the map update fails.
    pub fn set_ethertype(&mut self, ethertype: u16) -> Result<(), Error> {
        check_ethertype(ethertype)?;
        self.config
            .set(0, ethertype, 0)
            .map_err(|source| Error::Config {
                step: "writing",
                source,
            })
    }

    /// The EtherType currently steered (host byte order).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the map cannot be read.
    pub fn ethertype(&self) -> Result<u16, Error> {
        let value = self.config.get(&0, 0).map_err(|source| Error::Config {
            step: "reading",
            source,
        })?;
        Ok(if value == 0 { DEFAULT_ETHERTYPE } else { value })
    }

    /// Registers the AF_XDP socket `socket` for RX queue `queue`: matching frames received on
    /// that queue go to it. Replaces any socket registered before. The socket must be bound to
    /// the same interface and queue, or the kernel drops the redirected frames.
    ///
    /// Takes anything with a raw fd (a `BorrowedFd`, or a plain `RawFd` such as
    /// xdpilone's `User::as_raw_fd()`): the kernel checks the fd, so a wrong one is an error,
    /// never memory unsafety. The map holds its own reference to the socket.
    ///
    /// # Errors
    ///
    /// [`Error::QueueOutOfRange`], [`Error::Socket`] (e.g. `EOPNOTSUPP` if `socket` is not an
    /// AF_XDP socket).
    pub fn register_socket(&mut self, queue: u32, socket: impl AsRawFd) -> Result<(), Error> {
        check_queue(queue)?;
        self.xsks
            .set(queue, socket.as_raw_fd(), 0)
            .map_err(|source| Error::Socket {
                step: "registering",
                queue,
                source,
            })
    }

    /// Removes the socket registered for RX queue `queue`; its frames go to the kernel again
    /// (and count as [`Counters::redirect_failed`]). Removing an empty slot is not an error.
    ///
    /// # Errors
    ///
    /// [`Error::QueueOutOfRange`], [`Error::Socket`].
    pub fn unregister(&mut self, queue: u32) -> Result<(), Error> {
        check_queue(queue)?;
        match self.xsks.unset(queue) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc_enoent()) => {
                Ok(())
            }
            Err(source) => Err(Error::Socket {
                step: "unregistering",
                queue,
                source,
            }),
        }
    }

    /// Runs the program once on `frame` in the kernel (`BPF_PROG_TEST_RUN`, no interface
    /// involved; the frame arrives on RX queue 0) and returns its verdict. The counters count it
    /// like a received frame. Useful to check the loaded program without any network.
    ///
    /// # Errors
    ///
    /// [`Error::TestRun`], e.g. `EINVAL` if `frame` is shorter than an Ethernet header (the
    /// kernel refuses to run XDP on those) or longer than a page.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<Verdict, Error> {
        let len = frame.len();
        let program = self.program()?;
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        let result = program
            .test_run(options)
            .map_err(|source| Error::TestRun { len, source })?;
        Ok(Verdict::from_action(result.return_value))
    }

    /// The counters, summed over all CPUs.
    ///
    /// # Errors
    ///
    /// [`Error::Counters`] if the map cannot be read.
    pub fn counters(&self) -> Result<Counters, Error> {
        Ok(Counters {
            matched: self.counter(STAT_MATCHED)?,
            passed: self.counter(STAT_PASSED)?,
            redirect_failed: self.counter(STAT_REDIRECT_FAILED)?,
            runt: self.counter(STAT_RUNT)?,
        })
    }

    fn counter(&self, index: u32) -> Result<u64, Error> {
        let values = self
            .stats
            .get(&index, 0)
            .map_err(|source| Error::Counters { index, source })?;
        Ok(values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
    }

    fn program(&mut self) -> Result<&mut Xdp, Error> {
        xdp_program(&mut self.ebpf)
    }
}

/// The steering program inside a loaded object.
fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, Error> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or(Error::Missing {
            kind: "program",
            name: PROGRAM_NAME,
        })?
        .try_into()
        .map_err(Error::ProgramType)
}

impl fmt::Debug for SteerProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // aya 0.14's typed maps do not implement Debug.
        f.debug_struct("SteerProgram")
            .field("attachments", &self.attachments)
            .field("ebpf", &self.ebpf)
            .finish_non_exhaustive()
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, Error> {
    ebpf.take_map(name)
        .ok_or(Error::Missing { kind: "map", name })
}

fn check_ethertype(ethertype: u16) -> Result<(), Error> {
    if ethertype < MIN_ETHERTYPE {
        return Err(Error::InvalidEthertype(ethertype));
    }
    Ok(())
}

fn check_queue(queue: u32) -> Result<(), Error> {
    if queue >= MAX_QUEUES {
        return Err(Error::QueueOutOfRange(queue));
    }
    Ok(())
}

const fn libc_enoent() -> i32 {
    nix::errno::Errno::ENOENT as i32
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn object_is_aligned() {
        assert_eq!(object().as_ptr().align_offset(8), 0);
    }

    #[test]
    fn ethertype_validation() {
        assert!(check_ethertype(DEFAULT_ETHERTYPE).is_ok());
        assert!(check_ethertype(0x0600).is_ok());
        assert!(matches!(
            check_ethertype(0x05ff),
            Err(Error::InvalidEthertype(0x05ff))
        ));
        assert!(matches!(
            SteerProgram::load(0),
            Err(Error::InvalidEthertype(0))
        ));
    }

    #[test]
    fn queue_validation() {
        assert!(check_queue(MAX_QUEUES - 1).is_ok());
        assert!(matches!(
            check_queue(MAX_QUEUES),
            Err(Error::QueueOutOfRange(q)) if q == MAX_QUEUES
        ));
    }

    #[test]
    fn interfaces() {
        assert_eq!(Interface::from(7).index().ok(), Some(7));
        assert_eq!(Interface::from("lo"), Interface::Name("lo".into()));
        let missing = Interface::from("o7s-no-such-if").index();
        match missing {
            Err(e @ Error::UnknownInterface { .. }) => {
                assert!(e.to_string().contains("o7s-no-such-if"));
                assert_eq!(e.raw_os_error(), Some(nix::errno::Errno::ENODEV as i32));
            }
            other => panic!("expected UnknownInterface, got {other:?}"),
        }
    }

    #[test]
    fn stub_object_fails_cleanly() {
        // Only meaningful in an `O7S_EBPF_SKIP=1` build; with the real object, loading needs root
        // and is covered by tests/steer.rs.
        if !is_built() {
            let e = SteerProgram::load(DEFAULT_ETHERTYPE).expect_err("no object to load");
            assert!(matches!(e, Error::NotBuilt));
            assert!(e.to_string().contains("cargo xtask setup"), "{e}");
        }
    }

    #[test]
    fn steer_program_is_send() {
        fn send<T: Send>() {}
        send::<SteerProgram>();
        send::<Error>();
    }

    #[test]
    fn mode_display() {
        assert_eq!(Mode::Native.to_string(), "native");
        assert_eq!(Mode::Generic.to_string(), "generic");
    }
}
