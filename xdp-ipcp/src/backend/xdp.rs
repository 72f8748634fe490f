//! The AF_XDP backend: the steering program (o7s-ebpf) attached natively or generically, and one
//! xdpilone socket per RX queue whose UMEM is the pool's data area.
//!
//! Block life cycle (the pool's descriptors record every step):
//! * **fill**: `try_alloc_frame` → `into_index` → `lend_to_kernel` → fill ring at
//!   `umem_addr(index, 0)`. The fill rings are filled before `bind` and topped up on every
//!   [`Backend::recv`].
//! * **RX**: descriptor address → `block_at_umem_addr` → `take_from_kernel` → `set_bounds` to
//!   the frame (copy mode puts it at chunk + 256) → delivered. No copy.
//! * **TX**: the packet's window (a block of ≤ 4096 bytes never straddles a chunk) →
//!   `lend_to_kernel` → TX ring at its UMEM address → `sendto` kick when the ring asks for one;
//!   completion ring → `take_from_kernel` → released.
//!
//! Every block lent to the kernel is also recorded here, so dropping the backend (program
//! detached, sockets closed, then the kernel no longer touches the UMEM) gives exactly this
//! backend's blocks back — `Pool::reclaim_lent` is not needed, and would be wrong when one
//! process runs several backends on one pool.

use std::ffi::CString;
use std::num::NonZeroU32;
use std::os::fd::RawFd;

use o7s_ebpf::{Mode, SteerProgram};
use o7s_pool::{Packet, Pool};
use tracing::{debug, info, warn};
use xdpilone::xdp::{XdpDesc, XdpStatisticsV2};
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, User};

use super::{
    Backend, BackendConfig, BackendInfo, BackendKind, BackendStats, Error, XskStats, ZeroCopy,
};
use crate::sys::{self, Kick, PoolUmem};

/// Descriptors queued in user space before they go on the TX ring.
const TX_BATCH: usize = 256;
/// Copy-mode `sendto` sends at most 32 frames; kick at most this often per flush.
const MAX_KICKS: usize = 64;

/// One bit per pool block: lent to the kernel by this backend.
#[derive(Debug)]
struct LentSet {
    words: Vec<u64>,
    count: usize,
}

impl LentSet {
    fn new(blocks: u32) -> LentSet {
        LentSet {
            words: vec![0; (blocks as usize).div_ceil(64)],
            count: 0,
        }
    }

    fn insert(&mut self, index: u32) {
        let (w, b) = ((index / 64) as usize, index % 64);
        if let Some(word) = self.words.get_mut(w)
            && *word & (1 << b) == 0
        {
            *word |= 1 << b;
            self.count += 1;
        }
    }

    fn remove(&mut self, index: u32) -> bool {
        let (w, b) = ((index / 64) as usize, index % 64);
        match self.words.get_mut(w) {
            Some(word) if *word & (1 << b) != 0 => {
                *word &= !(1 << b);
                self.count -= 1;
                true
            }
            _ => false,
        }
    }

    fn drain(&mut self) -> impl Iterator<Item = u32> + '_ {
        self.count = 0;
        self.words.iter_mut().enumerate().flat_map(|(w, word)| {
            let bits = std::mem::take(word);
            (0..64u32)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| w as u32 * 64 + b)
        })
    }
}

/// The socket of one RX queue. Fields drop in order: rings, then the socket.
struct XskQueue {
    queue: u32,
    rx: RingRx,
    tx: Option<RingTx>,
    device: DeviceQueue,
    user: User,
    _socket: Socket,
}

/// Everything that makes the kernel touch the UMEM; dropped as a whole before the lent blocks
/// are taken back. The program goes first, so redirects stop before the sockets close.
struct Live {
    steer: SteerProgram,
    queues: Vec<XskQueue>,
    /// Each queue's socket, for [`Backend::rx_fds`].
    rx_fds: Vec<RawFd>,
}

