//! Where everything sits in a pool object, computed purely from its configuration.
//!
//! ```text
//! [header][shard locks][shard stacks][block descriptors][flow rings][data area]
//! ```
//! The data area is page-aligned and starts with the frame class (4096-byte blocks), so frame
//! block `i` is at data offset `i * 4096`; every other class follows, each starting on a page, so a
//! block of 4096 bytes or less never straddles a 4096-byte UMEM chunk. Block metadata lives in the
//! descriptor array, never in the data area (the kernel writes received frames at chunk + 256).
//!
//! Openers recompute the layout from the few numbers in the header and check it against the
//! object's size, so no offset is ever read from shared memory.

use crate::error::{Error, Result};

/// Size of a frame-class block and of an AF_XDP UMEM chunk.
pub const FRAME_SIZE: u32 = 4096;
/// Smallest and largest block sizes a class may have.
pub const MIN_CLASS_SIZE: u32 = 256;
pub const MAX_CLASS_SIZE: u32 = 1 << 20;
/// At most this many classes (256 B ..= 1 MiB).
pub const MAX_CLASSES: usize = 13;
pub const MAX_SHARDS: u32 = 16;
/// Upper bound on blocks in one pool (block indices are `u32`; descriptors carry 30-bit ids).
pub const MAX_BLOCKS: u32 = 1 << 24;
pub const MIN_RING_CAPACITY: u32 = 1024;
pub const MAX_RING_CAPACITY: u32 = 1 << 20;
pub const MAX_RINGS: u32 = 1 << 16;
pub(crate) const CACHE_LINE: usize = 64;
pub(crate) const PAGE: usize = 4096;

/// One size class: power-of-two `block_size`, `blocks` of them (0 = class absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassConfig {
    pub block_size: u32,
    pub blocks: u32,
}

/// Everything that decides a pool's layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Size classes; the 4096-byte class is the frame class and must be present.
    pub classes: Vec<ClassConfig>,
    /// Free-list shards per class (allocation starts at `pid % shards`, then steals).
    pub shards: u32,
    /// Number of flow rings in the pool's ring table.
    pub rings: u32,
    /// Slots per ring: a power of two, at least 1024.
    pub ring_capacity: u32,
    /// Bytes left in front of a freshly allocated packet for lower-layer headers.
    pub headroom: u32,
    /// Bytes left behind a freshly allocated packet (AEAD tag, CRC).
    pub tailroom: u32,
}

impl PoolConfig {
    /// The shared pool's defaults: in the spirit of the reference's (256 B ..= 64 KiB), with a
    /// frame class large enough to keep AF_XDP fill and RX rings of 4096 full (64 MiB).
    pub fn shared_default() -> Self {
        Self {
            classes: vec![
                ClassConfig {
                    block_size: 256,
                    blocks: 1024,
                },
                ClassConfig {
                    block_size: 512,
                    blocks: 768,
                },
                ClassConfig {
                    block_size: 1024,
                    blocks: 512,
                },
                ClassConfig {
                    block_size: 2048,
                    blocks: 384,
                },
                ClassConfig {
                    block_size: FRAME_SIZE,
                    blocks: 16384,
                },
                ClassConfig {
                    block_size: 16384,
                    blocks: 128,
                },
                ClassConfig {
                    block_size: 65536,
                    blocks: 64,
                },
            ],
            shards: 4,
            rings: 1024,
            ring_capacity: 4096,
            headroom: 256,
            tailroom: 32,
        }
    }

    /// A per-user pool's defaults: an eighth of the shared pool, like the reference's.
    pub fn per_user_default() -> Self {
        let mut cfg = Self::shared_default();
        for class in &mut cfg.classes {
            class.blocks = (class.blocks / 8).max(8);
        }
        cfg.rings = 256;
        cfg.ring_capacity = 1024;
        cfg
    }

