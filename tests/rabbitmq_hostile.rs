//! Hostile messages from producers that know nothing of eventscope never panic, never stop the
//! consumer and are never lost:
//!
//! - no headers and no properties at all: processed as a root, nothing counted (a missing trace
//!   context is not a malformed one);
//! - the trace context and ids as every AMQP field type that is not text (booleans, integers,
//!   floats, decimals, timestamps, tables, arrays, void): each message processed as a root and
//!   counted once in `eventscope_trace_context_invalid_total`. (A short string cannot be sent
//!   at all: RabbitMQ 3.10 closes the publishing connection over one in a header table);
//! - headers of every type under other names, beside a valid `traceparent`: ignored, the
//!   trace continues;
//! - values as large as an AMQP frame allows, and values that are not UTF-8: roots, counted;
//! - a 1 MB header cannot travel (a message's headers are one frame of at most `frame_max`,
//!   128 KiB): eventscope's publisher refuses it (`invalid_record`) before it is sent, and its
//!   connection lives on, where the broker would close it (`FRAME_ERROR`);
//! - a header *name* that is not UTF-8, which RabbitMQ stores and lapin cannot read (lapin
//!   fails the whole connection while parsing it): the consumer reconnects again and again,
//!   logs why, counts it, never panics, and consumes again once the message is gone.

mod rabbitmq_support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::metrics::{label, name, Metrics};
use eventscope::rabbitmq::lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueuePurgeOptions,
};
use eventscope::rabbitmq::lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString,
};
use eventscope::rabbitmq::lapin::{BasicProperties, Channel};
use eventscope::rabbitmq::{self, RabbitConsumer, RabbitMessage, RabbitRecord};
use opentelemetry::trace::SpanId;
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use opentelemetry_semantic_conventions::attribute as semconv;
use rabbitmq_support::*;
use tokio::sync::watch;
use tower::{service_fn, Layer, ServiceExt};

const KNOWN: [&str; 6] = [
    "traceparent",
    "tracestate",
    "baggage",
    "correlation-id",
    "causation-id",
    "message-id",
];

/// Every AMQP field type that is not text (and can be sent to RabbitMQ).
fn typed_values() -> Vec<(&'static str, AMQPValue)> {
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::LongString("x".into()));
    vec![
        ("boolean", AMQPValue::Boolean(true)),
        ("short-short-int", AMQPValue::ShortShortInt(-1)),
        ("short-short-uint", AMQPValue::ShortShortUInt(1)),
        ("short-int", AMQPValue::ShortInt(-2)),
        ("short-uint", AMQPValue::ShortUInt(2)),
        ("long-int", AMQPValue::LongInt(-3)),
        ("long-uint", AMQPValue::LongUInt(3)),
        ("long-long-int", AMQPValue::LongLongInt(-4)),
        ("float", AMQPValue::Float(1.5)),
        ("double", AMQPValue::Double(2.5)),
        (
            "decimal",
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 314,
            }),
        ),
        (
            "array",
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongInt(1)])),
        ),
        ("timestamp", AMQPValue::Timestamp(1_700_000_000)),
        ("table", AMQPValue::FieldTable(nested)),
        ("void", AMQPValue::Void),
    ]
}

/// Publishes `payload` with `headers` and nothing else, as a producer without eventscope does.
async fn publish_raw(channel: &Channel, queue: &str, payload: &[u8], headers: Option<FieldTable>) {
    let properties = match headers {
        Some(table) => BasicProperties::default().with_headers(table),
        None => BasicProperties::default(),
    };
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            payload,
            properties,
        )
        .await
        .expect("published");
    assert!(confirm.await.expect("confirmed").is_ack());
}

