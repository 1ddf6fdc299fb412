//! A broker restart, on a private node of this test's own (`scripts/rabbitmq-node.sh`; the
//! machine's shared RabbitMQ is never touched): persistent messages are published with
//! confirms into a durable queue and consumed while the node is killed (SIGKILL) and started
//! again, and then frozen (SIGSTOP, a broker that stops answering) and thawed.
//!
//! What is asserted:
//! - publishing fails while the broker is away, each publish with an `error.type` the caller
//!   can act on (`timeout`, `connection`, `channel_closed`) and within the publisher's timeout:
//!   nothing hangs; a publisher that owns its connection (`RabbitPublisher::connect`) resumes
//!   by itself. (This test used lapin's auto-recover before, and about one run in six, on a
//!   busy machine, lapin's I/O loop stalled after the reset and never reconnected.)
//! - the consumer resumes by itself after each outage, logged and counted in
//!   `messaging_consumer_reconnects_total`;
//! - every message the broker confirmed is processed: no confirmed message is lost.

mod rabbitmq_support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventscope::metrics::{label, name, Metrics};
use eventscope::rabbitmq::lapin::{Connection, ConnectionProperties};
use eventscope::rabbitmq::{self, RabbitConsumer, RabbitMessage, RabbitPublisher, RabbitRecord};
use rabbitmq_support::{
    declare_queue, eventually, eventually_or_report, reconnects, samples, unique,
};
use tokio::sync::watch;
use tower::{service_fn, Layer, Service, ServiceExt};

/// How long a publish may take before it fails with `timeout`.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);

/// The private node, wiped when the test ends, whatever happens.
struct Node {
    name: String,
    port: u16,
}

/// Runs `scripts/rabbitmq-node.sh COMMAND NAME [PORT]`, failing the test if it fails.
fn node_script(command: &str, name: &str, port: u16) {
    let mut cmd = Command::new(Node::script());
    cmd.args([command, name]);
    if command == "start" {
        cmd.arg(port.to_string());
    }
    let out = cmd.output().expect("scripts/rabbitmq-node.sh runs");
    assert!(
        out.status.success(),
        "rabbitmq-node.sh {command} {name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Node {
    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq-node.sh")
    }

    /// Starts a node on a port whose distribution port (+20000) is free too.
    fn start() -> Self {
        let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        let port = (0..200)
            .map(|_| fastrand::u16(20_000..40_000))
            .find(|p| *p != 25_672 && free(*p) && free(p + 20_000))
            .expect("a free port pair");
        let node = Self {
            name: format!("es-restart-{}", std::process::id()),
            port,
        };
        node_script("start", &node.name, node.port);
        node
    }

    fn uri(&self) -> String {
        // A short heartbeat: a frozen broker is noticed within 4 s.
        format!("amqp://guest:guest@127.0.0.1:{}/%2f?heartbeat=2", self.port)
    }

    /// Kills, starts, freezes or thaws the node.
    async fn command(&self, command: &'static str) {
        let (name, port) = (self.name.clone(), self.port);
        tokio::task::spawn_blocking(move || node_script(command, &name, port))
            .await
            .unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .args(["wipe", &self.name])
            .output();
    }
}

/// The publisher's counts, its last failures and the state of its channel.
fn publishing_report(published: &Mutex<Published>, publisher: &RabbitPublisher) -> String {
    let published = published.lock().unwrap();
    let last: Vec<_> = published.failed.iter().rev().take(10).collect();
    let channel = publisher.channel();
    format!(
        "confirmed {}, failed {}, the last failures (newest first): {last:?}; the channel: \
         {:?}, connected {}",
        published.confirmed.len(),
        published.failed.len(),
        channel.id(),
        channel.status().connected(),
    )
}