    /// A small pool for tests: few blocks per class.
    pub fn small() -> Self {
        Self {
            classes: vec![
                ClassConfig {
                    block_size: 256,
                    blocks: 64,
                },
                ClassConfig {
                    block_size: 1024,
                    blocks: 64,
                },
                ClassConfig {
                    block_size: FRAME_SIZE,
                    blocks: 128,
                },
                ClassConfig {
                    block_size: 65536,
                    blocks: 8,
                },
            ],
            shards: 4,
            rings: 16,
            ring_capacity: 1024,
            headroom: 256,
            tailroom: 32,
        }
    }
}

/// Where one class's descriptors, stacks and data are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassLayout {
    pub block_size: u32,
    pub blocks: u32,
    /// Global index of the class's first block.
    pub first_index: u32,
    /// Offset of the first block from the data area's start.
    pub data_offset: u64,
    /// Offset of shard 0's lock; shard `s` is at `+ s * SHARD_SIZE`.
    pub(crate) shards_offset: usize,
    /// Offset of shard 0's stack; each shard's stack holds `stack_capacity` u32s.
    pub(crate) stacks_offset: usize,
    pub(crate) stack_capacity: u32,
}

impl ClassLayout {
    pub fn contains(&self, index: u32) -> bool {
        index.wrapping_sub(self.first_index) < self.blocks
    }

    /// A block's home shard. Shards own contiguous runs of blocks, so the descriptors at the
    /// top of two shards' stacks do not share a cache line (interleaving them made two
    /// processes on different shards contend on the same lines).
    pub(crate) fn shard_of(&self, index: u32) -> u32 {
        (index - self.first_index) / self.stack_capacity
    }

    /// The class-relative block numbers whose home is shard `s`.
    pub(crate) fn shard_range(&self, s: u32) -> std::ops::Range<u32> {
        let start = (s * self.stack_capacity).min(self.blocks);
        start..(start + self.stack_capacity).min(self.blocks)
    }
}

/// The computed layout of a pool object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub config: PoolConfig,
    /// Classes in ascending block size (the order allocation searches).
    pub classes: Vec<ClassLayout>,
    /// Position of the frame class in `classes`.
    pub frame_class: usize,
    pub total_blocks: u32,
    pub(crate) desc_offset: usize,
    pub(crate) rings_offset: usize,
    pub(crate) ring_stride: usize,
    pub data_offset: usize,
    pub data_len: usize,
    pub total_len: usize,
}

pub(crate) const HEADER_SIZE: usize = 256;
pub(crate) const SHARD_SIZE: usize = CACHE_LINE;
pub(crate) const DESC_SIZE: usize = 16;
pub(crate) const RING_HEADER_SIZE: usize = 3 * CACHE_LINE;

fn align_up(value: usize, align: usize) -> Option<usize> {
    value.checked_add(align - 1).map(|v| v & !(align - 1))
}

fn bad(reason: String) -> Error {
    Error::BadConfig(reason)
}

