//! A private NATS server with a file store is stopped and started again under a running
//! JetStream publisher and consumer: a publish during the outage fails with a clear error
//! (`TimedOut`, counted as such) instead of hanging, publishing resumes after the restart, the
//! consumer consumes again by itself (counted in `messaging_consumer_reconnects_total`), every
//! acknowledged message is processed, and shutdown ends in time.

mod nats_support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::metrics::{label, name};
use eventscope::nats::error::PublishErrorKind;
use eventscope::nats::{
    self, async_nats, JetStreamConsumer, JetStreamMessage, JetStreamPublisher, NatsRecord,
};
use eventscope::Metrics;
use nats_support::{eventually, sample, PrivateServer, TestStream};
use tower::{service_fn, Layer, Service, ServiceExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_publishing_and_consuming_survive_a_server_restart() {
    let mut server = PrivateServer::start().await;
    // Reconnect attempts every 100 ms (the client's default backs off to 4 s).
    let client = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(server.url())
        .await
        .expect("connect");
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client.clone());
    let stream = TestStream::on(
        &js,
        "restart",
        async_nats::jetstream::stream::StorageType::File,
        server.url(),
    )
    .await;
    let group = nats_support::unique("restart");
    let pull = stream.consumer(&group, Duration::from_secs(2), 20).await;
    let metrics = Metrics::new();
    let mut publisher =
        nats::publish_layer(metrics.clone()).layer(JetStreamPublisher::new(js.clone()));

    let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let handler = service_fn({
        let seen = seen.clone();
        move |m: JetStreamMessage| {
            seen.lock()
                .unwrap()
                .insert(String::from_utf8_lossy(m.payload()).into_owned());
            async { Ok::<_, std::io::Error>(()) }
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let consumer = tokio::spawn(
        JetStreamConsumer::new(js.clone(), pull)
            .unwrap()
            .metrics(metrics.clone())
            .drain_deadline(Duration::from_secs(2))
            .run(handler, async move {
                let _ = stop_rx.await;
            }),
    );

    let mut acked = BTreeSet::new();
    for i in 0..20 {
        let payload = format!("before-{i}");
        publisher
            .ready()
            .await
            .unwrap()
            .call(NatsRecord::new(stream.subject.clone(), payload.clone()))
            .await
            .expect("acknowledged");
        acked.insert(payload);
    }
    eventually(
        "the first messages consumed",
        Duration::from_secs(20),
        || seen.lock().unwrap().is_superset(&acked),
    )
    .await;

    server.stop();
    let started = tokio::time::Instant::now();
    let outage = tokio::time::timeout(
        Duration::from_secs(10),
        publisher
            .clone()
            .oneshot(NatsRecord::new(stream.subject.clone(), "during-outage").id("during-outage")),
    )
    .await
    .expect("a publish during the outage does not hang");
    match outage {
        Err(error) => assert_eq!(error.kind(), PublishErrorKind::TimedOut, "{error}"),
        Ok(receipt) => panic!("acknowledged by a stopped server? {receipt:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed within the context's timeout"
    );
    assert_eq!(
        sample(
            &metrics.encode(),
            name::SENT_MESSAGES,
            &[(label::ERROR_TYPE, "TimedOut")]
        ),
        Some(1.0),
        "counted under its kind"
    );

    server.resume().await;
    // Publishing resumes: each message is tried until acknowledged, with its own id, so a try
    // that timed out but was stored is not stored twice.
    for i in 0..20 {
        let payload = format!("after-{i}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let record =
                NatsRecord::new(stream.subject.clone(), payload.clone()).id(payload.clone());
            match publisher.clone().oneshot(record).await {
                Ok(_) => break,
                Err(error) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "publishing never resumed: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        acked.insert(payload);
    }
    eventually(
        "every acknowledged message consumed after the restart",
        Duration::from_secs(30),
        || seen.lock().unwrap().is_superset(&acked),
    )
    .await;
    // The consumer looks at its connection every second.
    eventually("the reconnect counted", Duration::from_secs(5), || {
        sample(
            &metrics.encode(),
            name::RECONNECTS,
            &[(label::GROUP, group.as_str())],
        )
        .is_some_and(|n| n >= 1.0)
    })
    .await;

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), consumer)
        .await
        .expect("shutdown ends")
        .unwrap()
        .expect("clean run");
}