fn table(entries: impl IntoIterator<Item = (String, AMQPValue)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in entries {
        table.insert(name.into(), value);
    }
    table
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_headers_are_clean_roots_counted_and_never_a_panic() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let connection = connect("eventscope-hostile").await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let queue = unique("hostile");
    declare_queue(&channel, &queue).await;

    // Which messages must come out as roots, and how many are malformed.
    let mut roots = Vec::new();
    let mut malformed = 0;
    publish_raw(&channel, &queue, b"bare", None).await;
    roots.push("bare".to_owned());
    for (kind, value) in typed_values() {
        let headers = table(KNOWN.iter().map(|name| (name.to_string(), value.clone())));
        let payload = format!("typed-{kind}");
        publish_raw(&channel, &queue, payload.as_bytes(), Some(headers)).await;
        roots.push(payload);
        malformed += 1;
    }
    // Every type under other names, beside a valid trace context: not malformed, a child.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut others = table(
        typed_values()
            .into_iter()
            .map(|(kind, value)| (format!("x-{kind}"), value)),
    );
    others.insert("traceparent".into(), AMQPValue::LongString(parent.into()));
    publish_raw(&channel, &queue, b"typed-elsewhere", Some(others)).await;
    // As large as a frame allows: six values of 18 KB.
    let big = table(KNOWN.iter().map(|name| {
        (
            name.to_string(),
            AMQPValue::LongString(vec![b'a'; 18_000].into()),
        )
    }));
    publish_raw(&channel, &queue, b"large", Some(big)).await;
    roots.push("large".to_owned());
    malformed += 1;
    // Not UTF-8, as long strings and as byte arrays (Python's `bytes`).
    let bytes = vec![0xff, 0xfe, 0x00, 0xc3];
    let mut not_utf8 = table(KNOWN.iter().take(3).map(|name| {
        (
            name.to_string(),
            AMQPValue::LongString(LongString::from(bytes.clone())),
        )
    }));
    for name in &KNOWN[3..] {
        not_utf8.insert(
            (*name).into(),
            AMQPValue::ByteArray(ByteArray::from(bytes.clone())),
        );
    }
    publish_raw(&channel, &queue, b"not-utf8", Some(not_utf8)).await;
    roots.push("not-utf8".to_owned());
    malformed += 1;
    // A 1 MB payload with a 1 MB header: eventscope's publisher refuses the header, and its
    // connection lives on.
    let metrics = Metrics::new();
    let publisher = rabbitmq::publish_layer(metrics.clone()).layer(publisher(&connection).await);
    let refused = publisher
        .clone()
        .oneshot(
            RabbitRecord::to_queue(&queue, vec![b'p'; 1 << 20])
                .header("x-huge", "h".repeat(1 << 20)),
        )
        .await
        .expect_err("a 1 MB header does not fit a frame");
    assert_eq!(refused.error_type(), "invalid_record");
    publisher
        .clone()
        .oneshot(RabbitRecord::to_queue(&queue, vec![b'p'; 1 << 20]).header("x-note", "big"))
        .await
        .expect("the connection lives on: a 1 MB payload goes through");
    let total = roots.len() + 2;

    // Consume everything.
    let seen: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
    let handler = service_fn({
        let seen = seen.clone();
        move |m: RabbitMessage| {
            let payload = if m.payload().len() > 1000 {
                "big-payload".to_owned()
            } else {
                String::from_utf8_lossy(m.payload()).into_owned()
            };
            seen.lock().unwrap().insert(m.delivery_tag(), payload);
            async { Ok::<_, std::io::Error>(()) }
        }
    });
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(
        RabbitConsumer::new(URI, &queue)
            .expect("consumer")
            .metrics(metrics.clone())
            .tracer_provider(&provider)
            .run(handler, async move {
                let mut stopped = stopped;
                let _ = stopped.wait_for(|s| *s).await;
            }),
    );
    eventually("every message processed", Duration::from_secs(30), || {
        seen.lock().unwrap().len() == total
    })
    .await;
    eventually("the queue to be empty", Duration::from_secs(30), || {
        queue_counts(&queue) == Some((0, 0))
    })
    .await;
    stop.send(true).unwrap();
    running.await.unwrap().expect("a clean run");

    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");
    let seen = seen.lock().unwrap().clone();
    let process = |payload: &str| {
        let tag = seen
            .iter()
            .find(|(_, p)| p.as_str() == payload)
            .map(|(tag, _)| *tag as i64)
            .unwrap_or_else(|| panic!("{payload} was not processed"));
        spans
            .iter()
            .find(|s| {
                s.attributes.iter().any(|kv| {
                    kv.key.as_str() == semconv::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG
                        && kv.value == Value::I64(tag)
                })
            })
            .unwrap_or_else(|| panic!("no process span for {payload}"))
            .clone()
    };
    for payload in &roots {
        let span = process(payload);
        assert_eq!(span.parent_span_id, SpanId::INVALID, "{payload} is a root");
        assert!(span.links.links.is_empty(), "{payload} links to nothing");
        let id = span
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == semconv::MESSAGING_MESSAGE_ID)
            .map(|kv| kv.value.as_str().into_owned())
            .expect("a message id");
        assert!(
            id.len() <= 256 && id.is_ascii(),
            "{payload}: a fresh id, not the junk"
        );
    }
    let child = process("typed-elsewhere");
    assert_eq!(
        child.parent_span_id.to_string(),
        "00f067aa0ba902b7",
        "other headers of any type leave the trace context alone"
    );
    let counted = samples(
        &metrics.encode(),
        name::TRACE_CONTEXT_INVALID,
        &[(label::SYSTEM, "rabbitmq")],
    )
    .iter()
    .map(|(_, v)| *v)
    .sum::<f64>();
    assert_eq!(
        counted, malformed as f64,
        "each malformed message counted once"
    );

    delete_queue(&channel, &queue).await;
    let _ = connection.close(200, "OK".into()).await;
}