impl Layout {
    /// Checks `config` and lays the pool out. Every size is checked for overflow.
    pub fn compute(config: &PoolConfig) -> Result<Self> {
        let c = config;
        if c.shards == 0 || c.shards > MAX_SHARDS {
            return Err(bad(format!(
                "shards must be 1..={MAX_SHARDS}, not {}",
                c.shards
            )));
        }
        if !c.ring_capacity.is_power_of_two()
            || !(MIN_RING_CAPACITY..=MAX_RING_CAPACITY).contains(&c.ring_capacity)
        {
            return Err(bad(format!(
                "ring capacity must be a power of two in {MIN_RING_CAPACITY}..={MAX_RING_CAPACITY}, not {}",
                c.ring_capacity
            )));
        }
        if c.rings > MAX_RINGS {
            return Err(bad(format!("at most {MAX_RINGS} rings, not {}", c.rings)));
        }
        let mut classes: Vec<ClassConfig> =
            c.classes.iter().copied().filter(|k| k.blocks > 0).collect();
        classes.sort_by_key(|k| k.block_size);
        if classes.len() > MAX_CLASSES {
            return Err(bad(format!("at most {MAX_CLASSES} classes")));
        }
        for pair in classes.windows(2) {
            if pair[0].block_size == pair[1].block_size {
                return Err(bad(format!("class {} given twice", pair[0].block_size)));
            }
        }
        for k in &classes {
            if !k.block_size.is_power_of_two()
                || !(MIN_CLASS_SIZE..=MAX_CLASS_SIZE).contains(&k.block_size)
            {
                return Err(bad(format!(
                    "class size {} is not a power of two in {MIN_CLASS_SIZE}..={MAX_CLASS_SIZE}",
                    k.block_size
                )));
            }
        }
        let frame_class = classes
            .iter()
            .position(|k| k.block_size == FRAME_SIZE)
            .ok_or_else(|| bad("the 4096-byte frame class must have blocks".into()))?;
        // Classes smaller than the default head- and tailroom still serve `try_alloc_with`.
        let largest = classes[classes.len() - 1].block_size;
        if u64::from(c.headroom) + u64::from(c.tailroom) >= u64::from(largest) {
            return Err(bad(format!(
                "headroom {} + tailroom {} leaves no room in the largest ({largest}-byte) class",
                c.headroom, c.tailroom
            )));
        }
        let total_blocks = classes
            .iter()
            .try_fold(0u32, |acc, k| acc.checked_add(k.blocks))
            .filter(|&n| n <= MAX_BLOCKS)
            .ok_or_else(|| bad(format!("at most {MAX_BLOCKS} blocks in a pool")))?;

        let overflow = || bad("pool too large".into());
        let mut off = HEADER_SIZE;
        let mut layouts = Vec::with_capacity(classes.len());
        for k in &classes {
            let stack_capacity = k.blocks.div_ceil(c.shards);
            layouts.push(ClassLayout {
                block_size: k.block_size,
                blocks: k.blocks,
                first_index: 0,
                data_offset: 0,
                shards_offset: 0,
                stacks_offset: 0,
                stack_capacity,
            });
        }
        for l in &mut layouts {
            l.shards_offset = off;
            off += SHARD_SIZE * c.shards as usize;
        }
        for l in &mut layouts {
            l.stacks_offset = off;
            let bytes = (l.stack_capacity as usize)
                .checked_mul(4 * c.shards as usize)
                .ok_or_else(overflow)?;
            off = align_up(off.checked_add(bytes).ok_or_else(overflow)?, CACHE_LINE)
                .ok_or_else(overflow)?;
        }
        // Index and data order: the frame class first, then the others by size.
        let mut order: Vec<usize> = (0..layouts.len()).collect();
        order.sort_by_key(|&i| (i != frame_class, layouts[i].block_size));
        let mut index = 0u32;
        let mut data = 0usize;
        for &i in &order {
            let l = &mut layouts[i];
            l.first_index = index;
            index += l.blocks;
            data = align_up(data, PAGE).ok_or_else(overflow)?;
            l.data_offset = data as u64;
            let bytes = (l.block_size as usize)
                .checked_mul(l.blocks as usize)
                .ok_or_else(overflow)?;
            data = data.checked_add(bytes).ok_or_else(overflow)?;
        }
        let data_len = align_up(data, PAGE).ok_or_else(overflow)?;
        let desc_offset = off;
        off = off
            .checked_add(
                DESC_SIZE
                    .checked_mul(total_blocks as usize)
                    .ok_or_else(overflow)?,
            )
            .and_then(|o| align_up(o, CACHE_LINE))
            .ok_or_else(overflow)?;
        let rings_offset = off;
        let ring_stride = align_up(RING_HEADER_SIZE + 4 * c.ring_capacity as usize, CACHE_LINE)
            .ok_or_else(overflow)?;
        off = off
            .checked_add(
                ring_stride
                    .checked_mul(c.rings as usize)
                    .ok_or_else(overflow)?,
            )
            .ok_or_else(overflow)?;
        let data_offset = align_up(off, PAGE).ok_or_else(overflow)?;
        let total_len = data_offset.checked_add(data_len).ok_or_else(overflow)?;
        Ok(Self {
            config: PoolConfig {
                classes,
                ..config.clone()
            },
            classes: layouts,
            frame_class,
            total_blocks,
            desc_offset,
            rings_offset,
            ring_stride,
            data_offset,
            data_len,
            total_len,
        })
    }

