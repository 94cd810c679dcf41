//! The core's notion of time: milliseconds on a monotonic clock the driver owns.

use std::ops::Add;
use std::time::Duration;

/// A point in time, in milliseconds since an arbitrary origin chosen by the driver.
///
/// The core never reads a clock: the driver passes `now` into every call, computed from a
/// monotonic source (the native driver: time elapsed since it started; the browser driver:
/// `performance.now()`). Only differences between instants matter. `std::time::Instant` is not
/// used because it panics on `wasm32-unknown-unknown`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The instant `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// `d` in whole milliseconds, saturated at `u64::MAX`. In `u64` arithmetic: `as_millis` is a
/// `u128`, whose multiplication links a compiler-builtins routine into the browser's wasm.
pub(super) fn millis(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(d.subsec_millis()))
}

/// Adds whole milliseconds (sub-millisecond parts are dropped), saturating at the far future.
impl Add<Duration> for Instant {
    type Output = Instant;

    fn add(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_add(millis(rhs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::from_millis(1_000);
        assert_eq!((t + Duration::from_micros(2_500)).as_millis(), 1_002);
        assert_eq!((t + Duration::MAX).as_millis(), u64::MAX);
        assert_eq!(
            (t + Duration::from_secs(1)).saturating_duration_since(t),
            Duration::from_secs(1)
        );
        assert_eq!(
            t.saturating_duration_since(t + Duration::from_secs(1)),
            Duration::ZERO
        );
    }
}
