//! Input eventscope did not write is processed, not rejected: a message from a client that
//! sent no headers, one with a binary key, one with garbage trace headers and non-UTF-8 header
//! values, a tombstone, and one whose header *name* is not UTF-8 (sent with a hand-built
//! Produce request, since no client library lets you) are all handed to the handler, processed
//! as clean new roots, and committed — no panic, no error, no stop. The header name that is
//! not UTF-8 is skipped and counted, and must not panic even in a `panic = "abort"` build
//! (`examples/kafka_abort_probe.rs`, run here as a subprocess), where a panic would kill the
//! consumer before it commits, on every restart.

mod kafka_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::kafka::{KafkaConsumer, KafkaMessage};
use eventscope::metrics::{name, Metrics};
use kafka_support::*;
use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use opentelemetry_semantic_conventions::attribute as semconv;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use tokio::sync::watch;
use tower::service_fn;
use tracing_subscriber::layer::SubscriberExt;

/// Sends one record with a Produce v3 request built by hand, so the header name can be any
/// bytes. Returns the partition error code from the response.
fn produce_by_hand(topic: &str, key: &[u8], value: &[u8], headers: &[(&[u8], &[u8])]) -> i16 {
    fn varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let byte = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn crc32c(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82f6_3b78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;

    let mut record = Vec::new();
    record.push(0); // attributes
    varint(&mut record, 0); // timestamp delta
    varint(&mut record, 0); // offset delta
    varint(&mut record, key.len() as i64);
    record.extend_from_slice(key);
    varint(&mut record, value.len() as i64);
    record.extend_from_slice(value);
    varint(&mut record, headers.len() as i64);
    for (name, value) in headers {
        varint(&mut record, name.len() as i64);
        record.extend_from_slice(name);
        varint(&mut record, value.len() as i64);
        record.extend_from_slice(value);
    }
    let mut records = Vec::new();
    varint(&mut records, record.len() as i64);
    records.extend_from_slice(&record);

    // Everything the CRC covers: attributes to the end.
    let mut tail = Vec::new();
    tail.extend_from_slice(&0i16.to_be_bytes()); // attributes
    tail.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
    tail.extend_from_slice(&now.to_be_bytes()); // first timestamp
    tail.extend_from_slice(&now.to_be_bytes()); // max timestamp
    tail.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    tail.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    tail.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    tail.extend_from_slice(&1i32.to_be_bytes()); // record count
    tail.extend_from_slice(&records);

    let mut batch = Vec::new();
    batch.extend_from_slice(&0i64.to_be_bytes()); // base offset
    let length = 4 + 1 + 4 + tail.len(); // leader epoch, magic, crc, rest
    batch.extend_from_slice(&(length as i32).to_be_bytes());
    batch.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend_from_slice(&crc32c(&tail).to_be_bytes());
    batch.extend_from_slice(&tail);

    let mut body = Vec::new();
    body.extend_from_slice(&0i16.to_be_bytes()); // api key: Produce
    body.extend_from_slice(&3i16.to_be_bytes()); // api version
    body.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    let client = b"eventscope-hostile-test";
    body.extend_from_slice(&(client.len() as i16).to_be_bytes());
    body.extend_from_slice(client);
    body.extend_from_slice(&(-1i16).to_be_bytes()); // transactional id: null
    body.extend_from_slice(&1i16.to_be_bytes()); // acks
    body.extend_from_slice(&10_000i32.to_be_bytes()); // timeout
    body.extend_from_slice(&1i32.to_be_bytes()); // topics
    body.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&1i32.to_be_bytes()); // partitions
    body.extend_from_slice(&0i32.to_be_bytes()); // partition 0
    body.extend_from_slice(&(batch.len() as i32).to_be_bytes());
    body.extend_from_slice(&batch);

    let mut stream = TcpStream::connect(BOOTSTRAP).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(&(body.len() as i32).to_be_bytes())
        .unwrap();
    stream.write_all(&body).unwrap();
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).expect("response size");
    let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut response).expect("response");
    // correlation id, topics count, topic name, partitions count, partition, error code
    let name_len = i16::from_be_bytes([response[8], response[9]]) as usize;
    let at = 10 + name_len + 4 + 4;
    i16::from_be_bytes([response[at], response[at + 1]])
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// Panics on this thread (a current-thread runtime: the consumer and its partition tasks run
/// here) since the hook was installed. The hook runs before unwinding, so a panic caught
/// inside the consumer still counts.
fn count_panics() -> Arc<AtomicUsize> {
    let panics = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&panics);
    let here = std::thread::current().id();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() == here {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
    panics
}

