//! No loss on JetStream when a consumer's connection drops while messages are in flight: the
//! connection goes through a proxy that is cut while four handlers hold a message each; a
//! second consumer of the durable then processes everything, and the only messages both saw
//! are the ones the first held when it lost its connection (none it had acked comes again).

mod nats_support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::nats::async_nats;
use eventscope::nats::{JetStreamConsumer, JetStreamMessage, JetStreamPublisher, NatsRecord};
use eventscope::IncomingMessage;
use futures_util::future::join_all;
use nats_support::{eventually, Proxy, TestStream};
use tower::{service_fn, ServiceExt};

const MESSAGES: usize = 200;
const ACKED_FIRST: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_loses_nothing_and_redelivers_only_what_was_in_flight() {
    let js = nats_support::js().await;
    let stream = TestStream::new(&js, "no_loss").await;
    let group = nats_support::unique("no_loss");
    let publisher = JetStreamPublisher::new(js.clone());
    join_all((0..MESSAGES).map(|i| {
        publisher
            .clone()
            .oneshot(NatsRecord::new(stream.subject.clone(), i.to_string()))
    }))
    .await
    .into_iter()
    .for_each(|r| {
        r.expect("published");
    });
    // Created after the publishes, so no delivery races the first consumer's start.
    let pull = stream.consumer(&group, Duration::from_secs(2), 20).await;

    // The first consumer, through a proxy: it acks the first messages, then its handlers hang.
    let proxy = Proxy::start(nats_support::url()).await;
    let first_client = async_nats::ConnectOptions::new()
        .connect(proxy.url())
        .await
        .expect("connect through the proxy");
    let first_js = async_nats::jetstream::new(first_client);
    let first_pull = first_js
        .get_stream(&stream.name)
        .await
        .unwrap()
        .get_consumer(&group)
        .await
        .unwrap();
    let stop_first = Arc::new(tokio::sync::Notify::new());
    let done: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let holding: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let handler = service_fn({
        let (done, holding) = (done.clone(), holding.clone());
        move |m: JetStreamMessage| {
            let payload = String::from_utf8_lossy(m.payload()).into_owned();
            let (done, holding) = (done.clone(), holding.clone());
            async move {
                if done.lock().unwrap().len() < ACKED_FIRST {
                    done.lock().unwrap().insert(payload);
                    return Ok::<_, std::io::Error>(());
                }
                holding.lock().unwrap().insert(payload);
                std::future::pending().await
            }
        }
    });
    let first = tokio::spawn(
        JetStreamConsumer::new(first_js, first_pull)
            .unwrap()
            .max_concurrency(4)
            .drain_deadline(Duration::from_millis(100))
            .run(handler, {
                let stop = stop_first.clone();
                async move { stop.notified().await }
            }),
    );
    eventually(
        "four handlers holding a message",
        Duration::from_secs(30),
        || holding.lock().unwrap().len() == 4,
    )
    .await;
    // Every ack reached the server before the cut: what the first consumer finished is done.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stream
        .stream
        .consumer_info(&group)
        .await
        .unwrap()
        .ack_floor
        .stream_sequence
        < ACKED_FIRST as u64
    {
        assert!(tokio::time::Instant::now() < deadline, "acks never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut();

    // A second consumer of the durable, connected directly.
    let second: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let handler = service_fn({
        let second = second.clone();
        move |m: JetStreamMessage| {
            let payload = String::from_utf8_lossy(m.payload()).into_owned();
            second
                .lock()
                .unwrap()
                .push((payload, m.delivery_attempt().unwrap_or(0)));
            async { Ok::<_, std::io::Error>(()) }
        }
    });
    let finished = {
        let (done, second) = (done.clone(), second.clone());
        move || {
            let seen: BTreeSet<String> =
                second.lock().unwrap().iter().map(|s| s.0.clone()).collect();
            done.lock().unwrap().union(&seen).count() == MESSAGES
        }
    };
    let stop = {
        let finished = finished.clone();
        async move { eventually("every message processed", Duration::from_secs(60), finished).await }
    };
    JetStreamConsumer::new(js.clone(), pull)
        .unwrap()
        .run(handler, stop)
        .await
        .expect("second consumer ran");
    stop_first.notify_one();
    let _ = first.await;

    let second = second.lock().unwrap().clone();
    let acked = done.lock().unwrap().clone();
    let held = holding.lock().unwrap().clone();
    let seen: BTreeSet<String> = second.iter().map(|s| s.0.clone()).collect();
    assert!(
        acked.is_disjoint(&seen),
        "nothing the first consumer acked came again"
    );
    assert!(held.is_subset(&seen), "what it held was delivered again");
    let redelivered: BTreeSet<String> = second
        .iter()
        .filter(|(_, attempt)| *attempt > 1)
        .map(|s| s.0.clone())
        .collect();
    assert!(
        held.is_subset(&redelivered),
        "{held:?} redelivered: {redelivered:?}"
    );
    // In flight: the four held, and what was pulled and not handed out yet (a pull asks for
    // 2 × max_concurrency = 8 and asks again when half is left: at most 12 wait).
    assert!(
        redelivered.len() <= 4 + 12,
        "only what was in flight comes again: {redelivered:?}"
    );
    assert_eq!(
        acked.len() + seen.len(),
        MESSAGES,
        "each processed once, bar the held ones"
    );
}
