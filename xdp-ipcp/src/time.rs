//! Time as a parameter: the layer never reads a clock, the caller passes `now` in.

use core::ops::Add;
use core::time::Duration;

/// A point in time, in milliseconds since an epoch the caller chooses (e.g. the daemon's start,
/// or 0 in a test). Only differences between instants mean anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant {
    millis: u64,
}

impl Instant {
    /// The epoch.
    pub const ZERO: Instant = Instant { millis: 0 };

    /// `millis` milliseconds after the epoch.
    #[must_use]
    pub const fn from_millis(millis: u64) -> Instant {
        Instant { millis }
    }

    /// Milliseconds since the epoch.
    #[must_use]
    pub const fn as_millis(self) -> u64 {
        self.millis
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    #[must_use]
    pub const fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.millis.saturating_sub(earlier.millis))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    /// Saturates at the largest representable instant.
    fn add(self, rhs: Duration) -> Instant {
        let add = u64::try_from(rhs.as_millis()).unwrap_or(u64::MAX);
        Instant {
            millis: self.millis.saturating_add(add),
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn arithmetic() {
        let t = Instant::from_millis(1000);
        assert_eq!((t + Duration::from_millis(2000)).as_millis(), 3000);
        assert_eq!(
            Instant::from_millis(3000).saturating_duration_since(t),
            Duration::from_secs(2)
        );
        assert_eq!(
            t.saturating_duration_since(Instant::from_millis(3000)),
            Duration::ZERO
        );
        assert_eq!((t + Duration::MAX).as_millis(), u64::MAX);
    }
}