/// The probe, built by `scripts/test.sh` into the same target directory as this test.
fn abort_probe() -> PathBuf {
    // This test runs as `<target>/debug/deps/kafka_hostile-<hash>`.
    let exe = std::env::current_exe().expect("test executable path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test runs from <target>/<profile>/deps");
    let probe = target
        .join("panic-abort")
        .join("examples")
        .join(format!("kafka_abort_probe{}", std::env::consts::EXE_SUFFIX));
    let build = "cargo build --profile panic-abort --features kafka --example kafka_abort_probe";
    let built = std::fs::metadata(&probe)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: build it first with `{build}` (scripts/test.sh does)",
                probe.display()
            )
        });
    // A probe older than the code it runs would test yesterday's consumer. Compared with the
    // files it was built from, as cargo listed them in its dep-info file next to it: a change
    // to a module the probe does not compile (another feature's) makes cargo rightly build
    // nothing, and so does `cargo hack --no-dev-deps` rewriting Cargo.toml.
    let dep_info = probe.with_extension("d");
    let listed = std::fs::read_to_string(&dep_info).unwrap_or_else(|_| {
        panic!(
            "{} is missing: build the probe with `{build}`",
            dep_info.display()
        )
    });
    let sources = dep_info_sources(&listed);
    assert!(
        sources
            .iter()
            .any(|s| s.ends_with("examples/kafka_abort_probe.rs")),
        "{} does not list the probe's source",
        dep_info.display()
    );
    let newest = sources
        .iter()
        .map(|source| {
            std::fs::metadata(source)
                .and_then(|m| m.modified())
                // A source that is gone is a change too.
                .unwrap_or_else(|_| std::time::SystemTime::now())
        })
        .max()
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
    assert!(
        built >= newest,
        "{} is older than its sources: rebuild it with `{build}`",
        probe.display()
    );
    probe
}

/// The source files of a make-style dep-info line (`target: source source ...`, a space in a
/// path escaped with `\`).
fn dep_info_sources(text: &str) -> Vec<PathBuf> {
    let line = text.lines().next().unwrap_or_default();
    let (_target, sources) = line.split_once(": ").unwrap_or_default();
    let mut paths = Vec::new();
    let mut current = String::new();
    let mut chars = sources.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ' ' => {
                if !current.is_empty() {
                    paths.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        paths.push(PathBuf::from(current));
    }
    paths
}

/// The value of `field=` in the probe's report line.
fn reported(stdout: &str, field: &str) -> u64 {
    stdout
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(field)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field}= in the probe's output {stdout:?}"))
}

#[tokio::test]
async fn a_panic_abort_consumer_skips_a_header_name_that_is_not_utf8() {
    let probe = abort_probe();
    let topic = unique("hostile-abort");
    let group = unique("hostile-abort-group");
    create_topic(&topic, 1).await;
    let code = produce_by_hand(
        &topic,
        b"k",
        b"bad header name",
        &[(&[0xff, 0xfe, b'x'], b"v"), (b"message-id", b"hand-abort")],
    );
    assert_eq!(code, 0, "the broker accepted the hand-built record");

    let output = {
        let (probe, topic, group) = (probe.clone(), topic.clone(), group.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(probe)
                .args([topic.as_str(), "0", group.as_str(), "1"])
                .output()
                .expect("the probe runs")
        })
        .await
        .unwrap()
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the probe ended with {} (an abort is signal 6, exit 134); stderr:\n{stderr}",
        output.status
    );
    assert!(
        !stderr.contains("panicked"),
        "a panic was printed:\n{stderr}"
    );
    assert_eq!(reported(&stdout, "consumed"), 1, "{stdout}");
    assert_eq!(reported(&stdout, "invalid_headers"), 1, "{stdout}");
    assert_eq!(
        committed(&group, &topic, 1)[&0],
        Some(1),
        "the record was committed"
    );
}