/// A message whose header name is not UTF-8, published over a raw AMQP 0-9-1 connection:
/// lapin cannot express one, and RabbitMQ stores it as it is.
fn publish_with_unreadable_header_name(queue: &str) {
    fn short(bytes: &[u8]) -> Vec<u8> {
        [&[bytes.len() as u8][..], bytes].concat()
    }
    fn long(bytes: &[u8]) -> Vec<u8> {
        [&(bytes.len() as u32).to_be_bytes()[..], bytes].concat()
    }
    fn method(class: u16, id: u16, arguments: &[u8]) -> Vec<u8> {
        [&class.to_be_bytes()[..], &id.to_be_bytes(), arguments].concat()
    }
    fn send(stream: &mut TcpStream, kind: u8, channel: u16, payload: &[u8]) {
        let mut frame = vec![kind];
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(0xce);
        stream.write_all(&frame).expect("write");
    }
    fn receive(stream: &mut TcpStream) -> Vec<u8> {
        let mut header = [0u8; 7];
        stream.read_exact(&mut header).expect("frame header");
        let size = u32::from_be_bytes(header[3..7].try_into().unwrap()) as usize;
        let mut payload = vec![0u8; size + 1];
        stream.read_exact(&mut payload).expect("frame");
        payload.truncate(size);
        payload
    }
    let mut stream = TcpStream::connect(ADDRESS).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    receive(&mut stream); // connection.start
    let start_ok = [
        long(b""),
        short(b"PLAIN"),
        long(b"\0guest\0guest"),
        short(b"en_US"),
    ]
    .concat();
    send(&mut stream, 1, 0, &method(10, 11, &start_ok));
    let tune = receive(&mut stream);
    let tune_ok = [&tune[4..10], &[0, 0]].concat(); // channel_max, frame_max; no heartbeat
    send(&mut stream, 1, 0, &method(10, 31, &tune_ok));
    send(
        &mut stream,
        1,
        0,
        &method(10, 40, &[short(b"/"), short(b""), vec![0]].concat()),
    );
    receive(&mut stream); // connection.open-ok
    send(&mut stream, 1, 1, &method(20, 10, &short(b"")));
    receive(&mut stream); // channel.open-ok
    let publish = [&[0u8, 0][..], &short(b""), &short(queue.as_bytes()), &[0]].concat();
    send(&mut stream, 1, 1, &method(60, 40, &publish));
    let body = b"poison";
    let headers = [&short(b"bad\xff\xfename")[..], b"S", &long(b"v")].concat();
    let content_header = [
        &60u16.to_be_bytes()[..],
        &0u16.to_be_bytes(),
        &(body.len() as u64).to_be_bytes(),
        &0x2000u16.to_be_bytes(), // the headers property only
        &long(&headers),
    ]
    .concat();
    send(&mut stream, 2, 1, &content_header);
    send(&mut stream, 3, 1, body);
    let close = [&200u16.to_be_bytes()[..], &short(b"bye"), &[0, 0, 0, 0]].concat();
    send(&mut stream, 1, 0, &method(10, 50, &close));
    receive(&mut stream); // connection.close-ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_name_lapin_cannot_read_never_stops_the_consumer_for_good() {
    let connection = connect("eventscope-hostile-name").await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let queue = unique("hostile-name");
    declare_queue(&channel, &queue).await;
    tokio::task::spawn_blocking({
        let queue = queue.clone();
        move || publish_with_unreadable_header_name(&queue)
    })
    .await
    .unwrap();
    assert_eq!(queue_counts(&queue), Some((1, 0)), "RabbitMQ stored it");

    let metrics = Metrics::new();
    let processed: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = service_fn({
        let processed = processed.clone();
        move |m: RabbitMessage| {
            processed
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(m.payload()).into_owned());
            async { Ok::<_, std::io::Error>(()) }
        }
    });
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(
        RabbitConsumer::new(URI, &queue)
            .expect("consumer")
            .metrics(metrics.clone())
            .max_reconnect_delay(Duration::from_millis(200))
            .run(handler, async move {
                let mut stopped = stopped;
                let _ = stopped.wait_for(|s| *s).await;
            }),
    );
    let reconnects = || reconnects(&metrics, &queue).unwrap_or(0.0);
    eventually(
        "the consumer to keep reconnecting",
        Duration::from_secs(30),
        || reconnects() >= 2.0,
    )
    .await;
    assert!(!running.is_finished(), "no panic, no end");
    assert!(processed.lock().unwrap().is_empty());

    // The message is moved away (here: purged, while it is back in the queue between two
    // deliveries); the consumer goes on by itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while channel
        .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
        .await
        .expect("purge")
        == 0
    {
        assert!(tokio::time::Instant::now() < deadline, "never purged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    publish_raw(&channel, &queue, b"after", None).await;
    eventually(
        "the next message processed",
        Duration::from_secs(30),
        || processed.lock().unwrap().contains(&"after".to_owned()),
    )
    .await;
    stop.send(true).unwrap();
    running.await.unwrap().expect("a clean run");
    delete_queue(&channel, &queue).await;
    let _ = connection.close(200, "OK".into()).await;
}
