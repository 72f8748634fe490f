//! Packet buffers: a lent view of one pool block with a payload window `[head, tail)` that
//! grows and shrinks at both ends, so lower layers prepend headers in the headroom and append
//! trailers in the tailroom without copying.

use std::fmt;
use std::sync::atomic::Ordering;

use crate::error::{Error, Result};
use crate::pool::Pool;

/// A block this process owns. Dropping it releases the block; [`Packet::into_index`] hands it
/// on (to a ring, the kernel, another process) without releasing.
pub struct Packet<'p> {
    pool: &'p Pool,
    index: u32,
    block: *mut u8,
    size: u32,
    head: u32,
    tail: u32,
}

impl fmt::Debug for Packet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packet")
            .field("index", &self.index)
            .field("head", &self.head)
            .field("tail", &self.tail)
            .field("size", &self.size)
            .finish()
    }
}

impl<'p> Packet<'p> {
    pub(crate) fn new(pool: &'p Pool, index: u32, head: u32, tail: u32) -> Self {
        let (block, size) = pool.block_ptr(index);
        Self {
            pool,
            index,
            block,
            size,
            head,
            tail,
        }
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn pool(&self) -> &'p Pool {
        self.pool
    }

    /// Payload length.
    pub fn len(&self) -> usize {
        (self.tail - self.head) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    /// Offset of the payload's first byte within the block.
    pub fn head(&self) -> u32 {
        self.head
    }

    /// Offset just past the payload within the block.
    pub fn tail(&self) -> u32 {
        self.tail
    }

    pub fn headroom(&self) -> usize {
        self.head as usize
    }

    pub fn tailroom(&self) -> usize {
        (self.size - self.tail) as usize
    }

    /// Size of the whole block.
    pub fn capacity(&self) -> usize {
        self.size as usize
    }

    pub fn data(&self) -> &[u8] {
        &self.block()[self.head as usize..self.tail as usize]
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        let (h, t) = (self.head as usize, self.tail as usize);
        &mut self.block_mut()[h..t]
    }

    /// The whole block, for paths (AF_XDP RX) that place data at any offset.
    pub fn block(&self) -> &[u8] {
        // SAFETY: block/size describe one block inside the pool mapping, which outlives 'p.
        // This process owns the block (the pool protocol gives no other process access).
        unsafe { std::slice::from_raw_parts(self.block, self.size as usize) }
    }

    pub fn block_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `block`; `&mut self` makes this the only view in this process.
        unsafe { std::slice::from_raw_parts_mut(self.block, self.size as usize) }
    }

    /// Grows the payload by `n` bytes at the front and returns them (to write a header).
    pub fn push_head(&mut self, n: usize) -> Result<&mut [u8]> {
        if n > self.head as usize {
            return Err(Error::NoRoom {
                what: "headroom",
                need: n,
                have: self.head as usize,
            });
        }
        self.head -= n as u32;
        let h = self.head as usize;
        Ok(&mut self.block_mut()[h..h + n])
    }

    /// Strips `n` bytes from the front of the payload.
    pub fn pull_head(&mut self, n: usize) -> Result<()> {
        if n > self.len() {
            return Err(Error::NoRoom {
                what: "payload",
                need: n,
                have: self.len(),
            });
        }
        self.head += n as u32;
        Ok(())
    }

    /// Grows the payload by `n` bytes at the back and returns them (to write a trailer).
    pub fn push_tail(&mut self, n: usize) -> Result<&mut [u8]> {
        if n > self.tailroom() {
            return Err(Error::NoRoom {
                what: "tailroom",
                need: n,
                have: self.tailroom(),
            });
        }
        let t = self.tail as usize;
        self.tail += n as u32;
        Ok(&mut self.block_mut()[t..t + n])
    }

    /// Strips `n` bytes from the back of the payload.
    pub fn pull_tail(&mut self, n: usize) -> Result<()> {
        if n > self.len() {
            return Err(Error::NoRoom {
                what: "payload",
                need: n,
                have: self.len(),
            });
        }
        self.tail -= n as u32;
        Ok(())
    }

    /// Shortens the payload to `len` bytes (no-op if already shorter or equal).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.tail = self.head + len as u32;
        }
    }

    /// Sets the payload window to `[head, tail)` of the block (the RX path knows where the
    /// kernel put the frame).
    pub fn set_bounds(&mut self, head: usize, tail: usize) -> Result<()> {
        if head > tail || tail > self.size as usize {
            return Err(Error::NoRoom {
                what: "block bytes",
                need: tail.max(head),
                have: self.size as usize,
            });
        }
        self.head = head as u32;
        self.tail = tail as u32;
        Ok(())
    }

    /// Extra reference (see [`Pool::hold`]).
    pub fn hold(&self) -> Result<()> {
        self.pool.hold(self.index)
    }

    /// Publishes the payload bounds in the descriptor and gives up the handle without releasing
    /// the block: whoever takes the index next owns it.
    pub fn into_index(self) -> u32 {
        self.publish_bounds();
        let index = self.index;
        std::mem::forget(self);
        index
    }

    pub(crate) fn publish_bounds(&self) {
        let d = self.pool.desc(self.index);
        d.head.store(self.head, Ordering::Relaxed);
        d.tail.store(self.tail, Ordering::Relaxed);
    }
}

impl Drop for Packet<'_> {
    fn drop(&mut self) {
        // A failure means the block was taken from us by reclaim; there is nothing to undo.
        let _ = self.pool.release(self.index);
    }
}

// SAFETY: a Packet is a unique handle on a block in shared memory, like a Box; the pool it
// borrows is Sync.
unsafe impl Send for Packet<'_> {}