/// AF_XDP on one interface, with the pool as UMEM.
pub struct XdpBackend<'p> {
    pool: &'p Pool,
    live: Option<Live>,
    umem: Option<PoolUmem<'p>>,
    lent: LentSet,
    tx_pending: Vec<XdpDesc>,
    fill_size: u32,
    completion_size: u32,
    chunk: u64,
    info: BackendInfo,
    stats: BackendStats,
}

impl std::fmt::Debug for XdpBackend<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpBackend")
            .field("info", &self.info)
            .field("lent", &self.lent.count)
            .field("tx_pending", &self.tx_pending.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Takes back the block at UMEM address `addr` from the kernel.
fn take_back<'p>(pool: &'p Pool, lent: &mut LentSet, addr: u64) -> Option<(Packet<'p>, usize)> {
    let (index, offset) = pool.block_at_umem_addr(addr).ok()?;
    let packet = pool.take_from_kernel(index).ok()?;
    lent.remove(index);
    Some((packet, offset as usize))
}

/// Allocates a frame block and lends it to the kernel; returns its UMEM address.
fn lend_frame(pool: &Pool, lent: &mut LentSet, short: &mut bool) -> Option<u64> {
    let Ok(packet) = pool.try_alloc_frame() else {
        *short = true;
        return None;
    };
    let index = packet.into_index();
    if pool.lend_to_kernel(index).is_err() {
        let _ = pool.release(index);
        return None;
    }
    lent.insert(index);
    pool.umem_addr(index, 0).ok()
}

/// Puts as many frames on `device`'s fill ring as it has room for (at most `max`).
fn refill(
    pool: &Pool,
    lent: &mut LentSet,
    stats: &mut BackendStats,
    device: &mut DeviceQueue,
    max: u32,
) -> u32 {
    let mut fill = device.fill(max);
    let room = fill.capacity() as usize;
    if room == 0 {
        return 0;
    }
    let mut short = false;
    let n = fill.insert(std::iter::from_fn(|| lend_frame(pool, lent, &mut short)).take(room));
    fill.commit();
    if short {
        stats.rx_no_buffer += 1;
    }
    n
}

fn power_of_two(n: u32, what: &'static str) -> Result<(), Error> {
    if n.is_power_of_two() {
        Ok(())
    } else {
        Err(Error::Config(what))
    }
}

impl<'p> XdpBackend<'p> {
    /// Loads and attaches the steering program in `mode` on `config.iface`, registers the pool
    /// as UMEM and binds one socket per queue in `config.queues`. Must run on a thread inside
    /// the interface's network namespace.
    ///
    /// # Errors
    /// [`Error::Ebpf`] (load, attach, XSKMAP), [`Error::Xsk`] naming the AF_XDP step,
    /// [`Error::Config`] for ring sizes that are not powers of two or no queue.
    pub fn open(pool: &'p Pool, config: &BackendConfig, mode: Mode) -> Result<Self, Error> {
        let rings = config.rings;
        power_of_two(rings.fill, "fill ring size must be a power of two")?;
        power_of_two(
            rings.completion,
            "completion ring size must be a power of two",
        )?;
        power_of_two(rings.rx, "RX ring size must be a power of two")?;
        power_of_two(rings.tx, "TX ring size must be a power of two")?;
        if config.queues.is_empty() {
            return Err(Error::Config("no RX queue to serve"));
        }
        let region = pool.umem();
        let fill_total = u64::from(rings.fill) * config.queues.len() as u64;
        if u64::from(region.frames) <= fill_total {
            warn!(
                frames = region.frames,
                fill_total, "the pool has no more frame blocks than the fill rings hold"
            );
        }
        let name = CString::new(config.iface.as_str())
            .map_err(|_| Error::Config("NUL in interface name"))?;

        let mut steer = SteerProgram::load(config.ethertype)?;
        let attached = steer.attach(config.iface.as_str(), mode)?;
        debug!(iface = %config.iface, mode = %attached, "XDP program attached");
        let umem = PoolUmem::register(pool, rings.fill, rings.completion).map_err(|source| {
            Error::Xsk {
                step: "UMEM registration",
                source,
            }
        })?;
        let mut backend = XdpBackend {
            pool,
            live: Some(Live {
                steer,
                queues: Vec::with_capacity(config.queues.len()),
                rx_fds: Vec::with_capacity(config.queues.len()),
            }),
            umem: None,
            lent: LentSet::new(pool.layout().total_blocks),
            tx_pending: Vec::with_capacity(TX_BATCH),
            fill_size: rings.fill,
            completion_size: rings.completion,
            chunk: u64::from(region.chunk_size),
            info: BackendInfo {
                kind: BackendKind::Xdp(attached),
                zero_copy: false,
                queues: u32::try_from(config.queues.len()).unwrap_or(u32::MAX),
            },
            stats: BackendStats::default(),
        };
        // From here on, dropping `backend` on an error path closes whatever was opened and
        // takes back the blocks lent so far.
        let mut zero_copy = true;
        for (i, &queue) in config.queues.iter().enumerate() {
            match backend.bind_queue(&umem, &name, queue, i == 0, config) {
                Ok(zc) => zero_copy &= zc,
                Err(e) => {
                    // The UMEM's fd is the first socket's: it must close before the lent
                    // blocks are taken back, which the backend's drop does in that order.
                    backend.umem = Some(umem);
                    return Err(e);
                }
            }
        }
        backend.umem = Some(umem);
        backend.info.zero_copy = zero_copy;
        info!(
            iface = %config.iface,
            mode = %attached,
            zero_copy,
            queues = ?config.queues,
            "AF_XDP sockets bound"
        );
        Ok(backend)
    }