#[tokio::test]
async fn foreign_and_malformed_messages_are_processed_as_roots() {
    let panics = count_panics();
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("hostile"))),
    );

    let topic = unique("hostile");
    let group = unique("hostile-group");
    create_topic(&topic, 1).await;

    // Offset 0: a plain client, no headers, binary key.
    let producer = producer();
    let plain = FutureRecord::to(&topic)
        .key(&[0xff_u8, 0xfe, 0x00][..])
        .payload(&b"no headers"[..]);
    producer
        .send(plain, Duration::from_secs(10))
        .await
        .expect("offset 0");
    // Offset 1: garbage trace headers, non-UTF-8 values, a header without value.
    let garbage = OwnedHeaders::new()
        .insert(Header {
            key: "traceparent",
            value: Some(&b"00-not-a-trace"[..]),
        })
        .insert(Header {
            key: "baggage",
            value: Some(&[0xc3_u8, 0x28][..]),
        })
        .insert(Header {
            key: "correlation-id",
            value: Some(&[0xff_u8][..]),
        })
        .insert(Header::<&[u8]> {
            key: "empty",
            value: None,
        });
    let record = FutureRecord::to(&topic)
        .key("text-key")
        .payload(&b"garbage headers"[..])
        .headers(garbage);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .expect("offset 1");
    // Offset 2: a tombstone.
    let tombstone = FutureRecord::<str, [u8]>::to(&topic).key("deleted-key");
    producer
        .send(tombstone, Duration::from_secs(10))
        .await
        .expect("offset 2");
    // Offset 3: a header name that is not UTF-8, next to a valid one.
    let code = produce_by_hand(
        &topic,
        b"k",
        b"bad header name",
        &[(&[0xff, 0xfe, b'x'], b"v"), (b"message-id", b"hand-1")],
    );
    assert_eq!(code, 0, "the broker accepted the hand-built record");

    let metrics = Metrics::new();
    let consumer = consumer(&config(&group));
    assign(&consumer, &topic, 1);
    let received: Arc<Mutex<Vec<KafkaMessage>>> = Arc::default();
    let (done_tx, done) = watch::channel(0usize);
    let handler = service_fn({
        let received = received.clone();
        move |m: KafkaMessage| {
            let mut received = received.lock().unwrap();
            received.push(m);
            let _ = done_tx.send(received.len());
            std::future::ready(Ok::<_, std::io::Error>(()))
        }
    });
    let shutdown = async move {
        let mut done = done;
        tokio::time::timeout(Duration::from_secs(30), done.wait_for(|n| *n >= 4))
            .await
            .expect("all four messages within 30 s")
            .expect("handler alive");
    };
    KafkaConsumer::new(consumer)
        .metrics(metrics.clone())
        .tracer_provider(&provider)
        .run(handler, shutdown)
        .await
        .expect("no error, no stopped partition");
    assert_eq!(committed(&group, &topic, 1)[&0], Some(4));

    let received = received.lock().unwrap().clone();
    let offsets: Vec<i64> = received.iter().map(KafkaMessage::offset).collect();
    assert_eq!(offsets, vec![0, 1, 2, 3]);
    assert_eq!(received[0].headers().count(), 0);
    assert_eq!(received[0].key(), Some(&[0xff, 0xfe, 0x00][..]));
    assert_eq!(received[1].header("correlation-id"), Some(&[0xff][..]));
    assert_eq!(received[1].header("empty"), Some(&b""[..]));
    assert!(received[2].is_tombstone());
    // The unreadable header name is left out, the rest of the message is intact.
    let names: Vec<&str> = received[3].headers().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["message-id"]);
    assert_eq!(received[3].payload(), &b"bad header name"[..]);

    // Every process span is a new root without links; binary keys are not attributes.
    provider.force_flush().unwrap();
    let spans: Vec<SpanData> = exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.name == format!("process {topic}"))
        .collect();
    assert_eq!(spans.len(), 4);
    for span in &spans {
        assert_eq!(
            span.parent_span_id,
            SpanId::INVALID,
            "{:?} is a root",
            span.name
        );
        assert!(span.links.links.is_empty());
        assert!(attr(span, semconv::ERROR_TYPE).is_none());
    }
    let by_offset = |o: i64| {
        spans
            .iter()
            .find(|s| attr(s, semconv::MESSAGING_KAFKA_OFFSET) == Some(&Value::I64(o)))
            .unwrap_or_else(|| panic!("span of offset {o}"))
    };
    assert!(attr(by_offset(0), semconv::MESSAGING_KAFKA_MESSAGE_KEY).is_none());
    assert_eq!(
        attr(by_offset(1), semconv::MESSAGING_KAFKA_MESSAGE_KEY),
        Some(&Value::from("text-key"))
    );
    assert_eq!(
        attr(by_offset(2), semconv::MESSAGING_KAFKA_MESSAGE_TOMBSTONE),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        attr(by_offset(3), semconv::MESSAGING_MESSAGE_ID),
        Some(&Value::from("hand-1"))
    );

    // Counted: the garbage trace context, and the message whose header name could not be read
    // (it may have been its trace context); the messages without any trace context were not.
    let text = metrics.encode();
    let invalid = samples(&text, name::TRACE_CONTEXT_INVALID, &[]);
    assert_eq!(invalid.iter().map(|(_, v)| v).sum::<f64>(), 2.0, "{text}");
    assert_eq!(
        panics.load(Ordering::SeqCst),
        0,
        "no panic, not even a caught one"
    );
}
