//! The test kit's consumer run (`eventscope::testing::run_until_settled`): it ends once the
//! messages are settled, counts from where the group was, treats messages behind a stopped
//! partition as done, and fails a run that takes too long with how far it got.

use std::time::Duration;

use eventscope::classify::{Classifier, Decision};
use eventscope::consume::ConsumeError;
use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
use eventscope::testing::run_until_settled;
use tower::{service_fn, ServiceExt};

#[derive(Debug)]
struct Declined;

impl std::fmt::Display for Declined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("declined")
    }
}

impl std::error::Error for Declined {}

/// Publishes `payloads` to `topic`, spread over its partitions by key.
async fn publish(broker: &MemoryBroker, topic: &str, payloads: &[&str]) {
    for payload in payloads {
        broker
            .publisher()
            .oneshot(MemoryRecord::new(topic, payload.as_bytes().to_vec()).key(*payload))
            .await
            .unwrap();
    }
}

fn committed(broker: &MemoryBroker, group: &str, topic: &str) -> i64 {
    (0..broker.partitions(topic).unwrap())
        .map(|p| broker.committed(group, topic, p).unwrap_or(0))
        .sum()
}

/// Declines the payload `bad`, handles the rest.
fn handler(
    bad: &'static str,
) -> impl tower::Service<MemoryMessage, Response = (), Error = Declined, Future = impl Send>
       + Clone
       + Send
       + 'static {
    service_fn(move |m: MemoryMessage| async move {
        if m.payload() == bad.as_bytes() {
            Err(Declined)
        } else {
            Ok(())
        }
    })
}

#[tokio::test]
async fn counts_from_the_groups_committed_offsets() {
    let broker = MemoryBroker::new();
    publish(&broker, "orders", &["a", "b", "c"]).await;
    let consumer = broker.consumer("billing").subscribe(["orders"]);
    run_until_settled(consumer, handler("none"), 3)
        .await
        .unwrap();
    assert_eq!(committed(&broker, "billing", "orders"), 3);

    // Two more: the three settled before do not count again.
    publish(&broker, "orders", &["d", "e"]).await;
    let consumer = broker.consumer("billing").subscribe(["orders"]);
    run_until_settled(consumer, handler("none"), 2)
        .await
        .unwrap();
    assert_eq!(committed(&broker, "billing", "orders"), 5);
}

#[tokio::test]
async fn a_stopped_partition_ends_the_run_once_the_others_are_settled() {
    let broker = MemoryBroker::new();
    broker.create_topic("orders", 3).unwrap();
    let payloads: Vec<String> = (0..30).map(|i| format!("order-{i}")).collect();
    let payloads: Vec<&str> = payloads.iter().map(String::as_str).collect();
    publish(&broker, "orders", &payloads).await;

    // The default classifier stops the partition of `order-7`.
    let consumer = broker.consumer("billing").subscribe(["orders"]);
    let result = run_until_settled(consumer, handler("order-7"), 30)
        .timeout(Duration::from_secs(20))
        .await;
    let Err(ConsumeError::PartitionStopped {
        partition, offset, ..
    }) = result
    else {
        panic!("expected a stopped partition, got {result:?}");
    };
    for p in 0..3 {
        let (committed, end) = (
            broker.committed("billing", "orders", p).unwrap_or(0),
            broker.high_watermark("orders", p).unwrap(),
        );
        if p == partition {
            assert_eq!(committed, offset, "never past the failure");
        } else {
            assert_eq!(committed, end, "partition {p} settled in full");
        }
    }
}

#[tokio::test]
async fn rejected_messages_count_as_settled() {
    let broker = MemoryBroker::new();
    publish(&broker, "orders", &["a", "bad", "c"]).await;
    let consumer = broker
        .consumer("billing")
        .subscribe(["orders"])
        .classify_errors(Classifier::new().otherwise(Decision::Reject));
    run_until_settled(consumer, handler("bad"), 3)
        .await
        .unwrap();
    assert_eq!(committed(&broker, "billing", "orders"), 3);
}

#[tokio::test]
#[should_panic(expected = "2 of 3 messages settled by group `billing`")]
async fn a_run_that_takes_too_long_fails_with_how_far_it_got() {
    let broker = MemoryBroker::new();
    broker.create_topic("orders", 1).unwrap();
    publish(&broker, "orders", &["a", "b", "slow"]).await;
    let handler = service_fn(|m: MemoryMessage| async move {
        if m.payload() == b"slow" {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Ok::<_, Declined>(())
    });
    let consumer = broker
        .consumer("billing")
        .subscribe(["orders"])
        .drain_deadline(Duration::from_millis(50));
    let _ = run_until_settled(consumer, handler, 3)
        .timeout(Duration::from_millis(300))
        .await;
}
