//! The embedded broker's lag source: high watermark minus committed offset, per partition.

use super::broker::{MemoryBroker, Topic};
use crate::message::system::MEMORY;
use crate::metrics::Metrics;

/// Reports the offset lag of `lanes` (topic, partition) for `group`.
pub(crate) fn report_lag<'a>(
    broker: &MemoryBroker,
    metrics: &Metrics,
    group: &str,
    lanes: impl Iterator<Item = (&'a Topic, i32)>,
) {
    for (topic, partition) in lanes {
        let Some(high) = broker.high_watermark(&topic.name, partition) else {
            continue;
        };
        // From where the group stands (committed, or where it joined), never from the oldest
        // retained record: what retention dropped before the group got it is lag too.
        let next = broker
            .position(group, &topic.name, partition)
            .unwrap_or_else(|| broker.log_start(topic, partition));
        metrics.record_lag(
            MEMORY,
            &topic.name,
            group,
            Some(partition),
            (high - next).max(0),
        );
    }
}
