//! The pool object: creation and opening, block allocation over sharded free lists, references,
//! and crash recovery (`reclaim`) with its invariant checker (`verify`).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use crate::desc::{DescWord, MAX_PID, Place};
use crate::error::{Error, Result};
use crate::evset::PostCache;
use crate::layout::{
    ClassConfig, ClassLayout, HEADER_SIZE, Layout, MAX_CLASSES, PoolConfig, SHARD_SIZE,
};
use crate::packet::Packet;
use crate::sys::{self, LockOutcome, Mapping};

const MAGIC: [u8; 8] = *b"O7SPOOL\0";
const VERSION: u32 = 1;
const READY: u32 = 0x5245_4459;
/// How long `open` waits for a creator that is still initialising.
const READY_WAIT: Duration = Duration::from_secs(2);

/// The fixed-size header at offset 0. Openers lay the rest out from these numbers alone.
#[repr(C)]
struct Header {
    magic: [u8; 8],
    version: u32,
    ready: AtomicU32,
    creator_pid: u32,
    shards: u32,
    rings: u32,
    ring_capacity: u32,
    headroom: u32,
    tailroom: u32,
    nclasses: u32,
    class_sizes: [u32; MAX_CLASSES],
    class_blocks: [u32; MAX_CLASSES],
    /// Bumped (when someone waits) after every free, for blocking allocation.
    free_seq: AtomicU32,
    free_waiters: AtomicU32,
}
const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_SIZE);

#[repr(C)]
pub(crate) struct Desc {
    pub(crate) word: AtomicU64,
    pub(crate) head: AtomicU32,
    pub(crate) tail: AtomicU32,
}

#[repr(C)]
struct Shard {
    mutex: libc::pthread_mutex_t,
    count: AtomicU32,
}
const _: () = assert!(std::mem::size_of::<Shard>() <= SHARD_SIZE);

/// Who may open a pool, and so how its object is named and protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The shared pool: mode 0660, group `ouroboros` when that group exists.
    Shared,
    /// A per-user pool: mode 0600, owned by `uid`.
    User { uid: u32 },
}

/// Group whose members (besides root) may use the shared pool.
pub const SHARED_GROUP: &str = "ouroboros";

/// Name of a pool object under a prefix: several hosts' pools coexist on one machine when each
/// has its own prefix.
pub fn pool_name(prefix: &str, access: Access) -> String {
    match access {
        Access::Shared => format!("{prefix}.pool"),
        Access::User { uid } => format!("{prefix}.pup.{uid}"),
    }
}

/// The UMEM view of the pool's data area, for AF_XDP registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UmemRegion {
    /// Start of the data area in this process (page-aligned).
    pub base: *mut u8,
    /// Length of the data area (a multiple of `chunk_size`).
    pub len: usize,
    /// AF_XDP chunk size: the frame class's block size.
    pub chunk_size: u32,
    /// Frame-class blocks are indices `0..frames`, at UMEM address `index * chunk_size`.
    pub frames: u32,
}

/// A mapped packet pool.
#[derive(Debug)]
pub struct Pool {
    map: Mapping,
    layout: Layout,
    name: String,
    pid: u32,
    /// Per class, this handle's local cache of blocks (`Cached { pid }` in their descriptors):
    /// an alloc+free pair in one process then takes no shared lock. Bounded, flushed when full,
    /// bypassed while another process waits for blocks, emptied on drop, and returned by
    /// `reclaim` if the process dies.
    caches: Vec<LocalCache>,
    /// Per ring, the event sets this handle last posted to (see `evset::post`).
    post_cache: PostCache,
}

#[derive(Debug, Default)]
struct LocalCache {
    /// 0 disables the cache (small classes: a few hidden blocks would starve other processes).
    capacity: usize,
    /// The most recently freed block ([`NO_BLOCK`] if none): taken and refilled with one atomic
    /// swap, so an alloc+free pair in a loop never locks anything.
    hot: AtomicU32,
    /// The rest of the cache (at most `capacity` blocks besides `hot`).
    blocks: std::sync::Mutex<Vec<u32>>,
}

const NO_BLOCK: u32 = u32::MAX;

/// Cache size for a class: a sixty-fourth of its blocks, at most 64; none below 4.
fn cache_capacity(blocks: u32) -> usize {
    let cap = (blocks / 64).min(64) as usize;
    if cap < 4 { 0 } else { cap }
}

fn caches_for(layout: &Layout) -> Vec<LocalCache> {
    layout
        .classes
        .iter()
        .map(|k| {
            let capacity = cache_capacity(k.blocks);
            LocalCache {
                capacity,
                hot: AtomicU32::new(NO_BLOCK),
                blocks: std::sync::Mutex::new(Vec::with_capacity(capacity + 1)),
            }
        })
        .collect()
}

impl Pool {
    /// Creates and initialises a new pool object. Fails if it exists already.
    pub fn create(name: &str, config: &PoolConfig, access: Access) -> Result<Self> {
        let layout = Layout::compute(config)?;
        let mode = match access {
            Access::Shared => 0o660,
            Access::User { .. } => 0o600,
        };
        let fd =
            sys::shm_create(name, mode).map_err(|e| Error::sys("shm_open(O_CREAT)", name, e))?;
        let result = Self::init_object(name, fd, layout, access);
        if result.is_err() {
            let _ = sys::shm_unlink(name);
        }
        result
    }

