//! Dead letters and their replay, end to end on the embedded broker (SPEC §8): messages that
//! fail for good are dead-lettered; a replay sends every record back to its original
//! destination as a new message caused by the record, in the same flow, linked to the
//! dead-lettered message; a replay stopped halfway and run again replays nothing twice; the
//! consumer then processes each replayed message.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::classify::{Classifier, Decision};
use eventscope::header;
use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
use eventscope::metrics::Metrics;
use eventscope::replay::{DeadLetter, Replay, Replayed};
use eventscope::scope::MessageScope;
use eventscope::testing::{run_until_settled, SpanCapture};
use eventscope::{BoxError, PublishLayer};
use tower::{service_fn, Layer, ServiceExt};

#[derive(Debug)]
struct Declined;
impl std::fmt::Display for Declined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("card declined")
    }
}
impl std::error::Error for Declined {}

const BAD: usize = 5;

/// A message as a handler saw it: payload and text headers.
type Seen = (String, BTreeMap<String, String>);

/// Everything a message carried: payload and text headers.
fn seen(message: &MemoryMessage) -> Seen {
    let headers = message
        .headers()
        .iter()
        .map(|(k, v)| (k.to_owned(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    (
        String::from_utf8_lossy(message.payload()).into_owned(),
        headers,
    )
}

/// Replays `orders.dlq` with `group` until `count` records are replayed and settled, then shuts
/// the replay down. A send beyond `count` never completes: a replay stopped halfway has a call
/// running when it is shut down, which is cancelled, so its record stays unsettled.
async fn replay(
    broker: &MemoryBroker,
    group: &str,
    layer: PublishLayer,
    count: usize,
    sent: &Arc<Mutex<Vec<DeadLetter>>>,
) {
    let allowed = Arc::new(AtomicUsize::new(count));
    let publisher = {
        let broker = broker.clone();
        service_fn(move |record: MemoryRecord| {
            let (broker, allowed) = (broker.clone(), Arc::clone(&allowed));
            async move {
                let go = allowed
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if !go {
                    std::future::pending::<()>().await;
                }
                broker.publisher().oneshot(record).await
            }
        })
    };
    let replay = {
        let sent = Arc::clone(sent);
        Replay::with_layer(layer, publisher).on_progress(move |event| {
            if let Replayed::Sent(record) = event {
                sent.lock().unwrap().push(record.clone());
            }
        })
    };
    let consumer = broker
        .consumer(group)
        .subscribe(["orders.dlq"])
        .max_concurrency(1)
        .drain_deadline(Duration::from_millis(100));
    run_until_settled(consumer, replay, count)
        .await
        .expect("the replay runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_replayed_once_each_and_processed_again() {
    let capture = SpanCapture::new();
    let broker = MemoryBroker::new();
    broker.create_topic("orders", 1).unwrap();
    let metrics = Metrics::new();
    let publisher = PublishLayer::new(metrics.clone())
        .tracer_provider(capture.provider())
        .layer(broker.publisher());
    for i in 0..BAD {
        publisher
            .clone()
            .oneshot(MemoryRecord::new("orders", format!("bad-{i}").into_bytes()))
            .await
            .unwrap();
        publisher
            .clone()
            .oneshot(MemoryRecord::new(
                "orders",
                format!("good-{i}").into_bytes(),
            ))
            .await
            .unwrap();
    }

    // The payment service declines the bad ones: dead-lettered at once.
    let failed: Arc<Mutex<BTreeMap<String, MessageScope>>> = Arc::default();
    let handler = {
        let failed = Arc::clone(&failed);
        service_fn(move |m: MemoryMessage| {
            let payload = String::from_utf8_lossy(m.payload()).into_owned();
            let bad = payload.starts_with("bad-");
            if bad {
                let scope = MessageScope::current().expect("inside the process layer");
                failed.lock().unwrap().insert(payload, scope);
            }
            async move {
                if bad {
                    return Err(BoxError::from(Declined));
                }
                Ok(())
            }
        })
    };
    let consumer = broker
        .consumer("payments")
        .subscribe(["orders"])
        .metrics(metrics.clone())
        .tracer_provider(capture.provider())
        .classify_errors(
            Classifier::new()
                .on::<Declined>("Declined")
                .decision("Declined", Decision::DeadLetter),
        )
        .dead_letter(broker.publisher());
    run_until_settled(consumer, handler, 2 * BAD).await.unwrap();
    assert_eq!(failed.lock().unwrap().len(), BAD);

    // A replay stopped after two, then run again with the same group: five in all, none twice.
    let sent: Arc<Mutex<Vec<DeadLetter>>> = Arc::default();
    let layer = PublishLayer::new(metrics.clone()).tracer_provider(capture.provider());
    replay(&broker, "replay", layer.clone(), 2, &sent).await;
    let first_run = sent.lock().unwrap().len();
    assert_eq!(first_run, 2, "stopped halfway");
    replay(&broker, "replay", layer, BAD - first_run, &sent).await;
    let ids: Vec<String> = sent.lock().unwrap().iter().map(|d| d.id.clone()).collect();
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), BAD, "every record replayed: {ids:?}");
    assert_eq!(distinct.len(), BAD, "none twice: {ids:?}");

    // The payment service, running again, now processes each replayed message.
    let again: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let handler = {
        let again = Arc::clone(&again);
        service_fn(move |m: MemoryMessage| {
            again.lock().unwrap().push(seen(&m));
            async { Ok::<_, BoxError>(()) }
        })
    };
    let consumer = broker
        .consumer("payments")
        .subscribe(["orders"])
        .metrics(metrics.clone())
        .tracer_provider(capture.provider());
    run_until_settled(consumer, handler, BAD).await.unwrap();
    let again = again.lock().unwrap().clone();
    let failed = failed.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    let payloads: BTreeSet<&str> = again.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        payloads,
        (0..BAD)
            .map(|i| format!("bad-{i}"))
            .collect::<BTreeSet<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
        "each replayed message processed once"
    );
    for (payload, headers) in &again {
        let original = &failed[payload];
        let record = sent
            .iter()
            .find(|d| Some(d.id.as_str()) == headers.get(header::CAUSATION_ID).map(String::as_str))
            .expect("caused by one of the dead-letter records");
        assert_eq!(record.original_destination, "orders");
        assert_eq!(record.error_type, "Declined");
        assert_eq!(
            headers.get(header::CORRELATION_ID).map(String::as_str),
            Some(original.correlation_id()),
            "the flow's correlation id is kept"
        );
        let id = headers.get(header::MESSAGE_ID).expect("an id");
        assert_ne!(
            Some(id.as_str()),
            original.message_id(),
            "not the original's id"
        );
        assert_ne!(id, &record.id, "not the record's id");
        assert!(
            headers.keys().all(|k| !k.starts_with(header::DLQ_PREFIX)),
            "no dead-letter headers: {headers:?}"
        );
    }

    // Each replay send links to the dead-lettered message (the record's `send orders.dlq`).
    let spans = capture.spans();
    let dead_letter_sends = spans.named("send orders.dlq");
    assert_eq!(dead_letter_sends.len(), BAD, "{spans}");
    let replay_sends = spans.named("send orders");
    for send in dead_letter_sends {
        assert!(
            replay_sends.iter().any(|replay| replay.links_to(&send)),
            "no replay send links to {send:?}; captured:\n{spans}"
        );
    }
}