/// What the publishing task saw.
#[derive(Default)]
struct Published {
    confirmed: Vec<usize>,
    /// `error.type` and how long the failed publish took.
    failed: Vec<(String, Duration)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_and_publisher_come_back_and_no_confirmed_message_is_lost() {
    // `RUST_LOG=lapin=debug` shows what lapin's recovery does (with `--nocapture`).
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
    let node = Node::start();
    let uri = node.uri();
    let queue = unique("restart");
    let setup = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .expect("connect to the private node");
    declare_queue(&setup.create_channel().await.expect("channel"), &queue).await;
    let _ = setup.close(200, "OK".into()).await;

    // The publisher owns its connection and replaces it when it breaks (short delays).
    let metrics = Metrics::new();
    let publishing = RabbitPublisher::connect(&uri)
        .await
        .expect("connect")
        .timeout(PUBLISH_TIMEOUT)
        .max_reconnect_delay(Duration::from_millis(500));
    let mut publisher = rabbitmq::publish_layer(metrics.clone()).layer(publishing.clone());
    let published = Arc::new(Mutex::new(Published::default()));
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let publishing_task = tokio::spawn({
        let (published, stop, queue) = (published.clone(), stop_publishing.clone(), queue.clone());
        async move {
            let mut next = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let record =
                    RabbitRecord::to_queue(&queue, next.to_string().into_bytes()).persistent();
                let started = Instant::now();
                let outcome = publisher.ready().await.unwrap().call(record).await;
                match outcome {
                    Ok(_) => published.lock().unwrap().confirmed.push(next),
                    Err(error) => published
                        .lock()
                        .unwrap()
                        .failed
                        .push((error.error_type().into_owned(), started.elapsed())),
                }
                next += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let confirmed = || published.lock().unwrap().confirmed.len();

    // The consumer of the queue, on its own connection.
    let processed: Arc<Mutex<BTreeSet<usize>>> = Arc::default();
    let handler = service_fn({
        let processed = processed.clone();
        move |m: RabbitMessage| {
            let number = std::str::from_utf8(m.payload()).unwrap().parse().unwrap();
            processed.lock().unwrap().insert(number);
            async { Ok::<_, std::io::Error>(()) }
        }
    });
    let (stop, stopped) = watch::channel(false);
    let consumer = tokio::spawn(
        RabbitConsumer::new(&uri, &queue)
            .expect("consumer")
            .metrics(metrics.clone())
            .max_reconnect_delay(Duration::from_millis(500))
            .run(handler, async move {
                let mut stopped = stopped;
                let _ = stopped.wait_for(|s| *s).await;
            }),
    );
    let reconnects = || reconnects(&metrics, &queue).unwrap_or(0.0);
    let processed_count = || processed.lock().unwrap().len();
    eventually("a first stream", Duration::from_secs(60), || {
        confirmed() >= 100 && processed_count() >= 50
    })
    .await;

    // The broker crashes and comes back (same files: the durable queue and its persistent
    // messages survive).
    node.command("kill").await;
    let before_restart = confirmed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    node.command("start").await;
    eventually_or_report(
        "publishing to resume",
        Duration::from_secs(60),
        || confirmed() >= before_restart + 100,
        || publishing_report(&published, &publishing),
    )
    .await;
    eventually("the consumer to come back", Duration::from_secs(60), || {
        reconnects() >= 1.0
    })
    .await;
    assert!(!consumer.is_finished(), "the consumer went on");

    // The broker stops answering for a while, then answers again.
    node.command("freeze").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    node.command("thaw").await;
    let before_thaw = confirmed();
    eventually_or_report(
        "publishing to resume after the freeze",
        Duration::from_secs(60),
        || confirmed() >= before_thaw + 100,
        || publishing_report(&published, &publishing),
    )
    .await;
    eventually(
        "the consumer to come back again",
        Duration::from_secs(60),
        || reconnects() >= 2.0,
    )
    .await;

    stop_publishing.store(true, Ordering::SeqCst);
    tokio::time::timeout(PUBLISH_TIMEOUT * 3, publishing_task)
        .await
        .expect("the publisher stops: nothing hangs")
        .unwrap();
    let published = std::mem::take(&mut *published.lock().unwrap());
    eventually(
        "every confirmed message processed",
        Duration::from_secs(60),
        || {
            let processed = processed.lock().unwrap();
            published.confirmed.iter().all(|n| processed.contains(n))
        },
    )
    .await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(60), consumer)
        .await
        .expect("the consumer shuts down")
        .unwrap()
        .expect("a clean run");

    assert!(!published.failed.is_empty(), "the outages were seen");
    for (error_type, took) in &published.failed {
        assert!(
            [
                "timeout",
                "connection",
                "channel_closed",
                "CONNECTION_FORCED"
            ]
            .contains(&error_type.as_str()),
            "a publish failed with {error_type}"
        );
        assert!(
            *took <= PUBLISH_TIMEOUT + Duration::from_secs(1),
            "a failed publish took {took:?}"
        );
    }
    let failed_metric: f64 = samples(
        &metrics.encode(),
        name::SENT_MESSAGES,
        &[(label::DESTINATION, queue.as_str())],
    )
    .iter()
    .filter(|(labels, _)| !labels.contains("error_type=\"\""))
    .map(|(_, v)| *v)
    .sum();
    assert_eq!(failed_metric, published.failed.len() as f64);
    println!(
        "confirmed {}, failed {} ({:?}), processed {}, consumer reconnects {}",
        published.confirmed.len(),
        published.failed.len(),
        published
            .failed
            .iter()
            .map(|(t, _)| t.as_str())
            .collect::<BTreeSet<_>>(),
        processed_count(),
        reconnects()
    );
    drop(publishing);
    drop(node);
}
