//! The AF_PACKET backend: a raw socket bound to the interface and the layer's EtherType.
//!
//! RX reads with `recvmmsg` straight into pool blocks kept ready in a small spare list (no
//! copy); a frame that finds the pool empty is read into a scratch buffer and counted as
//! dropped, so RX never stalls. TX queues packets and sends their windows with `sendmmsg`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use o7s_pool::{Packet, Pool};
use tracing::debug;

use super::{Backend, BackendConfig, BackendInfo, BackendKind, BackendStats, Error};
use crate::sys::{self, MAX_BATCH, RecvMeta};

/// An AF_PACKET socket on one interface, moving frames in and out of pool blocks.
pub struct PacketBackend<'p> {
    pool: &'p Pool,
    fd: OwnedFd,
    /// `fd`'s number, for [`Backend::rx_fds`].
    raw_fd: RawFd,
    /// Blocks allocated for the next receive (their windows are meaningless until then).
    spare: Vec<Packet<'p>>,
    /// Frames waiting for `sendmmsg`.
    txq: Vec<Packet<'p>>,
    scratch: Vec<u8>,
    max_frame: usize,
    stats: BackendStats,
}

impl std::fmt::Debug for PacketBackend<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketBackend")
            .field("fd", &self.fd)
            .field("spare", &self.spare.len())
            .field("txq", &self.txq.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<'p> PacketBackend<'p> {
    /// Opens the socket on `config.iface` (in the calling thread's network namespace).
    ///
    /// # Errors
    /// [`Error::Interface`] for an unknown interface, [`Error::Sys`] for the socket calls.
    pub fn open(pool: &'p Pool, config: &BackendConfig) -> Result<Self, Error> {
        let ifindex =
            nix::net::if_::if_nametoindex(config.iface.as_str()).map_err(|e| Error::Interface {
                iface: config.iface.clone(),
                source: e.into(),
            })?;
        let fd = sys::packet_socket(ifindex, config.ethertype)?;
        sys::set_buffers(fd.as_fd(), config.socket_buffer)?;
        debug!(iface = %config.iface, ifindex, "AF_PACKET socket bound");
        Ok(PacketBackend {
            pool,
            raw_fd: fd.as_raw_fd(),
            fd,
            spare: Vec::with_capacity(MAX_BATCH),
            txq: Vec::with_capacity(MAX_BATCH),
            scratch: vec![0; config.max_frame.max(64)],
            max_frame: config.max_frame,
            stats: BackendStats::default(),
        })
    }

    fn top_up_spares(&mut self, want: usize) {
        while self.spare.len() < want {
            match self.pool.try_alloc(self.max_frame) {
                Ok(p) => self.spare.push(p),
                Err(_) => break,
            }
        }
    }

    /// Reads one frame into the scratch buffer and drops it; returns whether there was one.
    fn discard_one(&mut self) -> Result<bool, Error> {
        let mut meta = [RecvMeta::default()];
        let got = sys::recv_batch(self.fd.as_fd(), &mut [&mut self.scratch[..]], &mut meta)?;
        if got > 0 {
            self.stats.rx_no_buffer += 1;
        }
        Ok(got > 0)
    }
}

impl<'p> Backend<'p> for PacketBackend<'p> {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: BackendKind::Packet,
            zero_copy: false,
            queues: 1,
        }
    }

    fn recv(&mut self, max: usize, deliver: &mut dyn FnMut(Packet<'p>)) -> Result<usize, Error> {
        let mut delivered = 0;
        let mut discarded = 0;
        while delivered + discarded < max {
            let want = (max - delivered - discarded).min(MAX_BATCH);
            self.top_up_spares(want);
            if self.spare.is_empty() {
                if !self.discard_one()? {
                    break;
                }
                discarded += 1;
                continue;
            }
            let k = want.min(self.spare.len());
            let mut meta = [RecvMeta::default(); MAX_BATCH];
            let got = {
                let mut bufs: [&mut [u8]; MAX_BATCH] = std::array::from_fn(|_| Default::default());
                for (buf, p) in bufs.iter_mut().zip(self.spare[..k].iter_mut()) {
                    let head = p.head() as usize;
                    *buf = &mut p.block_mut()[head..];
                }
                sys::recv_batch(self.fd.as_fd(), &mut bufs[..k], &mut meta[..k])?
            };
            for (mut p, m) in self.spare.drain(..got).zip(meta) {
                let head = p.head() as usize;
                if m.truncated || p.set_bounds(head, head + m.len).is_err() {
                    self.stats.rx_truncated += 1;
                    continue;
                }
                deliver(p);
                delivered += 1;
            }
            self.stats.rx_frames += got as u64;
            if got < k {
                break;
            }
        }
        Ok(delivered)
    }

    fn send(&mut self, frame: Packet<'p>) -> Result<(), (Packet<'p>, Error)> {
        if self.txq.len() == MAX_BATCH {
            if let Err(e) = self.flush() {
                return Err((frame, e));
            }
            if self.txq.len() == MAX_BATCH {
                return Err((frame, Error::WouldBlock));
            }
        }
        self.txq.push(frame);
        Ok(())
    }

    fn flush(&mut self) -> Result<usize, Error> {
        while !self.txq.is_empty() {
            let k = self.txq.len();
            let mut frames: [&[u8]; MAX_BATCH] = [&[]; MAX_BATCH];
            for (f, p) in frames.iter_mut().zip(&self.txq) {
                *f = p.data();
            }
            match sys::send_batch(self.fd.as_fd(), &frames[..k]) {
                Ok(0) => break,
                Ok(n) => {
                    // Sent: the kernel has copied them, the blocks go back to the pool.
                    self.txq.drain(..n);
                    self.stats.tx_frames += n as u64;
                }
                Err(e) => {
                    // The first frame is refused for good (e.g. EMSGSIZE): drop it so it does
                    // not wedge the queue.
                    self.txq.remove(0);
                    return Err(e.into());
                }
            }
        }
        Ok(self.txq.len())
    }

    fn rx_fds(&self) -> &[RawFd] {
        std::slice::from_ref(&self.raw_fd)
    }

    fn stats(&self) -> BackendStats {
        self.stats
    }
}