    fn bind_queue(
        &mut self,
        umem: &PoolUmem<'p>,
        name: &CString,
        queue: u32,
        first: bool,
        config: &BackendConfig,
    ) -> Result<bool, Error> {
        let rings = config.rings;
        let mut ifinfo = IfInfo::invalid();
        ifinfo
            .from_name(name)
            .map_err(Error::xsk("interface lookup"))?;
        ifinfo.set_queue(queue);
        // The first socket is the UMEM's own; the others share it.
        let socket = if first {
            Socket::with_shared(&ifinfo, umem.umem())
        } else {
            Socket::new(&ifinfo)
        }
        .map_err(Error::xsk("socket creation"))?;
        let mut device = umem
            .umem()
            .fq_cq(&socket)
            .map_err(Error::xsk("fill/completion ring setup"))?;
        let zc_flags = match config.zero_copy {
            ZeroCopy::Auto => 0,
            ZeroCopy::Require => SocketConfig::XDP_BIND_ZEROCOPY,
            ZeroCopy::Never => SocketConfig::XDP_BIND_COPY,
        };
        let user = umem
            .umem()
            .rx_tx(
                &socket,
                &SocketConfig {
                    rx_size: NonZeroU32::new(rings.rx),
                    tx_size: if first {
                        NonZeroU32::new(rings.tx)
                    } else {
                        None
                    },
                    // A socket that shares the UMEM may not pass bind flags (the kernel says
                    // EINVAL): it inherits copy/zero-copy and need_wakeup from the first.
                    bind_flags: if first {
                        SocketConfig::XDP_BIND_NEED_WAKEUP | zc_flags
                    } else {
                        0
                    },
                },
            )
            .map_err(Error::xsk("RX/TX ring setup"))?;
        let rx = user.map_rx().map_err(Error::xsk("RX ring mmap"))?;
        let tx = if first {
            Some(user.map_tx().map_err(Error::xsk("TX ring mmap"))?)
        } else {
            None
        };
        // The fill ring is full before the socket is bound, so the first frames find blocks.
        let filled = refill(
            self.pool,
            &mut self.lent,
            &mut self.stats,
            &mut device,
            self.fill_size,
        );
        debug!(queue, filled, "fill ring populated");
        umem.umem().bind(&user).map_err(Error::xsk("bind"))?;
        let zero_copy = sys::xsk_zero_copy(user.as_raw_fd())?;
        let live = self.live.as_mut().ok_or(Error::Config("backend closed"))?;
        live.steer.register_socket(queue, user.as_raw_fd())?;
        live.rx_fds.push(user.as_raw_fd());
        live.queues.push(XskQueue {
            queue,
            rx,
            tx,
            device,
            user,
            _socket: socket,
        });
        Ok(zero_copy)
    }

