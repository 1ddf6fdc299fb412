//! Hostile headers from clients other than async-nats (written by hand, `HPUB`): no headers,
//! `Traceparent` in Go's spelling, 1 MB values (core NATS; JetStream refuses header blocks over
//! 64 KiB, so there the values are 60 kB), and a value that is not UTF-8. What the client
//! delivers is processed without a panic, as a continued trace or a clean root as SPEC §2 says,
//! an unusable trace context or id counted once; the message the client itself refuses (it
//! drops its connection on it) cannot be seen, but neither consumer gets stuck on it: the core
//! subscriber and the JetStream consumer (bounded by `max_deliver`) go on with the messages
//! after it, and the reconnects are counted.

mod nats_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::metrics::{label, name};
use eventscope::nats::{attribute, JetStreamConsumer, JetStreamMessage, NatsConsumer, NatsMessage};
use eventscope::{IncomingMessage, Metrics};
use nats_support::{eventually, raw_hpub, sample, TestStream};
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tower::service_fn;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

fn block(headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut block = b"NATS/1.0\r\n".to_vec();
    for (name, value) in headers {
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value);
        block.extend_from_slice(b"\r\n");
    }
    block.extend_from_slice(b"\r\n");
    block
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_headers_on_jetstream() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let client = nats_support::client().await;
    let js = eventscope::nats::async_nats::jetstream::new(client.clone());
    let stream = TestStream::new(&js, "hostile").await;
    let group = nats_support::unique("hostile");
    let pull = stream.consumer(&group, Duration::from_secs(1), 3).await;
    let server = nats_support::url();
    let go_parent = format!("00-{TRACE}-{SPAN}-01");
    // JetStream stores no header block over 64 KiB.
    let huge = vec![b'a'; 60_000];

    // seq 1: no headers at all.
    client
        .publish(stream.subject.clone(), "plain".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    // seq 2: Go's spelling.
    raw_hpub(
        &server,
        &stream.subject,
        &block(&[("Traceparent", go_parent.as_bytes())]),
        b"go",
    )
    .await;
    // seq 3: a 60 kB traceparent; seq 4: a 60 kB correlation-id.
    raw_hpub(
        &server,
        &stream.subject,
        &block(&[("traceparent", &huge)]),
        b"huge-trace",
    )
    .await;
    raw_hpub(
        &server,
        &stream.subject,
        &block(&[("correlation-id", &huge)]),
        b"huge-id",
    )
    .await;
    // seq 5: a value that is not UTF-8: the client drops its connection on it.
    raw_hpub(
        &server,
        &stream.subject,
        &block(&[("x-bin", b"\xff\xfe\x00")]),
        b"poison",
    )
    .await;
    // seq 6: a good message behind it.
    raw_hpub(
        &server,
        &stream.subject,
        &block(&[("traceparent", go_parent.as_bytes())]),
        b"after",
    )
    .await;

    let metrics = Metrics::new();
    let seen: Arc<Mutex<Vec<JetStreamMessage>>> = Arc::default();
    let handler = service_fn({
        let seen = seen.clone();
        move |m: JetStreamMessage| {
            seen.lock().unwrap().push(m);
            async { Ok::<_, std::io::Error>(()) }
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(
        JetStreamConsumer::new(js.clone(), pull)
            .unwrap()
            .metrics(metrics.clone())
            .tracer_provider(&provider)
            .max_concurrency(2)
            // One message per pull: the client loses whatever it read with the unreadable one,
            // and a neighbour delivered with it every time would use up its deliveries too.
            .pull_batch(1)
            .run(handler, async move {
                let _ = stop_rx.await;
            }),
    );
    let payloads = |seen: &Mutex<Vec<JetStreamMessage>>| {
        let mut p: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|m| String::from_utf8_lossy(m.payload()).into_owned())
            .collect();
        p.sort();
        p.dedup();
        p
    };
    // max_deliver 3 × ack_wait 1 s bounds how long the unreadable message can interfere.
    eventually(
        "every readable message processed",
        Duration::from_secs(30),
        || payloads(&seen) == ["after", "go", "huge-id", "huge-trace", "plain"],
    )
    .await;
    eventually("the reconnects counted", Duration::from_secs(5), || {
        sample(
            &metrics.encode(),
            name::RECONNECTS,
            &[(label::GROUP, group.as_str())],
        )
        .is_some_and(|n| n >= 1.0)
    })
    .await;
    let _ = stop_tx.send(());
    running
        .await
        .unwrap()
        .expect("no failure stops the consumer");

    let seen = seen.lock().unwrap().clone();
    let by = |payload: &str| {
        seen.iter()
            .find(|m| m.payload() == payload.as_bytes())
            .unwrap()
            .clone()
    };
    assert!(by("plain").headers().is_none());
    assert_eq!(
        by("plain").message_id().as_deref(),
        Some(format!("{}/1", stream.name).as_str())
    );
    assert_eq!(by("go").header("traceparent"), Some(go_parent.as_str()));
    assert_eq!(
        by("huge-trace").header("traceparent").map(str::len),
        Some(60_000)
    );

    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let process = |seq: i64| {
        spans
            .iter()
            .find(|s| {
                s.name.starts_with("process ")
                    && s.attributes.iter().any(|kv| {
                        kv.key.as_str() == attribute::STREAM_SEQUENCE && kv.value == Value::I64(seq)
                    })
            })
            .unwrap_or_else(|| panic!("a process span of seq {seq}"))
    };
    let parent = SpanId::from_hex(SPAN).unwrap();
    let trace = TraceId::from_hex(TRACE).unwrap();
    for seq in [2, 6] {
        assert_eq!(
            process(seq).parent_span_id,
            parent,
            "seq {seq} continues Go's trace"
        );
        assert_eq!(process(seq).span_context.trace_id(), trace);
    }
    for seq in [1, 3, 4] {
        assert_eq!(
            process(seq).parent_span_id,
            SpanId::INVALID,
            "seq {seq} is a root"
        );
    }
    assert_ne!(process(3).span_context.trace_id(), trace);
    // Counted: the oversized traceparent and correlation-id; a message without any trace
    // context is not malformed.
    assert_eq!(
        sample(
            &metrics.encode(),
            name::TRACE_CONTEXT_INVALID,
            &[(label::SYSTEM, "nats")]
        ),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_subscriber_reads_1_mb_headers_and_goes_on_after_a_header_the_client_refuses() {
    let client = nats_support::client().await;
    let subject = format!("hostile.core.{}", nats_support::unique("s"));
    let metrics = Metrics::new();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = service_fn({
        let seen = seen.clone();
        move |m: NatsMessage| {
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(m.payload()).into_owned());
            async { Ok::<_, std::io::Error>(()) }
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(
        NatsConsumer::subscribe(client.clone(), subject.clone())
            .metrics(metrics.clone())
            .run(handler, async move {
                let _ = stop_rx.await;
            }),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server = nats_support::url();
    // 1 MB values reach a core subscriber: read, not propagated, counted.
    let huge = vec![b'a'; 1_000_000];
    raw_hpub(
        &server,
        &subject,
        &block(&[("traceparent", &huge)]),
        b"huge-trace",
    )
    .await;
    raw_hpub(
        &server,
        &subject,
        &block(&[("correlation-id", &huge)]),
        b"huge-id",
    )
    .await;
    eventually(
        "the 1 MB headers processed",
        Duration::from_secs(10),
        || seen.lock().unwrap().len() == 2,
    )
    .await;
    assert_eq!(
        sample(
            &metrics.encode(),
            name::TRACE_CONTEXT_INVALID,
            &[(label::SYSTEM, "nats")]
        ),
        Some(2.0)
    );
    raw_hpub(
        &server,
        &subject,
        &block(&[("Traceparent", b"\xc3\x28")]),
        b"poison",
    )
    .await;
    // The client reconnects and subscribes again by itself; until then messages are lost.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen.lock().unwrap().iter().any(|p| p == "after") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscriber never got going again"
        );
        raw_hpub(
            &server,
            &subject,
            &block(&[("Traceparent", b"00-x")]),
            b"after",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually("the reconnect counted", Duration::from_secs(5), || {
        sample(
            &metrics.encode(),
            name::RECONNECTS,
            &[(label::SYSTEM, "nats")],
        )
        .is_some_and(|n| n >= 1.0)
    })
    .await;
    let _ = stop_tx.send(());
    running.await.unwrap().expect("clean run");
    assert!(!seen.lock().unwrap().iter().any(|p| p == "poison"));
}