    fn init_object(name: &str, fd: OwnedFd, layout: Layout, access: Access) -> Result<Self> {
        match access {
            Access::Shared => {
                if let Some(gid) = sys::group_gid(SHARED_GROUP) {
                    sys::fchown(&fd, None, Some(gid)).map_err(|e| Error::sys("fchown", name, e))?;
                }
            }
            Access::User { uid } => {
                if uid != sys::geteuid() {
                    sys::fchown(&fd, Some(uid), None).map_err(|e| Error::sys("fchown", name, e))?;
                }
            }
        }
        sys::ftruncate(&fd, layout.total_len as u64)
            .map_err(|e| Error::sys("ftruncate", name, e))?;
        let map = Mapping::map(&fd, layout.total_len).map_err(|e| Error::sys("mmap", name, e))?;
        let pool = Self {
            caches: caches_for(&layout),
            post_cache: PostCache::new(layout.config.rings),
            map,
            layout,
            name: name.to_owned(),
            pid: sys::getpid(),
        };
        pool.initialise()?;
        Ok(pool)
    }

    fn initialise(&self) -> Result<()> {
        let cfg = &self.layout.config;
        let header = self.header_mut_ptr();
        let mut sizes = [0u32; MAX_CLASSES];
        let mut blocks = [0u32; MAX_CLASSES];
        for (i, k) in cfg.classes.iter().enumerate() {
            sizes[i] = k.block_size;
            blocks[i] = k.blocks;
        }
        // SAFETY: the object was just created by us (O_EXCL) and nobody uses it before `ready`
        // is set; the header fits in HEADER_SIZE bytes at offset 0 of the mapping.
        unsafe {
            header.write(Header {
                magic: MAGIC,
                version: VERSION,
                ready: AtomicU32::new(0),
                creator_pid: self.pid,
                shards: cfg.shards,
                rings: cfg.rings,
                ring_capacity: cfg.ring_capacity,
                headroom: cfg.headroom,
                tailroom: cfg.tailroom,
                nclasses: cfg.classes.len() as u32,
                class_sizes: sizes,
                class_blocks: blocks,
                free_seq: AtomicU32::new(0),
                free_waiters: AtomicU32::new(0),
            });
        }
        for (c, class) in self.layout.classes.iter().enumerate() {
            for s in 0..cfg.shards {
                // SAFETY: the shard slot lies inside the mapping and is not in use yet.
                unsafe { sys::robust_mutex_init(self.shard_mutex(c, s)) }
                    .map_err(|e| Error::sys("pthread_mutex_init", &self.name, e))?;
                let mut n = 0;
                for i in class.shard_range(s) {
                    let index = class.first_index + i;
                    self.desc(index).word.store(
                        DescWord::new(Place::Free { shard: s }).encode(),
                        Ordering::Relaxed,
                    );
                    self.stack_slot(class, s, n).store(index, Ordering::Relaxed);
                    n += 1;
                }
                self.shard(c, s).count.store(n, Ordering::Relaxed);
            }
        }
        crate::ring::init_all(self);
        self.header().ready.store(READY, Ordering::Release);
        Ok(())
    }

