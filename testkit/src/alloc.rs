//! A counting global allocator, for the tests that check a path allocates nothing.
//!
//! Each such test binary installs its own:
//!
//! ```
//! use o7s_testkit::CountingAlloc;
//!
//! #[global_allocator]
//! static ALLOC: CountingAlloc = CountingAlloc::new();
//!
//! let mut v: Vec<usize> = Vec::with_capacity(4);
//! let ((), allocs) = ALLOC.count(|| v.extend_from_slice(&[1, 2, 3]));
//! assert_eq!(allocs, 0, "the room was made before counting");
//! let (boxed, allocs) = ALLOC.count(|| std::hint::black_box(Box::new(v.len())));
//! assert_eq!((*boxed, allocs), (3, 1));
//! ```
//!
//! and measures with [`CountingAlloc::count`] (or [`start`](CountingAlloc::start) /
//! [`stop`](CountingAlloc::stop) around code that cannot sit in one closure, such as part of an
//! async block). Every thread's allocations count while counting is on, so such a binary should
//! hold a single test: another test thread allocating meanwhile would be counted too.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Forwards every call unchanged to [`System`]; while counting is on, it counts each allocation
/// and reallocation (frees are not counted).
pub struct CountingAlloc {
    counting: AtomicBool,
    allocs: AtomicUsize,
}

impl CountingAlloc {
    /// Not counting, count zero.
    pub const fn new() -> Self {
        Self {
            counting: AtomicBool::new(false),
            allocs: AtomicUsize::new(0),
        }
    }

    /// Sets the count to zero and starts counting.
    pub fn start(&self) {
        self.allocs.store(0, Ordering::SeqCst);
        self.counting.store(true, Ordering::SeqCst);
    }

    /// Stops counting; returns how many allocations were made (by every thread) since
    /// [`start`](Self::start).
    pub fn stop(&self) -> usize {
        self.counting.store(false, Ordering::SeqCst);
        self.allocs.load(Ordering::SeqCst)
    }

    /// Runs `f` with counting on; returns its result and how many allocations it (and every
    /// other thread meanwhile) made.
    pub fn count<R>(&self, f: impl FnOnce() -> R) -> (R, usize) {
        self.start();
        let r = f();
        (r, self.stop())
    }

    fn note(&self) {
        if self.counting.load(Ordering::Relaxed) {
            self.allocs.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Default for CountingAlloc {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: forwards every call unchanged to `System`, only counting (with atomics, which do not
// allocate).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.note();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Used directly (not as the global allocator): counts what goes through it, only while on.
    #[test]
    fn counts_only_while_counting() {
        let a = CountingAlloc::new();
        let layout = Layout::from_size_align(64, 8).expect("layout");
        let alloc = |a: &CountingAlloc| {
            // SAFETY: a non-zero-sized layout; the block is freed with the same layout.
            unsafe {
                let p = a.alloc(layout);
                assert!(!p.is_null());
                let p = a.realloc(p, layout, 128);
                assert!(!p.is_null());
                a.dealloc(p, Layout::from_size_align(128, 8).expect("layout"));
                let z = a.alloc_zeroed(layout);
                assert!(!z.is_null());
                assert_eq!(*z, 0);
                a.dealloc(z, layout);
            }
        };
        alloc(&a);
        assert_eq!(a.count(|| ()), ((), 0), "nothing while not counting");
        let ((), n) = a.count(|| alloc(&a));
        assert_eq!(
            n, 3,
            "alloc, realloc and alloc_zeroed count; dealloc does not"
        );
        alloc(&a);
        a.start();
        alloc(&a);
        alloc(&a);
        assert_eq!(a.stop(), 6);
        assert_eq!(a.stop(), 6, "stopped: the count stays");
    }
}
