//! The demo over Kafka (`order_pipeline --kafka --forever`, with `--redis`): the records its
//! consumers dead-letter to `orders.dlq` are the core's (SPEC §8), not hand-made copies. Each
//! keeps the original's payload and key, carries every `dlq-*` header, a fresh `message-id`,
//! `causation-id` = the failed message's id and its `correlation-id`, and belongs to the failed
//! message's trace. Declined payments arrive after 3 attempts, payloads the schema layer refuses
//! after 1, as `decode` or `schema`.
//!
//! The demo runs as a subprocess with a topic and group prefix of its own (so runs against the
//! shared broker never mix) until its dead-letter topic holds every kind, then is stopped with
//! SIGINT as a user would; the records are read back with a plain rdkafka consumer. Its Redis
//! keys are deleted afterwards.

mod common;
mod kafka_support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{demo_binary, free_port, sample, Child};
use eventscope::dedup::redis;
use eventscope::header;
use eventscope::kafka::consumer_config;
use eventscope::metrics::{label, name};
use eventscope::schema::error::{DECODE, SCHEMA};
use kafka_support::{require_broker, unique, BOOTSTRAP};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers as _, Message};
use rdkafka::{Offset, TopicPartitionList};

const REDIS: &str = "redis://127.0.0.1:6379";
const PARTITIONS: i32 = 3;

/// A record as read back: key, payload, headers (name → UTF-8 value).
#[derive(Clone, Debug)]
struct Record {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: HashMap<String, String>,
    /// Header names seen more than once.
    repeated: Vec<String>,
}

impl Record {
    fn of(message: &impl Message) -> Self {
        let (mut headers, mut repeated) = (HashMap::new(), Vec::new());
        if let Some(list) = message.headers() {
            for h in list.iter() {
                let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                let name = h.key.to_ascii_lowercase();
                if headers.insert(name.clone(), value.into_owned()).is_some() {
                    repeated.push(name);
                }
            }
        }
        Self {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
            repeated,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn must(&self, name: &str) -> &str {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name} header on {self:?}"))
    }

    /// The trace id of its `traceparent`, if it has a well-formed one.
    fn trace_id(&self) -> Option<&str> {
        let parts: Vec<&str> = self.header(header::TRACEPARENT)?.split('-').collect();
        (parts.len() == 4 && parts[1].len() == 32).then(|| parts[1])
    }
}

/// Deletes the run's dedup keys (`eventscope:dedup:{prefix}...`) when dropped.
struct RedisKeys(String);

impl RedisKeys {
    /// The keys of the run's `group` (unprefixed), or of all its groups.
    fn pattern(&self, group: Option<&str>) -> String {
        match group {
            Some(group) => format!("eventscope:dedup:{}{group}:*", self.0),
            None => format!("eventscope:dedup:{}*", self.0),
        }
    }

    fn keys(&self, pattern: &str) -> Vec<String> {
        let client = redis::Client::open(REDIS).expect("redis URL");
        let mut connection = client.get_connection().expect("Redis on 127.0.0.1:6379");
        redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut connection)
            .expect("KEYS")
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let keys = self.keys(&self.pattern(None));
        if let Ok(client) = redis::Client::open(REDIS) {
            if let Ok(mut connection) = client.get_connection() {
                for chunk in keys.chunks(500) {
                    let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut connection);
                }
            }
        }
    }
}

