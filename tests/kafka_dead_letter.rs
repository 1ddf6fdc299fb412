//! Dead letters on Kafka when the dead-letter destination is missing or its broker is down
//! (SPEC §8): an error at startup where the broker can tell; otherwise the original stays
//! uncommitted while the publish fails (logged, counted) and is dead-lettered once the broker
//! is back, with nothing lost and the partition waiting meanwhile.
//!
//! The dead letters go to a private tansu on a port of its own, which the test stops and
//! starts again; the shared broker on 127.0.0.1:9092 is never touched.

mod kafka_support;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::classify::{Classifier, Decision};
use eventscope::consume::ConsumeError;
use eventscope::header;
use eventscope::kafka::{producer_config, KafkaConsumer, KafkaMessage, KafkaPublisher};
use eventscope::message::Headers;
use eventscope::metrics::{label, name, Metrics};
use kafka_support::{
    assign, committed, config, consumer, create_topic, create_topic_on, eventually, samples, unique,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use tower::service_fn;

#[derive(Debug)]
struct Poison;
impl std::fmt::Display for Poison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("poison")
    }
}
impl std::error::Error for Poison {}

/// A tansu of the test's own, stopped and started by `scripts/kafka.sh` with its own port and
/// state directory (in-memory storage: topics are gone after a restart).
struct PrivateBroker {
    port: u16,
    state: String,
}

