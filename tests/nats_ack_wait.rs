//! A handler that takes three times the consumer's `ack_wait` completes once, without a
//! redelivery: the consumer keeps its message in progress (`+WPI`). Without that
//! (`max_in_progress(ZERO)`) the same handler sees the message delivered again.

mod nats_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::nats::{JetStreamConsumer, JetStreamMessage, JetStreamPublisher, NatsRecord};
use eventscope::IncomingMessage;
use nats_support::TestStream;
use tower::{service_fn, ServiceExt};

const ACK_WAIT: Duration = Duration::from_secs(1);

/// Runs a consumer whose handler takes 3 × ack_wait on one message; the deliveries it saw.
async fn slow_handler(keep_in_progress: bool) -> (Vec<u32>, u64) {
    let js = nats_support::js().await;
    let stream = TestStream::new(&js, "ack_wait").await;
    let group = nats_support::unique("slow");
    let pull = stream.consumer(&group, ACK_WAIT, 5).await;
    JetStreamPublisher::new(js.clone())
        .oneshot(NatsRecord::new(stream.subject.clone(), "slow"))
        .await
        .unwrap();
    let deliveries: Arc<Mutex<Vec<u32>>> = Arc::default();
    let handler = service_fn({
        let deliveries = deliveries.clone();
        move |m: JetStreamMessage| {
            deliveries
                .lock()
                .unwrap()
                .push(m.delivery_attempt().unwrap_or(0));
            async {
                tokio::time::sleep(ACK_WAIT * 3).await;
                Ok::<_, std::io::Error>(())
            }
        }
    });
    let mut consumer = JetStreamConsumer::new(js.clone(), pull)
        .unwrap()
        .max_concurrency(4);
    if !keep_in_progress {
        consumer = consumer.max_in_progress(Duration::ZERO);
    }
    // Long enough for the handler and a redelivery that would follow its ack.
    consumer
        .run(
            handler,
            tokio::time::sleep(ACK_WAIT * 4 + Duration::from_millis(500)),
        )
        .await
        .expect("clean run");
    let redelivered = stream
        .stream
        .consumer_info(&group)
        .await
        .unwrap()
        .num_redelivered as u64;
    let seen = deliveries.lock().unwrap().clone();
    (seen, redelivered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_three_times_ack_wait_long_completes_once() {
    let (kept, redelivered) = slow_handler(true).await;
    assert_eq!(kept, [1], "one delivery, handled once");
    assert_eq!(redelivered, 0, "the server redelivered nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_in_progress_the_server_delivers_it_again() {
    let (seen, _) = slow_handler(false).await;
    assert!(
        seen.len() >= 2,
        "redelivered while the handler ran: {seen:?}"
    );
    assert_eq!(seen[0], 1);
    assert!(seen[1] >= 2, "the delivery count grows: {seen:?}");
}
