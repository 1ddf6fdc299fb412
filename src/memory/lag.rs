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
        let next = broker
            .committed(group, &topic.name, partition)
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