fn reader(topic: &str, partitions: i32) -> StreamConsumer {
    let consumer: StreamConsumer = consumer_config(BOOTSTRAP, &unique("demo-dlq-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&list).expect("assign");
    consumer
}

/// Reads what arrives on `consumer` for up to `idle` after the last record.
async fn drain(consumer: &StreamConsumer, out: &mut Vec<Record>, idle: Duration) {
    while let Ok(Ok(message)) = tokio::time::timeout(idle, consumer.recv()).await {
        out.push(Record::of(&message));
    }
}

fn error_types(records: &[Record]) -> BTreeSet<String> {
    records
        .iter()
        .filter_map(|r| r.header(header::DLQ_ERROR_TYPE).map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demos_dead_letters_on_kafka_carry_the_spec_headers_and_ids() {
    require_broker();
    let prefix = format!("{}-", unique("demo"));
    let redis_keys = RedisKeys(prefix.clone());
    let orders = format!("{prefix}orders");
    let dead_letters = format!("{orders}.dlq");
    let groups: Vec<String> = [
        "payment-service",
        "inventory-service",
        "notification-service",
    ]
    .iter()
    .map(|g| format!("{prefix}{g}"))
    .collect();

    let port = free_port();
    let log = std::env::temp_dir().join(format!("{prefix}demo.log"));
    let out = std::fs::File::create(&log).expect("log file");
    let mut demo = Child(
        Command::new(demo_binary())
            .args([
                "--kafka",
                BOOTSTRAP,
                "--redis",
                REDIS,
                "--prefix",
                &prefix,
                "--forever",
                "--rate",
                "50",
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
            ])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("the demo starts (built with --features kafka,redis,dedup,schema)"),
    );
    let log_tail = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };

    // The demo creates its topics before it serves /metrics.
    let url = format!("http://127.0.0.1:{port}/metrics");
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while client.get(&url).send().await.is_err() {
        if let Ok(Some(status)) = demo.0.try_wait() {
            panic!("the demo exited ({status}):\n{}", log_tail());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the demo never served /metrics:\n{}",
            log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Until the dead-letter topic holds each kind, and the exposition shows duplicates.
    let wanted: BTreeSet<String> = ["PaymentDeclined", DECODE, SCHEMA]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let dlq = reader(&dead_letters, PARTITIONS);
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let exposition = loop {
        drain(&dlq, &mut records, Duration::from_millis(500)).await;
        let text = match client.get(&url).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let duplicates = sample(&text, name::DUPLICATES, &[]).unwrap_or(0.0);
        if wanted.is_subset(&error_types(&records)) && duplicates > 0.0 {
            break text;
        }
        if let Ok(Some(status)) = demo.0.try_wait() {
            panic!("the demo exited ({status}):\n{}", log_tail());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters so far: {:?}, duplicates {duplicates}\n{}",
            error_types(&records),
            log_tail()
        );
    };

    // Stopped as a user stops it: Ctrl-C, then a graceful shutdown.
    let stopped = Command::new("kill")
        .args(["-INT", &demo.0.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(stopped.success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = demo.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the demo did not stop on SIGINT:\n{}",
            log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "the demo exited {status}:\n{}",
        log_tail()
    );
    drain(&dlq, &mut records, Duration::from_secs(2)).await;

    // The idempotency layer kept its marks in Redis, under the run's groups.
    for group in [
        "payment-service",
        "inventory-service",
        "notification-service",
    ] {
        assert!(
            !redis_keys.keys(&redis_keys.pattern(Some(group))).is_empty(),
            "no dedup keys of {prefix}{group} in Redis"
        );
    }
    assert!(
        sample(
            &exposition,
            name::DEAD_LETTERED,
            &[(label::ERROR_TYPE, "PaymentDeclined")]
        )
        .unwrap_or(0.0)
            > 0.0
    );

    // The originals of every dead letter, read from the orders topic.
    let mut needed: BTreeMap<i32, i64> = BTreeMap::new();
    for record in &records {
        let partition: i32 = record.must(header::DLQ_ORIGINAL_PARTITION).parse().unwrap();
        let offset: i64 = record.must(header::DLQ_ORIGINAL_OFFSET).parse().unwrap();
        let top = needed.entry(partition).or_default();
        *top = (*top).max(offset);
    }
    let source = reader(&orders, PARTITIONS);
    let mut originals: HashMap<(i32, i64), Record> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while needed
        .iter()
        .any(|(p, o)| !originals.contains_key(&(*p, *o)))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the originals were not all read back"
        );
        let mut batch = Vec::new();
        drain(&source, &mut batch, Duration::from_secs(1)).await;
        for record in batch {
            originals.insert((record.partition, record.offset), record);
        }
    }

    let mut ids = BTreeSet::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for record in &records {
        let partition: i32 = record.must(header::DLQ_ORIGINAL_PARTITION).parse().unwrap();
        let offset: i64 = record.must(header::DLQ_ORIGINAL_OFFSET).parse().unwrap();
        let original = &originals[&(partition, offset)];
        let error_type = record.must(header::DLQ_ERROR_TYPE);
        *kinds.entry(error_type.to_owned()).or_default() += 1;

        // The original's payload and key.
        assert_eq!(record.payload, original.payload, "payload of {record:?}");
        assert_eq!(record.key, original.key, "key of {record:?}");

        // Where it came from, who failed it, why, how often, when.
        assert_eq!(record.must(header::DLQ_ORIGINAL_DESTINATION), orders);
        let group = record.must(header::DLQ_CONSUMER_GROUP);
        assert!(groups.iter().any(|g| g == group), "group {group}");
        let attempts = record.must(header::DLQ_ATTEMPTS);
        match error_type {
            "PaymentDeclined" => {
                assert_eq!(group, groups[0], "only the payment service declines");
                assert_eq!(attempts, "3", "the policy's 3 attempts");
                assert_eq!(
                    record.must(header::DLQ_ERROR_MESSAGE),
                    "payment declined by the gateway"
                );
            }
            DECODE | SCHEMA => {
                assert_eq!(attempts, "1", "a refused payload is not retried");
                let message = record.must(header::DLQ_ERROR_MESSAGE);
                assert!(!message.is_empty() && message.len() <= 1024, "{message}");
            }
            other => panic!("unexpected dlq-error-type {other}: {record:?}"),
        }
        if error_type == SCHEMA {
            assert!(
                record
                    .must(header::DLQ_ERROR_MESSAGE)
                    .starts_with("OrderCreated v1: "),
                "the schema error names the event and the offending values: {record:?}"
            );
        }
        let failed_at = record.must(header::DLQ_FAILED_AT);
        assert!(
            failed_at.len() == "2026-01-01T00:00:00.000Z".len() && failed_at.ends_with('Z'),
            "RFC 3339 UTC with milliseconds: {failed_at}"
        );
        humantime::parse_rfc3339(failed_at).expect("dlq-failed-at parses as RFC 3339");

        // A new message caused by the one that failed, in the same flow.
        let original_id = original
            .header(header::MESSAGE_ID)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{orders}/{partition}/{offset}"));
        let id = record.must(header::MESSAGE_ID);
        assert_ne!(id, original_id, "a fresh message-id");
        assert!(ids.insert(id.to_owned()), "message-id {id} used twice");
        assert_eq!(record.must(header::CAUSATION_ID), original_id);
        match original.header(header::CORRELATION_ID) {
            Some(correlation) => assert_eq!(record.must(header::CORRELATION_ID), correlation),
            None => assert!(!record.must(header::CORRELATION_ID).is_empty()),
        }
        // Its send span is in the failed message's trace (the legacy client's broken
        // traceparent starts a new one).
        let trace = record.trace_id().expect("a traceparent on the dead letter");
        if let Some(original_trace) = original.trace_id() {
            assert_eq!(trace, original_trace, "same trace as {original:?}");
        }
        // Each header once: the copy's ids replaced the original's, not added to them.
        assert!(record.repeated.is_empty(), "repeated headers: {record:?}");
        assert!(
            record.header("dead-letter-reason").is_none(),
            "no hand-made copy"
        );
    }
    assert!(wanted.iter().all(|k| kinds.contains_key(k)), "{kinds:?}");
    drop(redis_keys);
}
