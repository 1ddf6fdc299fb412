//! The core NATS consumer on the core's unordered mode, where the server cannot deliver a
//! message again: a queue group is the consumer group, `Retry` calls the handler again in
//! process and settles once, `Reject` drops the message and goes on, `Stop` unsubscribes and
//! returns `Stopped`, and the client's slow-consumer drops count in
//! `messaging_consumer_dropped_messages_total` (given `ClientEvents`).

mod nats_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::classify::{Classifier, Decision};
use eventscope::consume::ConsumeError;
use eventscope::metrics::{label, name};
use eventscope::nats::{
    async_nats, ClientEvents, NatsConsumer, NatsMessage, NatsPublisher, NatsRecord,
};
use eventscope::{BoxError, Metrics};
use nats_support::{eventually, sample};
use tower::{service_fn, ServiceExt};

#[derive(Debug)]
struct Flaky;
impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("flaky")
    }
}
impl std::error::Error for Flaky {}

#[derive(Debug)]
struct Poison;
impl std::fmt::Display for Poison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("poison")
    }
}
impl std::error::Error for Poison {}

async fn publish(client: &async_nats::Client, subject: &str, payloads: &[&str]) {
    for payload in payloads {
        NatsPublisher::new(client.clone())
            .oneshot(NatsRecord::new(subject.to_owned(), payload.to_string()))
            .await
            .expect("flushed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_in_process_reject_drops_stop_unsubscribes() {
    let client = nats_support::client().await;
    let subject = format!("core.{}", nats_support::unique("settle"));
    let metrics = Metrics::new();
    let calls: Arc<Mutex<Vec<String>>> = Arc::default();
    let flaked = Arc::new(AtomicUsize::new(0));
    let handler = service_fn({
        let (calls, flaked) = (calls.clone(), flaked.clone());
        move |m: NatsMessage| {
            let payload = String::from_utf8_lossy(m.payload()).into_owned();
            calls.lock().unwrap().push(payload.clone());
            let flaked = flaked.clone();
            async move {
                match payload.as_str() {
                    "flaky" if flaked.fetch_add(1, Ordering::SeqCst) < 2 => {
                        Err(BoxError::from(Flaky))
                    }
                    "poison" => Err(Poison.into()),
                    "unclassified" => Err("unclassified".into()),
                    _ => Ok(()),
                }
            }
        }
    });
    let classifier = Classifier::new()
        .on::<Flaky>("Flaky")
        .on::<Poison>("Poison")
        .decision("Flaky", Decision::retry(Duration::from_millis(10)))
        .decision("Poison", Decision::Reject);
    let consumer = NatsConsumer::queue_subscribe(client.clone(), subject.clone(), "workers")
        .metrics(metrics.clone())
        .classify_errors(classifier)
        .max_concurrency(1);
    let running = tokio::spawn(consumer.run(handler, std::future::pending()));
    tokio::time::sleep(Duration::from_millis(200)).await;

    publish(&client, &subject, &["a", "flaky", "poison", "b"]).await;
    eventually("four messages handled", Duration::from_secs(10), || {
        calls.lock().unwrap().iter().filter(|c| *c == "b").count() == 1
    })
    .await;
    assert_eq!(
        calls.lock().unwrap().clone(),
        ["a", "flaky", "flaky", "flaky", "poison", "b"],
        "the retried message handled three times in process, the rejected one once"
    );
    let text = metrics.encode();
    assert_eq!(
        sample(&text, name::RETRIES, &[(label::ERROR_TYPE, "Flaky")]),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, name::CONSUMED_MESSAGES, &[(label::GROUP, "workers")]),
        Some(6.0),
        "the queue group is the consumer group"
    );
    assert_eq!(
        sample(
            &text,
            &format!("{}_count", name::OPERATION_DURATION),
            &[(label::OPERATION, "settle")]
        ),
        Some(4.0),
        "one settle per message, the final decision only"
    );

    // An unclassified failure stops: the consumer unsubscribes and returns.
    publish(&client, &subject, &["unclassified"]).await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stops by itself")
        .unwrap();
    assert!(
        matches!(outcome, Err(ConsumeError::Stopped { .. })),
        "{outcome:?}"
    );
    publish(&client, &subject, &["after-stop"]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!calls.lock().unwrap().iter().any(|c| c == "after-stop"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_drops_are_counted() {
    let events = ClientEvents::new();
    let client = events
        .connect_options(async_nats::ConnectOptions::new().subscription_capacity(16))
        .connect(nats_support::url())
        .await
        .expect("connect");
    let publisher = nats_support::client().await;
    let subject = format!("core.{}", nats_support::unique("slow"));
    let metrics = Metrics::new();
    let handled = Arc::new(AtomicUsize::new(0));
    let handler = service_fn({
        let handled = handled.clone();
        move |_m: NatsMessage| {
            let handled = handled.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                handled.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(())
            }
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(
        NatsConsumer::subscribe(client, subject.clone())
            .client_events(&events)
            .metrics(metrics.clone())
            .max_concurrency(1)
            .drain_deadline(Duration::from_millis(100))
            .run(handler, async move {
                let _ = stop_rx.await;
            }),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..300 {
        publisher
            .publish(subject.clone(), i.to_string().into())
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    let dropped = || {
        sample(
            &metrics.encode(),
            name::DROPPED_MESSAGES,
            &[
                (label::DESTINATION, subject.as_str()),
                (label::SYSTEM, "nats"),
            ],
        )
        .unwrap_or(0.0)
    };
    eventually("drops counted", Duration::from_secs(10), || dropped() > 0.0).await;
    let _ = stop_tx.send(());
    running.await.unwrap().expect("clean run");
    let (handled, dropped) = (handled.load(Ordering::SeqCst) as f64, dropped());
    assert!(
        handled + dropped <= 300.0,
        "a lower bound: handled {handled} + dropped {dropped}"
    );
    assert!(handled < 300.0);
}
