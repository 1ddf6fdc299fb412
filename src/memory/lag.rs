//! The embedded broker's lag source: high watermark minus committed offset, per partition.

use super::broker::MemoryBroker;
use super::log::Topic;
use crate::consume::Reporter;

/// Reports the offset lag of `lanes` (topic, partition) for the reporter's group.
pub(crate) fn report_lag<'a>(
    broker: &MemoryBroker,
    reporter: &Reporter,
    lanes: impl Iterator<Item = (&'a Topic, i32)>,
) {
    let group = reporter.group();
    for (topic, partition) in lanes {
        let Some(high) = broker.high_watermark(&topic.name, partition) else {
            continue;
        };
        // From where the group stands (committed, or where it joined), never from the oldest
        // retained record: what retention dropped before the group got it is lag too.
        let next = broker
            .position(group, &topic.name, partition)
            .unwrap_or_else(|| broker.log_start(topic, partition));
        reporter.lag(&topic.name, Some(partition), (high - next).max(0));
    }
}
