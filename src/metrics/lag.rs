//! Consumer lag gauges, as SPEC §5 defines them. Broker adapters report offset lag (or ready /
//! pending counts); this module turns it into `lag_messages` and `lag_seconds`.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::{partition_slot, unix_nanos, Metrics};

impl Metrics {
    /// Reports the lag of one partition (`None` for brokers without partitions).
    ///
    /// `lag_messages` must already be clamped and free of sentinels by the caller; negative
    /// values and partition `-1` are ignored rather than exported.
    pub(crate) fn record_lag(
        &self,
        system: &str,
        destination: &str,
        group: &str,
        partition: Option<i32>,
        lag_messages: i64,
    ) {
        self.record_lag_at(
            system,
            destination,
            group,
            partition,
            lag_messages,
            SystemTime::now(),
        );
    }

    pub(crate) fn record_lag_at(
        &self,
        system: &str,
        destination: &str,
        group: &str,
        partition: Option<i32>,
        lag_messages: i64,
        now: SystemTime,
    ) {
        if lag_messages < 0 || partition.is_some_and(|p| p < 0) {
            return;
        }
        let state = self.partition(system, destination, group, partition);
        state.lag_messages.set(lag_messages);
        if lag_messages == 0 {
            state.first_behind_nanos.store(0, Ordering::Relaxed);
            state.lag_seconds.set(0.0);
            return;
        }
        let now_nanos = unix_nanos(now);
        let first_behind = match state.first_behind_nanos.compare_exchange(
            0,
            now_nanos,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => now_nanos,
            Err(earlier) => earlier,
        };
        let base = first_behind.max(state.last_created_nanos.load(Ordering::Relaxed));
        // Saturating: a creation time in the future (clock skew) reads as no delay.
        let seconds = now_nanos.saturating_sub(base) as f64 / 1e9;
        state.lag_seconds.set(seconds);
    }

    /// Removes a partition's lag, last-message and stopped series, e.g. when it is revoked.
    pub(crate) fn remove_partition(
        &self,
        system: &str,
        destination: &str,
        group: &str,
        partition: Option<i32>,
    ) {
        // A revoked partition is no longer ours to report stopped (SPEC §4).
        self.set_partition_stopped(system, destination, group, partition, false);
        let label = self.inner.destinations.admit(destination);
        let slot = partition_slot(partition);
        // Layers that memoise their last lookup look again.
        self.inner
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        // The process layer's combined entry holds the same state: evict both, so a partition
        // assigned again starts from fresh series.
        self.inner
            .consumer_partitions
            .remove(&[system, &label, group], slot);
        if self
            .inner
            .partitions
            .remove(&[system, &label, group], slot)
            .is_none()
        {
            return;
        }
        let partition_label = partition.map(|p| p.to_string()).unwrap_or_default();
        let values = [system, &*label, &*partition_label, group];
        let f = &self.inner.families;
        // Absent series are fine: removal is idempotent from the caller's point of view.
        let _ = f.lag_messages.remove_label_values(&values);
        let _ = f.lag_seconds.remove_label_values(&values);
        let _ = f.last_timestamp.remove_label_values(&values);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn gauge(metrics: &Metrics, name: &str) -> Option<f64> {
        metrics
            .encode()
            .lines()
            .find(|l| {
                l.starts_with(name) && l.contains(r#"messaging_destination_partition_id="0""#)
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn lag_seconds_follows_spec_section_5() {
        let m = Metrics::new();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);

        m.record_lag_at("kafka", "t", "g", Some(0), 0, at(0));
        assert_eq!(gauge(&m, "messaging_consumer_lag_seconds"), Some(0.0));

        // First seen behind at t=10: grows with wall time while stalled.
        m.record_lag_at("kafka", "t", "g", Some(0), 5, at(10));
        assert_eq!(gauge(&m, "messaging_consumer_lag_seconds"), Some(0.0));
        m.record_lag_at("kafka", "t", "g", Some(0), 5, at(40));
        assert_eq!(gauge(&m, "messaging_consumer_lag_seconds"), Some(30.0));

        // A processed message created at t=35 moves the base forward.
        m.partition("kafka", "t", "g", Some(0))
            .processed(unix_nanos(at(35)));
        m.record_lag_at("kafka", "t", "g", Some(0), 2, at(45));
        assert_eq!(gauge(&m, "messaging_consumer_lag_seconds"), Some(10.0));

        // Clock skew: creation in the future never gives a negative value.
        m.partition("kafka", "t", "g", Some(0))
            .processed(unix_nanos(at(100)));
        m.record_lag_at("kafka", "t", "g", Some(0), 1, at(50));
        assert_eq!(gauge(&m, "messaging_consumer_lag_seconds"), Some(0.0));

        m.record_lag_at("kafka", "t", "g", Some(0), 0, at(60));
        assert_eq!(gauge(&m, "messaging_consumer_lag_seconds"), Some(0.0));
        assert_eq!(gauge(&m, "messaging_consumer_lag_messages"), Some(0.0));
    }

    #[test]
    fn sentinels_and_revoked_partitions_are_not_exported() {
        let m = Metrics::new();
        m.record_lag("kafka", "t", "g", Some(-1), 3);
        m.record_lag("kafka", "t", "g", Some(1), -1001);
        assert!(!m.encode().contains("messaging_consumer_lag_messages"));
        m.record_lag("kafka", "t", "g", Some(0), 3);
        assert_eq!(gauge(&m, "messaging_consumer_lag_messages"), Some(3.0));
        m.remove_partition("kafka", "t", "g", Some(0));
        assert_eq!(gauge(&m, "messaging_consumer_lag_messages"), None);
    }
}