    /// The kernel's per-socket counters (drops when the RX ring was full or the fill ring
    /// empty, invalid descriptors), by queue.
    #[must_use]
    pub fn xsk_statistics(&self) -> Vec<(u32, XdpStatisticsV2)> {
        let Some(live) = &self.live else {
            return Vec::new();
        };
        live.queues
            .iter()
            .filter_map(|q| q.user.statistics_v2().ok().map(|s| (q.queue, s)))
            .collect()
    }

    /// The kernel's per-socket counters summed over every queue's socket (read with
    /// `XDP_STATISTICS` on each device queue).
    ///
    /// # Errors
    /// [`Error::Xsk`] (step `"statistics"`) if a `getsockopt` fails.
    pub fn xsk_stats(&self) -> Result<XskStats, Error> {
        let mut sum = XskStats::default();
        if let Some(live) = &self.live {
            for q in &live.queues {
                let s = q.device.statistics_v2().map_err(Error::xsk("statistics"))?;
                sum.add(&s);
            }
        }
        Ok(sum)
    }

    /// The steering program's counters.
    ///
    /// # Errors
    /// [`Error::Ebpf`] if the map cannot be read.
    pub fn program_counters(&self) -> Result<Option<o7s_ebpf::Counters>, Error> {
        match &self.live {
            Some(live) => Ok(Some(live.steer.counters()?)),
            None => Ok(None),
        }
    }

    /// Blocks currently lent to the kernel by this backend (fill ring, RX in flight, TX).
    #[must_use]
    pub fn lent(&self) -> usize {
        self.lent.count
    }

    fn reap_completions(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        for q in &mut live.queues {
            let mut done = q.device.complete(self.completion_size);
            while let Some(addr) = done.read() {
                match take_back(self.pool, &mut self.lent, addr) {
                    Some((packet, _)) => {
                        drop(packet);
                        self.stats.tx_completed += 1;
                    }
                    None => self.stats.rx_bad_desc += 1,
                }
            }
            done.release();
        }
    }

    /// Moves pending descriptors onto the TX ring; returns how many are on the ring, not yet
    /// consumed by the kernel.
    fn push_tx(&mut self) -> u32 {
        let Some(tx) = self
            .live
            .as_mut()
            .and_then(|l| l.queues.first_mut())
            .and_then(|q| q.tx.as_mut())
        else {
            return 0;
        };
        if !self.tx_pending.is_empty() {
            let mut w = tx.transmit(self.tx_pending.len() as u32);
            let n = w.insert(self.tx_pending.iter().copied()) as usize;
            w.commit();
            self.tx_pending.drain(..n);
            self.stats.tx_frames += n as u64;
        }
        tx.pending()
    }

    fn tx_kick(&mut self) -> Result<Kick, Error> {
        let Some(tx) = self
            .live
            .as_ref()
            .and_then(|l| l.queues.first())
            .and_then(|q| q.tx.as_ref())
        else {
            return Ok(Kick::Done);
        };
        if !tx.needs_wakeup() {
            return Ok(Kick::Done);
        }
        self.stats.tx_kicks += 1;
        Ok(sys::xsk_kick_tx(tx.as_raw_fd())?)
    }
}

