//! Sleeping on many rings at once: what a reader of many flows (an IPC process) needs to wake
//! as soon as any of them has something to read, without polling.
//!
//! The reader *arms* each ring ([`RingReader::arm`]): it counts as a sleeper in the ring's
//! header, so the writer moves the ring's futex word and wakes it on every publish, exactly as
//! for a reader blocked in [`RingReader::read`]. It then checks [`RingArm::is_ready`] and
//! sleeps on all the words at once ([`wait_any`], one `futex_waitv`), together with a
//! process-local [`Bell`] another thread can ring. Nothing changes for writers or the shared
//! layout; an armed ring costs its writer a wake-up system call per write, so arms are dropped
//! as soon as the reader is awake.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{RingFlags, RingHeader, RingReader, count_sleeper, uncount_sleeper};
use crate::error::{Error, Result};
use crate::sys;

/// A futex word and the value it had when taken: what [`wait_any`] sleeps on. Either a ring
/// armed by its reader ([`RingArm::word`]) or a process-local [`Bell`] ([`Bell::word`]).
#[derive(Clone, Copy, Debug)]
pub struct WakeWord<'a> {
    word: &'a AtomicU32,
    seen: u32,
}

/// The same word with the same value seen.
impl PartialEq for WakeWord<'_> {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.word, other.word) && self.seen == other.seen
    }
}

impl Eq for WakeWord<'_> {}

impl WakeWord<'_> {
    /// Whether the word moved since it was taken.
    pub fn changed(&self) -> bool {
        self.word.load(Ordering::SeqCst) != self.seen
    }
}

/// The most words one [`wait_any`] takes.
pub const WAIT_ANY_MAX: usize = sys::FUTEX_WAITV_MAX;

/// Sleeps until one of `words` moves from the value it had when taken, or `timeout` (None:
/// forever) passes. Returns the index of a word that moved, or `None` if none did (time-out or
/// a signal: the caller re-checks and waits again). One `futex_waitv` system call (Linux 5.16);
/// allocates nothing.
///
/// # Errors
/// [`Error::BadConfig`] for no words or more than [`WAIT_ANY_MAX`]; [`Error::Sys`] if the
/// kernel refuses (`ENOSYS` before Linux 5.16).
pub fn wait_any(words: &[WakeWord<'_>], timeout: Option<Duration>) -> Result<Option<usize>> {
    if words.is_empty() || words.len() > WAIT_ANY_MAX {
        return Err(Error::BadConfig(format!(
            "wait_any takes 1..={WAIT_ANY_MAX} words, not {}",
            words.len()
        )));
    }
    let moved = || words.iter().position(WakeWord::changed);
    if let Some(i) = moved() {
        return Ok(Some(i));
    }
    let mut pairs = [(&ZERO, 0u32); WAIT_ANY_MAX];
    for (pair, w) in pairs.iter_mut().zip(words) {
        *pair = (w.word, w.seen);
    }
    match sys::futex_waitv(&pairs[..words.len()], timeout) {
        Ok(sys::Waitv::Woken(i)) if i < words.len() && words[i].changed() => Ok(Some(i)),
        Ok(_) => Ok(moved()),
        Err(e) => Err(Error::sys("futex_waitv", "flow rings", e)),
    }
}

/// A placeholder word for unused entries of `wait_any`'s fixed array.
static ZERO: AtomicU32 = AtomicU32::new(0);

/// A reader's standing as a sleeper on its ring, so that one thread can sleep on many rings
/// at once ([`wait_any`] over their [`RingArm::word`]s): while it lives, every write to the ring
/// (and every flag change) moves the ring's futex word and wakes it, as for a reader blocked in
/// [`RingReader::read`]. Arm, check [`RingArm::is_ready`], sleep, then drop it as soon as the
/// thread is awake: an armed ring costs its writer a wake-up system call per write.
#[derive(Debug)]
pub struct RingArm<'p> {
    ring: u32,
    h: &'p RingHeader,
    seen: u32,
    /// The ring's incarnation when it was armed.
    incarnation: u32,
}

impl<'p> RingReader<'p> {
    /// Arms the ring for [`wait_any`] (see [`RingArm`]).
    pub fn arm(&self) -> RingArm<'p> {
        let incarnation = count_sleeper(self.h);
        let seen = self.h.seq.load(Ordering::SeqCst);
        RingArm {
            ring: self.ring,
            h: self.h,
            seen,
            incarnation,
        }
    }
}

impl<'p> RingArm<'p> {
    /// The armed ring.
    pub fn ring(&self) -> u32 {
        self.ring
    }

    /// Whether sleeping would miss something: the ring has packets to read, is down, or moved
    /// since it was armed. Check this after arming and before sleeping.
    pub fn is_ready(&self) -> bool {
        let available = self
            .h
            .head
            .load(Ordering::SeqCst)
            .wrapping_sub(self.h.tail.load(Ordering::Relaxed));
        let ending = RingFlags::PEER_GONE | RingFlags::FLOW_DOWN;
        available != 0
            || self.h.flags.load(Ordering::SeqCst) & ending != 0
            || self.h.seq.load(Ordering::SeqCst) != self.seen
    }

    /// The word [`wait_any`] sleeps on for this ring. It stays valid (as memory) after the arm
    /// is dropped; a wait on it then only wakes when someone else sleeps on the ring.
    pub fn word(&self) -> WakeWord<'p> {
        WakeWord {
            word: &self.h.seq,
            seen: self.seen,
        }
    }
}

impl Drop for RingArm<'_> {
    fn drop(&mut self) {
        uncount_sleeper(self.h, self.incarnation);
    }
}

/// A process-local futex word to wake a thread sleeping in [`wait_any`] (to hand it new words
/// to watch, or to stop it): the sleeper includes [`Bell::word`], another thread rings.
#[derive(Debug, Default)]
pub struct Bell(AtomicU32);

impl Bell {
    /// A bell nobody has rung.
    pub const fn new() -> Self {
        Self(AtomicU32::new(0))
    }

    /// The bell's word as it is now.
    pub fn word(&self) -> WakeWord<'_> {
        WakeWord {
            word: &self.0,
            seen: self.0.load(Ordering::SeqCst),
        }
    }

    /// Moves the word and wakes every thread sleeping on it.
    pub fn ring(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake_all(&self.0);
    }
}