    /// Maps an existing pool, after checking that it is one of ours and that its size matches
    /// the layout its header describes.
    pub fn open(name: &str) -> Result<Self> {
        let fd = sys::shm_open(name).map_err(|e| Error::sys("shm_open", name, e))?;
        let corrupt = |reason: String| Error::Corrupt {
            name: name.to_owned(),
            reason,
        };
        let deadline = Instant::now() + READY_WAIT;
        // The creator may still be between ftruncate and the header write.
        let size = loop {
            let (size, ..) = sys::fstat(&fd).map_err(|e| Error::sys("fstat", name, e))?;
            if size as usize >= HEADER_SIZE {
                break size;
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    name: name.to_owned(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let probe = Mapping::map(&fd, HEADER_SIZE).map_err(|e| Error::sys("mmap", name, e))?;
        // SAFETY: the mapping is at least HEADER_SIZE bytes; Header is plain data and atomics.
        let header = unsafe { &*(probe.base() as *const Header) };
        while header.ready.load(Ordering::Acquire) != READY {
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    name: name.to_owned(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if header.magic != MAGIC {
            return Err(corrupt("bad magic".into()));
        }
        if header.version != VERSION {
            return Err(corrupt(format!(
                "version {} (this build reads {VERSION})",
                header.version
            )));
        }
        let n = header.nclasses as usize;
        if n > MAX_CLASSES {
            return Err(corrupt(format!("{n} classes")));
        }
        let config = PoolConfig {
            classes: (0..n)
                .map(|i| ClassConfig {
                    block_size: header.class_sizes[i],
                    blocks: header.class_blocks[i],
                })
                .collect(),
            shards: header.shards,
            rings: header.rings,
            ring_capacity: header.ring_capacity,
            headroom: header.headroom,
            tailroom: header.tailroom,
        };
        drop(probe);
        let layout = Layout::compute(&config).map_err(|e| corrupt(e.to_string()))?;
        if layout.config != config {
            return Err(corrupt("classes not in canonical order".into()));
        }
        if size as usize != layout.total_len {
            return Err(corrupt(format!(
                "object is {size} bytes, its header describes {}",
                layout.total_len
            )));
        }
        let map = Mapping::map(&fd, layout.total_len).map_err(|e| Error::sys("mmap", name, e))?;
        Ok(Self {
            caches: caches_for(&layout),
            post_cache: PostCache::new(layout.config.rings),
            map,
            layout,
            name: name.to_owned(),
            pid: sys::getpid(),
        })
    }

    /// Removes the object's name; mappings stay valid until dropped.
    pub fn unlink(name: &str) -> Result<()> {
        sys::shm_unlink(name).map_err(|e| Error::sys("shm_unlink", name, e))
    }

    pub(crate) fn post_cache(&self) -> &PostCache {
        &self.post_cache
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The pid this handle acts as (taken when it was created or opened; a child process must
    /// open the pool itself rather than use a handle inherited across `fork`).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The pid of the process that created the object.
    pub fn creator_pid(&self) -> u32 {
        self.header().creator_pid
    }

    /// The data area as an AF_XDP UMEM.
    pub fn umem(&self) -> UmemRegion {
        let frame = &self.layout.classes[self.layout.frame_class];
        UmemRegion {
            base: self.data_base(),
            len: self.layout.data_len,
            chunk_size: frame.block_size,
            frames: frame.blocks,
        }
    }

    /// UMEM address (data-area offset) of byte `offset` of block `index`.
    pub fn umem_addr(&self, index: u32, offset: u32) -> Result<u64> {
        let (_, class) = self.class(index)?;
        if offset >= class.block_size {
            return Err(Error::NoRoom {
                what: "block bytes",
                need: offset as usize + 1,
                have: class.block_size as usize,
            });
        }
        let base = self
            .layout
            .block_offset(index)
            .ok_or(Error::BadIndex(index))?;
        Ok(base + u64::from(offset))
    }

    /// The block and offset-within-block of a UMEM address.
    pub fn block_at_umem_addr(&self, addr: u64) -> Result<(u32, u32)> {
        self.layout
            .block_at(addr)
            .ok_or(Error::BadIndex(u32::try_from(addr).unwrap_or(u32::MAX)))
    }

    // ---- allocation ------------------------------------------------------------------------

    /// Allocates a packet with `len` payload bytes, leaving the configured head- and tailroom.
    /// Picks the smallest class that fits; if that class is exhausted, a larger one. Never
    /// blocks.
    pub fn try_alloc(&self, len: usize) -> Result<Packet<'_>> {
        self.try_alloc_with(len, self.layout.config.headroom as usize)
    }

    /// As [`Pool::try_alloc`] with a headroom of the caller's choice (e.g. small control
    /// packets that need few lower headers, which then fit the smallest class).
    pub fn try_alloc_with(&self, len: usize, headroom: usize) -> Result<Packet<'_>> {
        self.alloc_in(len, headroom, Lock::Wait)
    }

    /// As [`Pool::try_alloc`], but never waits for a shard's lock either: a shard whose lock
    /// is taken is skipped (trylock; a dead holder's shard is repaired as usual), and
    /// [`Error::WouldBlock`] means "no block, or none without waiting". For a privileged
    /// process allocating in a pool that less trusted processes can write (a per-user pool),
    /// whose holder of a shard lock may stop and never let go.
    pub fn try_alloc_nowait(&self, len: usize) -> Result<Packet<'_>> {
        self.alloc_in(len, self.layout.config.headroom as usize, Lock::Try)
    }

    fn alloc_in(&self, len: usize, headroom: usize, lock: Lock) -> Result<Packet<'_>> {
        let too_large = Error::TooLarge {
            len,
            max: self.layout.max_len(),
        };
        let first = self.layout.class_for(len, headroom).ok_or(too_large)?;
        for c in first..self.layout.classes.len() {
            if let Some(index) = self.take_block(c, lock) {
                let (head, tail) = (headroom as u32, (headroom + len) as u32);
                return Ok(Packet::new(self, index, head, tail));
            }
        }
        Err(Error::WouldBlock {
            what: "pool blocks",
        })
    }

    /// As [`Pool::try_alloc`], waiting for a free block until `timeout` (None: forever).
    pub fn alloc(&self, len: usize, timeout: Option<Duration>) -> Result<Packet<'_>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.wait_for(deadline, "pool blocks", || match self.try_alloc(len) {
            Err(e) if e.is_would_block() => None,
            other => Some(other),
        })
    }