impl PrivateBroker {
    fn new() -> Self {
        let port = free_port();
        Self {
            port,
            state: format!("{}/target/kafka-private-{port}", env!("CARGO_MANIFEST_DIR")),
        }
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn script(&self, command: &str) {
        let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"))
            .arg(command)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_STATE_DIR", &self.state)
            .status()
            .expect("scripts/kafka.sh runs");
        assert!(status.success(), "scripts/kafka.sh {command} failed");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.script("stop");
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

#[tokio::test]
async fn a_missing_dead_letter_topic_is_an_error_at_startup() {
    let topic = unique("dlq-missing");
    create_topic(&topic, 1).await;
    let raw = consumer(&config(&unique("dlq-missing-group")));
    assign(&raw, &topic, 1);
    let outcome = KafkaConsumer::new(raw)
        .dead_letter(KafkaPublisher::new(kafka_support::producer()))
        .run(
            service_fn(|_m: KafkaMessage| async { Ok::<_, std::io::Error>(()) }),
            std::future::pending(),
        )
        .await;
    match outcome {
        Err(ConsumeError::Broker(error)) => {
            let text = error.to_string();
            assert!(text.contains(&format!("{topic}.dlq")), "{text}");
        }
        other => panic!("expected a startup error naming the missing topic, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failed_dead_letter_publish_leaves_the_original_uncommitted_until_it_succeeds() {
    let topic = unique("dlq-outage");
    let group = unique("dlq-outage-group");
    create_topic(&topic, 1).await;
    let producer = kafka_support::producer();
    for payload in ["ok-0", "poison", "ok-2"] {
        producer
            .send(
                rdkafka::producer::FutureRecord::<(), [u8]>::to(&topic)
                    .payload(payload.as_bytes())
                    .partition(0),
                Duration::from_secs(10),
            )
            .await
            .expect("publish");
    }

    // Dead letters go to a private broker, which is down when the poison message fails.
    let private = PrivateBroker::new();
    let dead_letters = format!("{topic}.dlq");
    // No topic created by a metadata request: tansu makes such a topic with 4 partitions, and
    // a retried dead-letter publish racing the create below once left the topic at 4, not 1.
    let dlq_producer: FutureProducer = producer_config(&private.bootstrap())
        .set("message.timeout.ms", "1500")
        .set("reconnect.backoff.max.ms", "200")
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("dead-letter producer");

    let metrics = Metrics::new();
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = {
        let handled = Arc::clone(&handled);
        service_fn(move |m: KafkaMessage| {
            let payload = String::from_utf8_lossy(m.payload()).into_owned();
            handled.lock().unwrap().push(payload.clone());
            async move {
                if payload == "poison" {
                    return Err(eventscope::BoxError::from(Poison));
                }
                Ok(())
            }
        })
    };
    let raw = consumer(&config(&group));
    assign(&raw, &topic, 1);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(
        KafkaConsumer::new(raw)
            .metrics(metrics.clone())
            .commit_interval(Duration::from_millis(100))
            .classify_errors(
                Classifier::new()
                    .on::<Poison>("Poison")
                    .decision("Poison", Decision::DeadLetter),
            )
            .dead_letter(KafkaPublisher::new(dlq_producer))
            .dead_letter_destination(|topic| format!("{topic}.dlq"))
            // The dead letters go to another cluster than the one consumed from.
            .check_dead_letters(false)
            .run(handler, async move {
                let _ = stopped.await;
            }),
    );

    // The publish fails, is counted, and the partition waits at the poison message.
    eventually(
        "a failed dead-letter publish",
        Duration::from_secs(30),
        || {
            samples(
                &metrics.encode(),
                name::SENT_MESSAGES,
                &[(label::DESTINATION, dead_letters.as_str())],
            )
            .iter()
            .any(|(labels, n)| !labels.contains("error_type=\"\"") && *n >= 1.0)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        committed(&group, &topic, 1)[&0],
        Some(1),
        "committed up to the poison message, never past it"
    );
    assert!(
        !handled.lock().unwrap().contains(&"ok-2".to_owned()),
        "the partition waits while its message is not dead-lettered"
    );
    assert_eq!(
        samples(&metrics.encode(), name::DEAD_LETTERED, &[]).len(),
        0,
        "nothing counted as dead-lettered yet"
    );

    // The broker comes back: the copy is published, then the original committed past.
    private.script("start");
    create_topic_on(&private.bootstrap(), &dead_letters, 1).await;
    eventually("everything committed", Duration::from_secs(60), || {
        committed(&group, &topic, 1)[&0] == Some(3)
    })
    .await;
    let _ = stop.send(());
    running
        .await
        .expect("consumer task")
        .expect("a dead-lettered message stops nothing");
    let handled = handled.lock().unwrap().clone();
    assert_eq!(
        handled,
        vec!["ok-0", "poison", "ok-2"],
        "handled once each, in order"
    );
    let text = metrics.encode();
    assert_eq!(
        samples(
            &text,
            name::DEAD_LETTERED,
            &[
                (label::ERROR_TYPE, "Poison"),
                (label::DESTINATION, topic.as_str())
            ]
        )
        .iter()
        .map(|(_, n)| n)
        .sum::<f64>(),
        1.0
    );

    // Exactly one copy, with its error headers.
    let reader: BaseConsumer = producer_config(&private.bootstrap())
        .set("group.id", unique("dlq-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&dead_letters, 0, Offset::Beginning)
        .expect("partition");
    reader.assign(&list).expect("assign");
    let mut copies = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while copies.is_empty() && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = reader.poll(Duration::from_millis(200)) {
            let headers: Vec<(String, Vec<u8>)> = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            copies.push((message.payload().unwrap_or_default().to_vec(), headers));
        }
    }
    // Nothing more behind it.
    let extra = reader.poll(Duration::from_secs(1));
    assert!(extra.is_none(), "one copy only");
    assert_eq!(copies.len(), 1);
    let (payload, headers) = &copies[0];
    assert_eq!(payload, b"poison");
    let list = eventscope::message::HeaderList::from(headers.clone());
    assert_eq!(list.header_str(header::DLQ_ERROR_TYPE), Some("Poison"));
    assert_eq!(
        list.header_str(header::DLQ_ORIGINAL_DESTINATION),
        Some(topic.as_str())
    );
    assert_eq!(list.header_str(header::DLQ_ORIGINAL_OFFSET), Some("1"));
    assert_eq!(
        list.header_str(header::CAUSATION_ID),
        Some(format!("{topic}/0/1").as_str()),
        "the copy names the failed message as its cause"
    );
}
