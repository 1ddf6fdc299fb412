//! The clock reads of the hot path, as plain nanosecond counts.
//!
//! A publish and a process each time themselves and the process layer measures queue time:
//! with `std::time` every read went through `Instant`/`SystemTime` and their checked `timespec`
//! arithmetic, which cost more than the reads themselves (callgrind: about 600 instructions of
//! a round trip's 4,100). Here a read is one `clock_gettime` (served by the vDSO, no system
//! call) turned into a `u64`, and a duration is a saturating subtraction. Durations use the
//! monotonic clock; queue time and generated ids need the wall clock.

/// A point on the monotonic clock, for durations.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Monotonic(u64);

impl Monotonic {
    #[inline]
    pub(crate) fn now() -> Self {
        Self(monotonic_nanos())
    }

    /// Seconds from this point until now (zero if the clock went backwards, which a monotonic
    /// clock does not).
    #[inline]
    pub(crate) fn elapsed_seconds(self) -> f64 {
        monotonic_nanos().saturating_sub(self.0) as f64 / 1e9
    }
}

/// Nanoseconds since the Unix epoch, now (0 before 1970).
#[inline]
pub(crate) fn unix_nanos_now() -> u64 {
    realtime_nanos()
}

/// Nanoseconds since the Unix epoch at `t` (0 before 1970, saturating far in the future).
#[inline]
pub(crate) fn unix_nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
}

#[cfg(unix)]
#[inline]
#[allow(unsafe_code)]
fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec`, and both clocks used here exist on every
    // Unix Rust supports (std's `Instant` and `SystemTime` read the same ones). On failure
    // `ts` stays zero, which reads as "no time passed" rather than as garbage.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec.max(0) as u64)
}

#[cfg(unix)]
#[inline]
fn monotonic_nanos() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

#[cfg(unix)]
#[inline]
fn realtime_nanos() -> u64 {
    read(libc::CLOCK_REALTIME)
}

#[cfg(not(unix))]
fn monotonic_nanos() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    start.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
}

#[cfg(not(unix))]
fn realtime_nanos() -> u64 {
    unix_nanos(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_std() {
        let before = unix_nanos(std::time::SystemTime::now());
        let ours = unix_nanos_now();
        let after = unix_nanos(std::time::SystemTime::now());
        assert!(before <= ours && ours <= after, "{before} {ours} {after}");

        let start = Monotonic::now();
        let std_start = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let std_elapsed = std_start.elapsed().as_secs_f64();
        let elapsed = start.elapsed_seconds();
        assert!(elapsed >= 0.02, "{elapsed}");
        // Ours was started first and read last.
        assert!(elapsed >= std_elapsed, "{elapsed} {std_elapsed}");
        assert!(elapsed < std_elapsed + 5.0, "{elapsed} {std_elapsed}");
    }

    #[test]
    fn before_the_epoch_is_zero() {
        let early = std::time::UNIX_EPOCH - std::time::Duration::from_secs(5);
        assert_eq!(unix_nanos(early), 0);
    }
}