    /// Allocates a frame-class block (for the AF_XDP fill ring), never another class.
    pub fn try_alloc_frame(&self) -> Result<Packet<'_>> {
        let head = self.layout.config.headroom;
        self.take_block(self.layout.frame_class, Lock::Wait)
            .map(|index| Packet::new(self, index, head, head))
            .ok_or(Error::WouldBlock {
                what: "frame blocks",
            })
    }

    fn wait_for<T>(
        &self,
        deadline: Option<Instant>,
        what: &'static str,
        mut attempt: impl FnMut() -> Option<Result<T>>,
    ) -> Result<T> {
        let h = self.header();
        loop {
            if let Some(r) = attempt() {
                return r;
            }
            let seq = h.free_seq.load(Ordering::SeqCst);
            h.free_waiters.fetch_add(1, Ordering::SeqCst);
            let again = attempt();
            if again.is_some() {
                h.free_waiters.fetch_sub(1, Ordering::SeqCst);
                return again.unwrap_or(Err(Error::TimedOut { what }));
            }
            let remaining = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => {
                        h.free_waiters.fetch_sub(1, Ordering::SeqCst);
                        return Err(Error::TimedOut { what });
                    }
                },
                None => None,
            };
            sys::futex_wait(&h.free_seq, seq, remaining);
            h.free_waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A block of class `c`, now `Owned` by this process: from the local cache, else from the
    /// shared free lists (refilling the cache on the way).
    fn take_block(&self, c: usize, lock: Lock) -> Option<u32> {
        let cache = &self.caches[c];
        if cache.capacity == 0 {
            return self.pop_any(c, Place::Owned { pid: self.pid }, lock);
        }
        let cached = DescWord::new(Place::Cached { pid: self.pid }).encode();
        let owned = DescWord::new(Place::Owned { pid: self.pid }).encode();
        let hot = cache.hot.swap(NO_BLOCK, Ordering::Acquire);
        if hot != NO_BLOCK {
            // No other process writes a `Cached { pid: us }` descriptor while we live (only
            // reclaim, after our death), so a checked plain store is enough here.
            let word = &self.desc(hot).word;
            if word.load(Ordering::Acquire) == cached {
                word.store(owned, Ordering::Release);
                return Some(hot);
            }
        }
        let mut blocks = cache.blocks.lock().unwrap_or_else(|e| e.into_inner());
        if blocks.is_empty() {
            // Refill half the cache, one lock per shard visited.
            let want = cache.capacity / 2;
            let shards = self.layout.config.shards;
            let home = self.pid % shards;
            for k in 0..shards {
                self.pop_each(
                    c,
                    (home + k) % shards,
                    Place::Cached { pid: self.pid },
                    lock,
                    |index| {
                        blocks.push(index);
                        blocks.len() < want
                    },
                );
                if blocks.len() >= want {
                    break;
                }
            }
        }
        while let Some(index) = blocks.pop() {
            // Only this process moves its cached blocks, so this fails only if reclaim (run
            // on a wrong pid) or a scribbler took it: skip it then.
            if self.cas(index, cached, owned) {
                return Some(index);
            }
        }
        None
    }

    /// Puts an owned block whose last reference just ended (`raw` is its descriptor) into the
    /// local cache. False if it belongs on the shared free lists instead.
    fn cache_block(&self, index: u32, raw: u64) -> bool {
        let Some((c, _)) = self.layout.class_of(index) else {
            return false;
        };
        let cache = &self.caches[c];
        // Another process waiting for blocks gets this one at once.
        if cache.capacity == 0 || self.header().free_waiters.load(Ordering::Relaxed) != 0 {
            return false;
        }
        let cached = DescWord::new(Place::Cached { pid: self.pid }).encode();
        if !self.cas(index, raw, cached) {
            return false;
        }
        let older = cache.hot.swap(index, Ordering::AcqRel);
        if older == NO_BLOCK {
            return true;
        }
        let mut blocks = cache.blocks.lock().unwrap_or_else(|e| e.into_inner());
        blocks.push(older);
        if blocks.len() > cache.capacity {
            let keep = cache.capacity / 2;
            self.push_free_all(c, &mut blocks[keep..], cached);
            blocks.truncate(keep);
        }
        true
    }

    /// Returns every block in this handle's caches to the shared free lists (dropping the pool
    /// does this too).
    pub fn flush_caches(&self) {
        let cached = DescWord::new(Place::Cached { pid: self.pid }).encode();
        for (c, cache) in self.caches.iter().enumerate() {
            let mut blocks = cache.blocks.lock().unwrap_or_else(|e| e.into_inner());
            let hot = cache.hot.swap(NO_BLOCK, Ordering::AcqRel);
            if hot != NO_BLOCK {
                blocks.push(hot);
            }
            self.push_free_all(c, &mut blocks, cached);
            blocks.clear();
        }
    }

    fn pop_any(&self, c: usize, to: Place, lock: Lock) -> Option<u32> {
        let shards = self.layout.config.shards;
        let home = self.pid % shards;
        (0..shards).find_map(|k| self.pop(c, (home + k) % shards, to, lock))
    }

    fn pop(&self, c: usize, s: u32, to: Place, lock: Lock) -> Option<u32> {
        let mut got = None;
        self.pop_each(c, s, to, lock, |index| {
            got = Some(index);
            false
        });
        got
    }

    /// Pops blocks from shard `s` of class `c` under one lock, marking each `to`, and hands them
    /// to `sink` until it returns false or the shard is empty. With [`Lock::Try`], a shard
    /// whose lock is taken gives nothing.
    fn pop_each(&self, c: usize, s: u32, to: Place, lock: Lock, mut sink: impl FnMut(u32) -> bool) {
        let class = &self.layout.classes[c];
        let shard = self.shard(c, s);
        if shard.count.load(Ordering::Relaxed) == 0 {
            return; // a racy peek that saves a lock on an empty shard
        }
        let _guard = match lock {
            Lock::Wait => self.lock_shard(c, s),
            Lock::Try => match self.try_lock_shard(c, s) {
                Some(guard) => guard,
                None => return,
            },
        };
        let free = DescWord::new(Place::Free { shard: s }).encode();
        let owned = DescWord::new(to).encode();
        loop {
            let n = shard.count.load(Ordering::Relaxed);
            if n == 0 {
                return;
            }
            let index = self.stack_slot(class, s, n - 1).load(Ordering::Relaxed);
            // The descriptor changes first: a crash before the count update is repaired from
            // the descriptors, which are the truth.
            let taken = class.contains(index)
                && class.shard_of(index) == s
                && self
                    .desc(index)
                    .word
                    .compare_exchange(free, owned, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok();
            shard.count.store(n - 1, Ordering::Relaxed);
            if taken && !sink(index) {
                return;
            }
            // A stack entry that disagrees with its descriptor was scribbled on: drop it, the
            // next repair rebuilds the stack from the descriptors.
        }
    }

    /// Frees `index` if its descriptor still reads `expected`; returns the word it saw if not.
    fn push_free(&self, index: u32, expected: u64) -> std::result::Result<(), u64> {
        let Ok((c, class)) = self.class(index) else {
            return Err(expected);
        };
        let s = class.shard_of(index);
        {
            let _guard = self.lock_shard(c, s);
            self.push_locked(c, s, index, expected)?;
        }
        self.wake_allocators();
        Ok(())
    }

    /// Frees blocks of class `c` that all read `expected`, taking each shard's lock once per run
    /// of blocks with the same home (the slice is reordered by home shard).
    fn push_free_all(&self, c: usize, indices: &mut [u32], expected: u64) {
        let class = &self.layout.classes[c];
        indices.sort_unstable_by_key(|&i| {
            if class.contains(i) {
                class.shard_of(i)
            } else {
                u32::MAX
            }
        });
        for run in indices.chunk_by(|&a, &b| class.shard_of(a) == class.shard_of(b)) {
            let Some(&first) = run.first() else { continue };
            if !class.contains(first) {
                continue;
            }
            let s = class.shard_of(first);
            let _guard = self.lock_shard(c, s);
            for &index in run {
                let _ = self.push_locked(c, s, index, expected);
            }
        }
        self.wake_allocators();
    }

    /// With shard `s`'s lock held: marks `index` free if it reads `expected`, and stacks it.
    fn push_locked(
        &self,
        c: usize,
        s: u32,
        index: u32,
        expected: u64,
    ) -> std::result::Result<(), u64> {
        let class = &self.layout.classes[c];
        let free = DescWord::new(Place::Free { shard: s }).encode();
        self.desc(index).word.compare_exchange(
            expected,
            free,
            Ordering::Release,
            Ordering::Relaxed,
        )?;
        let shard = self.shard(c, s);
        let n = shard.count.load(Ordering::Relaxed);
        if n < class.stack_capacity {
            self.stack_slot(class, s, n).store(index, Ordering::Relaxed);
            shard.count.store(n + 1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn wake_allocators(&self) {
        let h = self.header();
        fence(Ordering::SeqCst);
        if h.free_waiters.load(Ordering::SeqCst) != 0 {
            h.free_seq.fetch_add(1, Ordering::SeqCst);
            sys::futex_wake_all(&h.free_seq);
        }
    }

    // ---- references ------------------------------------------------------------------------

    /// Ends this process's primary reference to an owned block: it goes back to its free list,
    /// or stays `Held` while its holder keeps extra references.
    pub fn release(&self, index: u32) -> Result<()> {
        self.release_from(index, Place::Owned { pid: self.pid })
    }

    fn release_from(&self, index: u32, from: Place) -> Result<()> {
        loop {
            let raw = self.desc_checked(index)?.word.load(Ordering::Acquire);
            let w = DescWord::decode(raw)
                .filter(|w| w.place == from)
                .ok_or_else(|| Error::NotOwner {
                    index,
                    place: DescWord::decode(raw).map(|w| w.place),
                    pid: self.pid,
                })?;
            if w.holds > 0 {
                let held = w.with_place(Place::Held).encode();
                if self.cas(index, raw, held) {
                    return Ok(());
                }
            } else if self.cache_block(index, raw) || self.push_free(index, raw).is_ok() {
                return Ok(());
            }
        }
    }

    /// Adds an extra reference held by this process (e.g. a packet kept for retransmission). A
    /// block's extra references all belong to one process.
    pub fn hold(&self, index: u32) -> Result<()> {
        loop {
            let raw = self.desc_checked(index)?.word.load(Ordering::Acquire);
            let w = self.decode(index, raw)?;
            if matches!(w.place, Place::Free { .. } | Place::Cached { .. }) {
                return Err(Error::Hold {
                    index,
                    reason: "the block is free",
                });
            }
            if w.holder != 0 && w.holder != self.pid {
                return Err(Error::Hold {
                    index,
                    reason: "another process holds it",
                });
            }
            if w.holds == u8::MAX {
                return Err(Error::Hold {
                    index,
                    reason: "255 holds already",
                });
            }
            if self.pid > MAX_PID {
                return Err(Error::Hold {
                    index,
                    reason: "pid too large to record",
                });
            }
            let next = DescWord {
                holds: w.holds + 1,
                holder: self.pid,
                ..w
            };
            if self.cas(index, raw, next.encode()) {
                return Ok(());
            }
        }
    }

    /// Drops one extra reference taken with [`Pool::hold`]; the last one frees a `Held` block.
    pub fn unhold(&self, index: u32) -> Result<()> {
        loop {
            let raw = self.desc_checked(index)?.word.load(Ordering::Acquire);
            let w = self.decode(index, raw)?;
            if w.holder != self.pid || w.holds == 0 {
                return Err(Error::NotOwner {
                    index,
                    place: Some(w.place),
                    pid: self.pid,
                });
            }
            if w.holds == 1 && w.place == Place::Held {
                if self.push_free(index, raw).is_ok() {
                    return Ok(());
                }
                continue;
            }
            let holds = w.holds - 1;
            let holder = if holds == 0 { 0 } else { w.holder };
            if self.cas(index, raw, DescWord { holds, holder, ..w }.encode()) {
                return Ok(());
            }
        }
    }

    /// Lends an owned block to the kernel (AF_XDP fill or TX ring).
    pub fn lend_to_kernel(&self, index: u32) -> Result<()> {
        self.move_place(
            index,
            Place::Owned { pid: self.pid },
            Place::Kernel { pid: self.pid },
        )
    }

    /// Takes back a block the kernel returned (RX or completion ring) as an owned packet whose
    /// bounds the caller then sets.
    pub fn take_from_kernel(&self, index: u32) -> Result<Packet<'_>> {
        self.move_place(
            index,
            Place::Kernel { pid: self.pid },
            Place::Owned { pid: self.pid },
        )?;
        let head = self.layout.config.headroom;
        Ok(Packet::new(self, index, head, head))
    }

    /// A handle on a block this process owns (e.g. an index read from a ring in a batch).
    pub fn packet(&self, index: u32) -> Result<Packet<'_>> {
        let d = self.desc_checked(index)?;
        let raw = d.word.load(Ordering::Acquire);
        let w = self.decode(index, raw)?;
        if w.place != (Place::Owned { pid: self.pid }) {
            return Err(Error::NotOwner {
                index,
                place: Some(w.place),
                pid: self.pid,
            });
        }
        let (head, tail) = (
            d.head.load(Ordering::Relaxed),
            d.tail.load(Ordering::Relaxed),
        );
        let (_, class) = self.class(index)?;
        let (head, tail) = if head <= tail && tail <= class.block_size {
            (head, tail)
        } else {
            let h = self.layout.config.headroom;
            (h, h) // bounds scribbled on: an empty packet rather than out-of-block access
        };
        Ok(Packet::new(self, index, head, tail))
    }

    pub(crate) fn move_place(&self, index: u32, from: Place, to: Place) -> Result<()> {
        loop {
            let raw = self.desc_checked(index)?.word.load(Ordering::Acquire);
            let w = self.decode(index, raw)?;
            if w.place != from {
                return Err(Error::NotOwner {
                    index,
                    place: Some(w.place),
                    pid: self.pid,
                });
            }
            if self.cas(index, raw, w.with_place(to).encode()) {
                return Ok(());
            }
        }
    }

    fn cas(&self, index: u32, from: u64, to: u64) -> bool {
        self.desc(index)
            .word
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    fn decode(&self, index: u32, raw: u64) -> Result<DescWord> {
        DescWord::decode(raw).ok_or_else(|| Error::Corrupt {
            name: self.name.clone(),
            reason: format!("descriptor of block {index} reads {raw:#x}"),
        })
    }

    /// Where block `index` is now.
    pub fn place(&self, index: u32) -> Result<DescWord> {
        let raw = self.desc_checked(index)?.word.load(Ordering::Acquire);
        self.decode(index, raw)
    }

    // ---- crash recovery --------------------------------------------------------------------

    /// Returns everything a dead process had: blocks it owned, its extra references, blocks
    /// it left half-queued. Blocks queued on another process's ring or lent to the kernel are
    /// never touched (see [`Pool::reclaim_lent`]). Rings it was an end of are flagged
    /// [`crate::RingFlags::PEER_GONE`]; rings it read are drained.
    ///
    /// Call only once `pid` is known dead (e.g. its pidfd became readable). Returns how many
    /// blocks went back to the free lists.
    pub fn reclaim(&self, pid: u32) -> usize {
        let mut freed = crate::ring::reclaim_ends(self, pid);
        for index in 0..self.layout.total_blocks {
            freed += self.reclaim_block(index, pid, false);
        }
        freed
    }

    /// Returns the blocks a dead process had lent to the kernel. Call only once its AF_XDP
    /// sockets are closed (it is dead and no other process shares the socket).
    pub fn reclaim_lent(&self, pid: u32) -> usize {
        (0..self.layout.total_blocks)
            .map(|i| self.reclaim_block(i, pid, true))
            .sum()
    }

    fn reclaim_block(&self, index: u32, pid: u32, lent: bool) -> usize {
        loop {
            let raw = self.desc(index).word.load(Ordering::Acquire);
            let Some(w) = DescWord::decode(raw) else {
                return 0;
            };
            let mut next = w;
            if w.holder == pid {
                next.holds = 0;
                next.holder = 0;
            }
            let primary_dead = match w.place {
                Place::Owned { pid: p } | Place::Cached { pid: p } => p == pid,
                Place::Kernel { pid: p } => lent && p == pid,
                _ => false,
            };
            if primary_dead {
                next.place = Place::Held;
            }
            if next == w {
                return 0;
            }
            if next.place == Place::Held && next.holds == 0 {
                if self.push_free(index, raw).is_ok() {
                    return 1;
                }
            } else if self.cas(index, raw, next.encode()) {
                return 0;
            }
        }
    }

    /// Frees a block found in a ring by a drain, if it still reads `Ring { ring }`.
    pub(crate) fn free_from_ring(&self, index: u32, ring: u32) -> usize {
        loop {
            let Ok(d) = self.desc_checked(index) else {
                return 0;
            };
            let raw = d.word.load(Ordering::Acquire);
            let Some(w) = DescWord::decode(raw) else {
                return 0;
            };
            if w.place != (Place::Ring { ring }) {
                return 0;
            }
            if w.holds > 0 {
                if self.cas(index, raw, w.with_place(Place::Held).encode()) {
                    return 0;
                }
            } else if self.push_free(index, raw).is_ok() {
                return 1;
            }
        }
    }

    // ---- invariant checker -----------------------------------------------------------------

    /// Checks that every block is in exactly one place: on one free list (and its descriptor
    /// says so), owned by or lent from a live process, queued on exactly one live ring, or held
    /// by a live holder. Meant for quiescent pools (tests, diagnostics): concurrent activity
    /// can show as transient problems.
    pub fn verify(&self) -> Report {
        crate::verify::run(self)
    }

    // ---- raw access for the sibling modules ------------------------------------------------

    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with the header and lives as long as self.
        unsafe { &*(self.map.base() as *const Header) }
    }

    fn header_mut_ptr(&self) -> *mut Header {
        self.map.base().cast()
    }

    pub(crate) fn at<T>(&self, offset: usize) -> &T {
        debug_assert!(offset + std::mem::size_of::<T>() <= self.map.len());
        debug_assert_eq!(offset % std::mem::align_of::<T>(), 0);
        // SAFETY: every caller passes an offset from `Layout`, which places a T there inside
        // the mapping with its alignment; T is made of atomics and plain integers.
        unsafe { &*(self.map.base().add(offset) as *const T) }
    }

    pub(crate) fn desc(&self, index: u32) -> &Desc {
        self.at(self.layout.desc_offset + index as usize * std::mem::size_of::<Desc>())
    }

    pub(crate) fn desc_checked(&self, index: u32) -> Result<&Desc> {
        if index < self.layout.total_blocks {
            Ok(self.desc(index))
        } else {
            Err(Error::BadIndex(index))
        }
    }

    pub(crate) fn class(&self, index: u32) -> Result<(usize, &ClassLayout)> {
        self.layout.class_of(index).ok_or(Error::BadIndex(index))
    }

    fn shard(&self, c: usize, s: u32) -> &Shard {
        self.at(self.layout.classes[c].shards_offset + s as usize * SHARD_SIZE)
    }

    fn shard_mutex(&self, c: usize, s: u32) -> *mut libc::pthread_mutex_t {
        let shard: &Shard = self.shard(c, s);
        std::ptr::from_ref(&shard.mutex).cast_mut()
    }

    pub(crate) fn stack_slot(&self, class: &ClassLayout, s: u32, n: u32) -> &AtomicU32 {
        self.at(class.stacks_offset + 4 * (s as usize * class.stack_capacity as usize + n as usize))
    }

    pub(crate) fn shard_count(&self, c: usize, s: u32) -> u32 {
        self.shard(c, s).count.load(Ordering::Relaxed)
    }

    /// Locks a shard; if its previous owner died inside the critical section, rebuilds the
    /// shard's free stack from the descriptors before going on.
    pub(crate) fn lock_shard(&self, c: usize, s: u32) -> ShardGuard {
        let m = self.shard_mutex(c, s);
        // SAFETY: the mutex was initialised by the creator before `ready` was published.
        match unsafe { sys::robust_mutex_lock(m) } {
            Ok(LockOutcome::Locked) => {}
            Ok(LockOutcome::OwnerDied) => {
                self.rebuild_shard(c, s);
                // SAFETY: we hold the lock after EOWNERDEAD and have repaired the data.
                unsafe { sys::robust_mutex_consistent(m) };
            }
            // Only EINVAL/EDEADLK/ENOTRECOVERABLE are possible, none of which our use can
            // produce; carry on unlocked rather than wedge, the descriptors stay the truth.
            Err(_) => return ShardGuard { mutex: None },
        }
        ShardGuard { mutex: Some(m) }
    }

    /// As [`Pool::lock_shard`] without waiting: `None` while another thread or process holds
    /// the lock. A dead holder's shard is repaired exactly as there.
    pub(crate) fn try_lock_shard(&self, c: usize, s: u32) -> Option<ShardGuard> {
        let m = self.shard_mutex(c, s);
        // SAFETY: the mutex was initialised by the creator before `ready` was published.
        match unsafe { sys::robust_mutex_trylock(m) } {
            Ok(Some(LockOutcome::Locked)) => Some(ShardGuard { mutex: Some(m) }),
            Ok(Some(LockOutcome::OwnerDied)) => {
                self.rebuild_shard(c, s);
                // SAFETY: we hold the lock after EOWNERDEAD and have repaired the data.
                unsafe { sys::robust_mutex_consistent(m) };
                Some(ShardGuard { mutex: Some(m) })
            }
            // Held, or unusable (ENOTRECOVERABLE): either way, not now.
            Ok(None) | Err(_) => None,
        }
    }

    /// The repair after a holder died: the stack becomes exactly the shard's free blocks.
    fn rebuild_shard(&self, c: usize, s: u32) {
        let class = &self.layout.classes[c];
        let free = DescWord::new(Place::Free { shard: s }).encode();
        let mut n = 0;
        for i in class.shard_range(s) {
            let index = class.first_index + i;
            if self.desc(index).word.load(Ordering::Acquire) == free && n < class.stack_capacity {
                self.stack_slot(class, s, n).store(index, Ordering::Relaxed);
                n += 1;
            }
        }
        self.shard(c, s).count.store(n, Ordering::Relaxed);
    }

    pub(crate) fn data_base(&self) -> *mut u8 {
        // SAFETY: data_offset < total_len = mapping length.
        unsafe { self.map.base().add(self.layout.data_offset) }
    }

    /// Pointer to the start of block `index`, which must be in range.
    pub(crate) fn block_ptr(&self, index: u32) -> (*mut u8, u32) {
        let (_, class) = self
            .layout
            .class_of(index)
            .expect("index checked by caller");
        let off =
            class.data_offset + u64::from(index - class.first_index) * u64::from(class.block_size);
        // SAFETY: the layout keeps every block inside the data area.
        (
            unsafe { self.data_base().add(off as usize) },
            class.block_size,
        )
    }
}

/// Whether taking a block may wait for a shard's lock.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lock {
    Wait,
    Try,
}

