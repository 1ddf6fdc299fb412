//! `delivery_attempt()` says what the broker knows: on a quorum queue `x-delivery-count` + 1
//! (the header is absent on the first delivery), on a classic queue 2 for any redelivery (it
//! only says `redelivered`), else 1; the consumer core's own count wins where it is higher
//! (SPEC §8). A retried message with an id of its own comes back through `basic.nack` with
//! requeue; one without (its id made up on receipt, so a redelivery could not be told for the
//! same message) is retried in process. Each retry counts in
//! `messaging_consumer_retries_total`.

mod rabbitmq_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::classify::{Classifier, Decision};
use eventscope::metrics::{label, name, Metrics};
use eventscope::rabbitmq::lapin::options::QueueDeclareOptions;
use eventscope::rabbitmq::lapin::types::AMQPValue;
use eventscope::rabbitmq::{RabbitConsumer, RabbitMessage, RabbitRecord};
use eventscope::{BoxError, IncomingMessage};
use rabbitmq_support::*;
use tokio::sync::watch;
use tower::{service_fn, ServiceExt};

#[derive(Debug)]
struct Flaky;
impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("flaky")
    }
}
impl std::error::Error for Flaky {}

/// The attempts the handler saw for one message whose first two calls fail, on `queue`, and
/// whether each delivery was flagged redelivered. `id`: the message has an id of its own.
async fn attempts_seen(queue: &str, id: bool) -> (Vec<u32>, Vec<bool>, Metrics) {
    let connection = connect("eventscope-attempts").await;
    let mut record = RabbitRecord::to_queue(queue, b"once".to_vec());
    if id {
        record = record.message_id(unique("id"));
    }
    publisher(&connection)
        .await
        .oneshot(record)
        .await
        .expect("confirmed");
    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let redelivered: Arc<Mutex<Vec<bool>>> = Arc::default();
    let handler = service_fn({
        let (seen, redelivered) = (seen.clone(), redelivered.clone());
        move |m: RabbitMessage| {
            let attempt = m.delivery_attempt().expect("known");
            redelivered.lock().unwrap().push(m.redelivered());
            let calls = {
                let mut seen = seen.lock().unwrap();
                seen.push(attempt);
                seen.len()
            };
            async move {
                if calls < 3 {
                    return Err(BoxError::from(Flaky));
                }
                Ok(())
            }
        }
    });
    let metrics = Metrics::new();
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(
        RabbitConsumer::new(URI, queue)
            .expect("consumer")
            .metrics(metrics.clone())
            .classify_errors(
                Classifier::new()
                    .on::<Flaky>("Flaky")
                    .decision("Flaky", Decision::retry(Duration::from_millis(10))),
            )
            .run(handler, async move {
                let mut stopped = stopped;
                let _ = stopped.wait_for(|s| *s).await;
            }),
    );
    eventually("a success", Duration::from_secs(30), || {
        seen.lock().unwrap().len() >= 3
    })
    .await;
    stop.send(true).unwrap();
    running.await.unwrap().expect("a clean run");
    let _ = connection.close(200, "OK".into()).await;
    let seen = seen.lock().unwrap().clone();
    let redelivered = redelivered.lock().unwrap().clone();
    (seen, redelivered, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_counts_every_delivery() {
    let connection = connect("eventscope-attempts-setup").await;
    let channel = connection.create_channel().await.expect("channel");
    let queue = unique("quorum");
    let mut arguments = expiring();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .expect("declare a quorum queue");
    let (seen, _, metrics) = attempts_seen(&queue, true).await;
    assert_eq!(seen, [1, 2, 3], "x-delivery-count + 1");
    let retries = samples(
        &metrics.encode(),
        name::RETRIES,
        &[(label::ERROR_TYPE, "Flaky"), (label::GROUP, queue.as_str())],
    );
    assert_eq!(retries.iter().map(|(_, v)| v).sum::<f64>(), 2.0);
    delete_queue(&channel, &queue).await;
    let _ = connection.close(200, "OK".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_queue_tells_only_a_redelivery() {
    let (connection, channel, queue) = queue_for_test("eventscope-attempts-setup", "classic").await;
    // With an id of its own: back through the broker, which says only "redelivered" from the
    // second delivery on; the core's count makes the third attempt 3.
    let (seen, redelivered, _) = attempts_seen(&queue, true).await;
    assert_eq!(redelivered, [false, true, true], "through the broker");
    assert_eq!(seen, [1, 2, 3]);
    // Without: retried in process, counted by the core.
    let (seen, redelivered, _) = attempts_seen(&queue, false).await;
    assert_eq!(redelivered, [false, false, false], "in process");
    assert_eq!(seen, [1, 2, 3]);
    delete_queue(&channel, &queue).await;
    let _ = connection.close(200, "OK".into()).await;
}
