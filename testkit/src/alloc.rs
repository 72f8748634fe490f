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
//! async block). Those count every thread's allocations, as they must where the code under test
//! has threads of its own; such a binary should hold a single test, and even then the test
//! harness's main thread may allocate while it counts (it does the first time it sleeps waiting
//! for the test, which can come after the test has started counting on a loaded machine). Code
//! that runs on the calling thread alone is measured with
//! [`count_this_thread`](CountingAlloc::count_this_thread), which no other thread disturbs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Forwards every call unchanged to [`System`]; while counting is on, it counts each allocation
/// and reallocation (frees are not counted) of every thread, or of one.
pub struct CountingAlloc {
    counting: AtomicBool,
    allocs: AtomicUsize,
    /// The thread whose allocations count ([`this_thread`]), or 0 for every thread.
    thread: AtomicUsize,
}

thread_local! {
    /// Only its address is used: it tells the threads apart. Constant-initialized and without
    /// a destructor, so reading it never allocates (it is read inside the allocator).
    static THREAD_MARK: u8 = const { 0 };
}

/// A number for the calling thread, different from every other live thread's, never 0.
fn this_thread() -> usize {
    THREAD_MARK.with(|mark| std::ptr::from_ref(mark).addr())
}

impl CountingAlloc {
    /// Not counting, count zero.
    pub const fn new() -> Self {
        Self {
            counting: AtomicBool::new(false),
            allocs: AtomicUsize::new(0),
            thread: AtomicUsize::new(0),
        }
    }

    /// Sets the count to zero and starts counting every thread's allocations.
    pub fn start(&self) {
        self.start_for(0);
    }

    /// Sets the count to zero and starts counting the calling thread's allocations only.
    pub fn start_this_thread(&self) {
        self.start_for(this_thread());
    }

    fn start_for(&self, thread: usize) {
        self.counting.store(false, Ordering::SeqCst);
        self.thread.store(thread, Ordering::SeqCst);
        self.allocs.store(0, Ordering::SeqCst);
        self.counting.store(true, Ordering::SeqCst);
    }

    /// Stops counting; returns how many allocations were counted since
    /// [`start`](Self::start) or [`start_this_thread`](Self::start_this_thread).
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

    /// Runs `f` counting the calling thread's allocations only; returns its result and how
    /// many it made.
    pub fn count_this_thread<R>(&self, f: impl FnOnce() -> R) -> (R, usize) {
        self.start_this_thread();
        let r = f();
        (r, self.stop())
    }

    fn note(&self) {
        if self.counting.load(Ordering::Relaxed) {
            let thread = self.thread.load(Ordering::Relaxed);
            if thread == 0 || thread == this_thread() {
                self.allocs.fetch_add(1, Ordering::Relaxed);
            }
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

    /// Every thread's allocations count, or the starting thread's alone.
    #[test]
    fn counts_every_thread_or_this_one() {
        let a = CountingAlloc::new();
        let layout = Layout::from_size_align(32, 8).expect("layout");
        let alloc = || {
            // SAFETY: a non-zero-sized layout, freed with the same layout.
            unsafe {
                let p = a.alloc(layout);
                assert!(!p.is_null());
                a.dealloc(p, layout);
            }
        };
        let on_another_thread = || std::thread::scope(|s| s.spawn(alloc).join().expect("join"));
        let ((), n) = a.count(|| {
            alloc();
            on_another_thread();
        });
        assert_eq!(n, 2, "every thread");
        let ((), n) = a.count_this_thread(|| {
            alloc();
            on_another_thread();
            alloc();
        });
        assert_eq!(n, 2, "this thread only");
        let ((), n) = std::thread::scope(|s| {
            s.spawn(|| a.count_this_thread(on_another_thread))
                .join()
                .expect("join")
        });
        assert_eq!(n, 0, "the counting thread did not allocate");
        let ((), n) = a.count(on_another_thread);
        assert_eq!(n, 1, "every thread again after count_this_thread");
    }
}