pub(crate) struct ShardGuard {
    mutex: Option<*mut libc::pthread_mutex_t>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.flush_caches();
    }
}

impl Drop for ShardGuard {
    fn drop(&mut self) {
        if let Some(m) = self.mutex {
            // SAFETY: locked by this thread in lock_shard.
            unsafe { sys::robust_mutex_unlock(m) };
        }
    }
}

/// What [`Pool::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub free: u32,
    pub owned: u32,
    pub queued: u32,
    pub lent: u32,
    pub held: u32,
    /// In a live process's local allocation cache.
    pub cached: u32,
    /// Every violated invariant, in words.
    pub problems: Vec<String>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn total(&self) -> u32 {
        self.free + self.owned + self.queued + self.lent + self.held + self.cached
    }
}

impl Pool {
    /// Test hook for the crash tests: takes the lock of the first class's shard 0, starts a pop
    /// (descriptor changed, count not yet) and sleeps forever inside the critical section, to
    /// be killed there.
    #[doc(hidden)]
    pub fn debug_hang_in_lock(&self) {
        let class = self.layout.classes[0];
        let _guard = self.lock_shard(0, 0);
        let n = self.shard_count(0, 0);
        if n > 0 {
            let index = self.stack_slot(&class, 0, n - 1).load(Ordering::Relaxed);
            let owned = DescWord::new(Place::Owned { pid: self.pid }).encode();
            self.desc(index).word.store(owned, Ordering::Release);
            // Scribble on the stack too, as a half-done push would.
            self.stack_slot(&class, 0, 0)
                .store(u32::MAX, Ordering::Relaxed);
        }
        println!("locked");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    /// Test hook: takes every shard lock of every class, says "locked" and sleeps forever
    /// holding them (as a stopped or malicious process of a per-user pool would).
    #[doc(hidden)]
    pub fn debug_hold_shard_locks(&self) {
        let shards = self.layout.config.shards;
        let _guards: Vec<ShardGuard> = (0..self.layout.classes.len())
            .flat_map(|c| (0..shards).map(move |s| (c, s)))
            .map(|(c, s)| self.lock_shard(c, s))
            .collect();
        println!("locked");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}
