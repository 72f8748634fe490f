//! Block descriptors: where a block is, packed in one atomic word so that every change of place
//! is a single compare-and-swap. A process killed at any instant leaves each word either before
//! or after a change, never in between.
//!
//! ```text
//! bits 60..64  place kind   (free, owned, ring, kernel, held, cached)
//! bits 52..60  holds        (extra references, e.g. kept for retransmission)
//! bits 30..52  holder pid   (the one process that may hold extra references; 0 = none)
//! bits  0..30  id           (shard for free, pid for owned/kernel/cached, ring for ring)
//! ```

/// Where a block is. Every block is in exactly one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Place {
    /// On the free list of a shard.
    Free { shard: u32 },
    /// Owned by a live process (allocated, or read from a ring).
    Owned { pid: u32 },
    /// Queued on a flow ring.
    Ring { ring: u32 },
    /// Lent to the kernel (AF_XDP fill or TX ring) by process `pid`.
    Kernel { pid: u32 },
    /// Its primary reference is gone, only the holder's extra references keep it.
    Held,
    /// In process `pid`'s local allocation cache: free, but reserved for that process.
    Cached { pid: u32 },
}

/// The decoded descriptor word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescWord {
    pub place: Place,
    pub holds: u8,
    pub holder: u32,
}

const KIND_SHIFT: u32 = 60;
const HOLDS_SHIFT: u32 = 52;
const HOLDER_SHIFT: u32 = 30;
const ID_MASK: u64 = (1 << 30) - 1;
const HOLDER_MASK: u64 = (1 << 22) - 1;
/// Largest pid a descriptor can record (Linux's `pid_max` limit is 2^22).
pub const MAX_PID: u32 = (1 << 22) - 1;

const FREE: u64 = 0;
const OWNED: u64 = 1;
const RING: u64 = 2;
const KERNEL: u64 = 3;
const HELD: u64 = 4;
const CACHED: u64 = 5;

impl DescWord {
    pub fn new(place: Place) -> Self {
        Self {
            place,
            holds: 0,
            holder: 0,
        }
    }

    pub fn encode(self) -> u64 {
        let (kind, id) = match self.place {
            Place::Free { shard } => (FREE, shard),
            Place::Owned { pid } => (OWNED, pid),
            Place::Ring { ring } => (RING, ring),
            Place::Kernel { pid } => (KERNEL, pid),
            Place::Held => (HELD, 0),
            Place::Cached { pid } => (CACHED, pid),
        };
        (kind << KIND_SHIFT)
            | (u64::from(self.holds) << HOLDS_SHIFT)
            | ((u64::from(self.holder) & HOLDER_MASK) << HOLDER_SHIFT)
            | (u64::from(id) & ID_MASK)
    }

    /// Decodes a word; `None` for a kind no code writes (shared memory scribbled on).
    pub fn decode(word: u64) -> Option<Self> {
        let id = (word & ID_MASK) as u32;
        let place = match word >> KIND_SHIFT {
            FREE => Place::Free { shard: id },
            OWNED => Place::Owned { pid: id },
            RING => Place::Ring { ring: id },
            KERNEL => Place::Kernel { pid: id },
            HELD => Place::Held,
            CACHED => Place::Cached { pid: id },
            _ => return None,
        };
        Some(Self {
            place,
            holds: (word >> HOLDS_SHIFT) as u8,
            holder: ((word >> HOLDER_SHIFT) & HOLDER_MASK) as u32,
        })
    }

    pub fn with_place(self, place: Place) -> Self {
        Self { place, ..self }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;

    fn place() -> impl Strategy<Value = Place> {
        prop_oneof![
            (0u32..16).prop_map(|shard| Place::Free { shard }),
            (1u32..=MAX_PID).prop_map(|pid| Place::Owned { pid }),
            (0u32..(1 << 16)).prop_map(|ring| Place::Ring { ring }),
            (1u32..=MAX_PID).prop_map(|pid| Place::Kernel { pid }),
            Just(Place::Held),
            (1u32..=MAX_PID).prop_map(|pid| Place::Cached { pid }),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(place in place(), holds: u8, holder in 0u32..=MAX_PID) {
            let w = DescWord { place, holds, holder };
            prop_assert_eq!(DescWord::decode(w.encode()), Some(w));
        }

        #[test]
        fn decode_never_panics(word: u64) {
            if let Some(w) = DescWord::decode(word) {
                prop_assert_eq!(DescWord::decode(w.encode()), Some(w));
            }
        }
    }
}