    /// The class a global block index belongs to.
    pub fn class_of(&self, index: u32) -> Option<(usize, &ClassLayout)> {
        self.classes
            .iter()
            .enumerate()
            .find(|(_, k)| k.contains(index))
    }

    /// The smallest class whose blocks hold `len` payload bytes plus head- and tailroom.
    pub fn class_for_len(&self, len: usize) -> Option<usize> {
        self.class_for(len, self.config.headroom as usize)
    }

    /// The smallest class whose blocks hold `len` bytes after `headroom`, plus the tailroom.
    pub fn class_for(&self, len: usize, headroom: usize) -> Option<usize> {
        let need = len
            .checked_add(headroom)?
            .checked_add(self.config.tailroom as usize)?;
        self.classes
            .iter()
            .position(|k| k.block_size as usize >= need)
    }

    /// The largest payload a freshly allocated packet can take.
    pub fn max_len(&self) -> usize {
        let largest = self.classes.last().map_or(0, |k| k.block_size as usize);
        largest - self.config.headroom as usize - self.config.tailroom as usize
    }

    /// Data-area offset of a block.
    pub fn block_offset(&self, index: u32) -> Option<u64> {
        let (_, k) = self.class_of(index)?;
        Some(k.data_offset + u64::from(index - k.first_index) * u64::from(k.block_size))
    }

    /// The block (and offset within it) that holds data-area offset `addr`, as AF_XDP reports
    /// UMEM addresses.
    pub fn block_at(&self, addr: u64) -> Option<(u32, u32)> {
        self.classes.iter().find_map(|k| {
            let rel = addr.checked_sub(k.data_offset)?;
            let n = rel / u64::from(k.block_size);
            (n < u64::from(k.blocks)).then(|| {
                (
                    k.first_index + n as u32,
                    (rel % u64::from(k.block_size)) as u32,
                )
            })
        })
    }

    pub(crate) fn ring_offset(&self, ring: u32) -> Option<usize> {
        (ring < self.config.rings).then(|| self.rings_offset + ring as usize * self.ring_stride)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn defaults_lay_out() {
        for cfg in [
            PoolConfig::shared_default(),
            PoolConfig::per_user_default(),
            PoolConfig::small(),
        ] {
            let l = Layout::compute(&cfg).expect("valid");
            assert_eq!(l.data_offset % PAGE, 0);
            let frame = l.classes[l.frame_class];
            assert_eq!(frame.first_index, 0);
            assert_eq!(frame.data_offset, 0);
            assert!(l.total_len >= l.data_offset + l.data_len);
        }
    }

    #[test]
    fn rejects_bad_configs() {
        let mut c = PoolConfig::small();
        c.ring_capacity = 1000;
        assert!(Layout::compute(&c).is_err());
        let mut c = PoolConfig::small();
        c.classes.retain(|k| k.block_size != FRAME_SIZE);
        assert!(Layout::compute(&c).is_err());
        let mut c = PoolConfig::small();
        c.classes.push(ClassConfig {
            block_size: 3000,
            blocks: 1,
        });
        assert!(Layout::compute(&c).is_err());
        let mut c = PoolConfig::small();
        c.shards = 0;
        assert!(Layout::compute(&c).is_err());
        let mut c = PoolConfig::small();
        c.headroom = 65536 - 32;
        assert!(Layout::compute(&c).is_err());
        let mut c = PoolConfig::small();
        c.classes.push(ClassConfig {
            block_size: 1 << 20,
            blocks: u32::MAX,
        });
        assert!(Layout::compute(&c).is_err());
    }
}
