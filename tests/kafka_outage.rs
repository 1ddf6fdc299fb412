//! A broker outage must not blind the alerts: while a Kafka consumer cannot reach its broker,
//! `messaging_consumer_connected` reads 0 for the whole outage (the `ConsumerDisconnected`
//! alert's series), and the partitions' lag series keep their last value for as long as the
//! partitions are assigned (until librdkafka declares the assignment lost, after the session
//! timeout); when the broker is back the consumer is connected again, and shutdown ends.
//!
//! The broker is a private tansu on a port of the test's own, stopped and started again; the
//! shared broker is never touched.

mod kafka_support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use eventscope::kafka::{consumer_config, producer_config, KafkaConsumer, KafkaMessage};
use eventscope::metrics::{label, name, Metrics};
use kafka_support::{create_topic_on, eventually, samples, unique};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;
use tower::service_fn;

struct PrivateBroker {
    port: u16,
    state: String,
}

impl PrivateBroker {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let broker = Self {
            port,
            state: format!("{}/target/kafka-outage-{port}", env!("CARGO_MANIFEST_DIR")),
        };
        broker.script("start");
        broker
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

fn gauge(metrics: &Metrics, family: &str, with: &[(&str, &str)]) -> Vec<f64> {
    samples(&metrics.encode(), family, with)
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_shows_as_disconnected_and_keeps_the_lag_series() {
    let broker = PrivateBroker::start();
    let topic = unique("outage");
    let group = unique("outage-group");
    create_topic_on(&broker.bootstrap(), &topic, 1).await;
    let producer: FutureProducer = producer_config(&broker.bootstrap())
        .create()
        .expect("producer");
    for i in 0..20 {
        producer
            .send(
                FutureRecord::<(), [u8]>::to(&topic)
                    .payload(format!("{i}").as_bytes())
                    .partition(0),
                Duration::from_secs(10),
            )
            .await
            .expect("publish");
    }

    // A consumer that handles one message and then holds the next: lag stays above 0.
    let (gate_tx, gate) = watch::channel(false);
    let handled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handler = {
        let handled = Arc::clone(&handled);
        service_fn(move |_m: KafkaMessage| {
            let (mut gate, handled) = (gate.clone(), Arc::clone(&handled));
            async move {
                if handled.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
                    let _ = gate.wait_for(|open| *open).await;
                }
                Ok::<_, std::io::Error>(())
            }
        })
    };
    let metrics = Metrics::new();
    let mut config = consumer_config(&broker.bootstrap(), &group);
    config
        .set("statistics.interval.ms", "200")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("reconnect.backoff.max.ms", "500");
    let consumer = KafkaConsumer::from_config(&config)
        .expect("consumer")
        .subscribe(&[&topic])
        .expect("subscribe")
        .metrics(metrics.clone())
        .commit_interval(Duration::from_millis(100))
        .drain_deadline(Duration::from_secs(2));
    let (stop_tx, mut stop) = watch::channel(false);
    let running = tokio::spawn(consumer.run(handler, async move {
        let _ = stop.wait_for(|s| *s).await;
    }));

    let group_label = [(label::GROUP, group.as_str())];
    let lag_label = [
        (label::GROUP, group.as_str()),
        (label::DESTINATION, topic.as_str()),
    ];
    eventually("connected with lag", Duration::from_secs(60), || {
        gauge(&metrics, name::CONNECTED, &group_label) == [1.0]
            && gauge(&metrics, name::LAG_MESSAGES, &lag_label)
                .first()
                .is_some_and(|lag| *lag > 0.0)
    })
    .await;

    // The outage: longer than the session timeout.
    broker.script("stop");
    eventually("disconnected", Duration::from_secs(30), || {
        gauge(&metrics, name::CONNECTED, &group_label) == [0.0]
    })
    .await;
    // Within the session timeout (6 s) the partition is still assigned: its lag stays.
    let started = tokio::time::Instant::now();
    let outage_end = started + Duration::from_secs(11);
    while tokio::time::Instant::now() < outage_end {
        assert_eq!(
            gauge(&metrics, name::CONNECTED, &group_label),
            [0.0],
            "the consumer shows disconnected for the whole outage"
        );
        if started.elapsed() < Duration::from_secs(4) {
            let lag = gauge(&metrics, name::LAG_MESSAGES, &lag_label);
            assert!(
                lag.first().is_some_and(|lag| *lag > 0.0),
                "the last lag stays while the partition is assigned: {lag:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Back: connected again by itself.
    broker.script("start");
    eventually("connected again", Duration::from_secs(60), || {
        gauge(&metrics, name::CONNECTED, &group_label) == [1.0]
    })
    .await;
    gate_tx.send_replace(true);
    stop_tx.send_replace(true);
    tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("shutdown ends")
        .expect("consumer task")
        .expect("no failure");
    assert!(
        gauge(&metrics, name::CONNECTED, &group_label).is_empty(),
        "a consumer that returned reports no connection"
    );
}