impl<'p> Backend<'p> for XdpBackend<'p> {
    fn info(&self) -> BackendInfo {
        self.info
    }

    fn recv(&mut self, max: usize, deliver: &mut dyn FnMut(Packet<'p>)) -> Result<usize, Error> {
        let Some(live) = self.live.as_mut() else {
            return Ok(0);
        };
        let mut delivered = 0;
        for q in &mut live.queues {
            let budget = u32::try_from(max - delivered).unwrap_or(u32::MAX);
            if budget > 0 {
                let mut batch = q.rx.receive(budget);
                while let Some(desc) = batch.read() {
                    let Some((mut packet, offset)) =
                        take_back(self.pool, &mut self.lent, desc.addr)
                    else {
                        self.stats.rx_bad_desc += 1;
                        continue;
                    };
                    if packet
                        .set_bounds(offset, offset + desc.len as usize)
                        .is_err()
                    {
                        self.stats.rx_bad_desc += 1;
                        continue;
                    }
                    self.stats.rx_frames += 1;
                    delivered += 1;
                    deliver(packet);
                }
                batch.release();
            }
            refill(
                self.pool,
                &mut self.lent,
                &mut self.stats,
                &mut q.device,
                self.fill_size,
            );
            if q.device.needs_wakeup() {
                sys::xsk_kick_fill(q.device.as_raw_fd());
            }
        }
        Ok(delivered)
    }

    fn send(&mut self, frame: Packet<'p>) -> Result<(), (Packet<'p>, Error)> {
        if self.live.is_none() {
            return Err((frame, Error::Config("backend closed")));
        }
        let len = frame.len();
        let fits = self
            .pool
            .umem_addr(frame.index(), frame.head())
            .is_ok_and(|addr| addr % self.chunk + len as u64 <= self.chunk);
        let frame = if fits {
            frame
        } else {
            // A block larger than a chunk: copy the frame into a frame block.
            let mut copy = match self.pool.try_alloc_frame() {
                Ok(p) => p,
                Err(e) => return Err((frame, e.into())),
            };
            let head = copy.head() as usize;
            if len > copy.capacity() - head || copy.set_bounds(head, head + len).is_err() {
                return Err((frame, Error::Config("frame larger than a UMEM chunk")));
            }
            copy.data_mut().copy_from_slice(frame.data());
            self.stats.tx_copied += 1;
            copy
        };
        if self.tx_pending.len() >= TX_BATCH {
            if let Err(e) = self.flush() {
                return Err((frame, e));
            }
            if self.tx_pending.len() >= TX_BATCH {
                return Err((frame, Error::WouldBlock));
            }
        }
        let addr = match self.pool.umem_addr(frame.index(), frame.head()) {
            Ok(addr) => addr,
            Err(e) => return Err((frame, e.into())),
        };
        let index = frame.into_index();
        if let Err(e) = self.pool.lend_to_kernel(index) {
            return match self.pool.packet(index) {
                Ok(frame) => Err((frame, e.into())),
                // Unreachable: the block was ours a moment ago. Nothing to give back.
                Err(_) => Ok(()),
            };
        }
        self.lent.insert(index);
        self.tx_pending.push(XdpDesc {
            addr,
            len: len as u32,
            options: 0,
        });
        Ok(())
    }

    /// Also counts the descriptors still on the TX ring (not yet taken by the kernel).
    fn flush(&mut self) -> Result<usize, Error> {
        let mut on_ring = 0;
        for _ in 0..MAX_KICKS {
            self.reap_completions();
            on_ring = self.push_tx();
            if on_ring == 0 {
                break;
            }
            if self.tx_kick()? == Kick::Done && self.tx_pending.is_empty() {
                // The kernel went through everything it could take; completions come later.
                self.reap_completions();
                on_ring = self.push_tx();
                break;
            }
        }
        Ok(self.tx_pending.len() + on_ring as usize)
    }

    fn rx_fds(&self) -> &[RawFd] {
        self.live.as_ref().map_or(&[], |l| &l.rx_fds)
    }

    fn stats(&self) -> BackendStats {
        self.stats
    }
}

impl Drop for XdpBackend<'_> {
    fn drop(&mut self) {
        // Detach the program and close every socket: the kernel then stops writing into (and
        // reading from) the UMEM; copy-mode RX finishes under RCU before close returns.
        drop(self.live.take());
        drop(self.umem.take());
        let pool = self.pool;
        let mut returned = 0;
        for index in self.lent.drain() {
            if let Ok(packet) = pool.take_from_kernel(index) {
                drop(packet);
                returned += 1;
            }
        }
        debug!(returned, "blocks lent to the kernel taken back");
    }
}
