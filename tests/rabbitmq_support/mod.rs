//! Shared setup of the RabbitMQ integration tests: they talk to the RabbitMQ on
//! 127.0.0.1:5672 (guest/guest), each with queues of its own (uuid-suffixed, expiring after
//! an idle hour should a test die before deleting them).
#![allow(dead_code, unreachable_pub)]

#[path = "../shared/mod.rs"]
mod shared;
#[allow(unused_imports)] // each test crate uses some of them
pub use shared::{eventually, eventually_or_report, samples};

use std::process::Command;
use std::time::Duration;

use eventscope::metrics::{label, name, Metrics};
use eventscope::rabbitmq::lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use eventscope::rabbitmq::lapin::types::{AMQPValue, FieldTable};
use eventscope::rabbitmq::lapin::{Channel, Connection, ConnectionProperties};
use eventscope::rabbitmq::RabbitPublisher;

pub const URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const ADDRESS: &str = "127.0.0.1:5672";

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    format!("eventscope-test-{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// Fails with a hint when no broker listens: these tests must not pass without one.
pub fn require_broker() {
    if std::net::TcpStream::connect_timeout(
        &ADDRESS.parse().expect("loopback address"),
        Duration::from_secs(2),
    )
    .is_err()
    {
        panic!("no RabbitMQ on {ADDRESS}: start it with `rabbitmq-server -detached`");
    }
}

/// A connection to the shared broker, named so that it can be found (and closed) by name.
pub async fn connect(name: &str) -> Connection {
    require_broker();
    Connection::connect(URI, properties(name))
        .await
        .expect("connect to RabbitMQ")
}

pub fn properties(name: &str) -> ConnectionProperties {
    ConnectionProperties::default().with_connection_name(name.into())
}

/// Arguments that make a test queue go away an hour after its last use.
pub fn expiring() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongInt(3_600_000));
    arguments
}

/// Declares a durable queue of its own.
pub async fn declare_queue(channel: &Channel, queue: &str) {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            expiring(),
        )
        .await
        .expect("declare queue");
}

/// A connection named `connection_name`, a channel on it and a new queue `unique(prefix)`
/// declared there: what most tests start with.
pub async fn queue_for_test(connection_name: &str, prefix: &str) -> (Connection, Channel, String) {
    let connection = connect(connection_name).await;
    let channel = connection.create_channel().await.expect("channel");
    let queue = unique(prefix);
    declare_queue(&channel, &queue).await;
    (connection, channel, queue)
}

pub async fn delete_queue(channel: &Channel, queue: &str) {
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
}

/// A publisher on a channel of its own.
pub async fn publisher(connection: &Connection) -> RabbitPublisher {
    let channel = connection.create_channel().await.expect("channel");
    RabbitPublisher::new(channel)
        .await
        .expect("confirm mode")
        .server_uri(URI)
}

/// `rabbitmqctl` on the shared node (as root the Debian wrapper runs it as `rabbitmq`).
pub fn rabbitmqctl(args: &[&str]) -> String {
    rabbitmqctl_on("rabbit@localhost", args)
}

pub fn rabbitmqctl_on(node: &str, args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(["-n", node, "-q"])
        .args(args)
        .output()
        .expect("rabbitmqctl runs (root, or the rabbitmq user)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Ready and unacknowledged messages of `queue`, as the broker counts them.
pub fn queue_counts(queue: &str) -> Option<(u64, u64)> {
    queue_counts_on("rabbit@localhost", queue)
}

pub fn queue_counts_on(node: &str, queue: &str) -> Option<(u64, u64)> {
    let text = rabbitmqctl_on(
        node,
        &[
            "list_queues",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ],
    );
    text.lines().find_map(|line| {
        let mut fields = line.split('\t');
        (fields.next()? == queue).then_some(())?;
        let ready = fields.next()?.trim().parse().ok()?;
        let unacked = fields.next()?.trim().parse().ok()?;
        Some((ready, unacked))
    })
}

/// [`close_connections_named`] on the shared node, off the async runtime's threads.
pub async fn close_shared_connections_named(name: &str) -> usize {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || close_connections_named("rabbit@localhost", &name))
        .await
        .expect("rabbitmqctl ran")
}

/// `messaging_consumer_reconnects_total` of the consumer group `group`, if it was reported.
pub fn reconnects(metrics: &Metrics, group: &str) -> Option<f64> {
    samples(
        &metrics.encode(),
        name::RECONNECTS,
        &[(label::GROUP, group)],
    )
    .first()
    .map(|(_, v)| *v)
}

/// Force-closes the connections named `name` (`connection_name` client property) on `node`:
/// the broker sends `connection.close` (320 CONNECTION_FORCED), as an operator or a network
/// appliance would. Returns how many were closed.
pub fn close_connections_named(node: &str, name: &str) -> usize {
    let pids = connection_pids(node, name);
    for pid in &pids {
        rabbitmqctl_on(
            node,
            &["close_connection", pid, "eventscope test: forced close"],
        );
    }
    pids.len()
}

/// How many connections named `name` (`connection_name` client property) the shared node has.
pub fn count_connections_named(name: &str) -> usize {
    connection_pids("rabbit@localhost", name).len()
}

/// The pids of the connections named `name` on `node`.
fn connection_pids(node: &str, name: &str) -> Vec<String> {
    let text = rabbitmqctl_on(
        node,
        &[
            "list_connections",
            "--no-table-headers",
            "pid",
            "client_properties",
        ],
    );
    let wanted = format!("{{\"connection_name\",\"{name}\"}}");
    text.lines()
        .filter(|line| line.contains(&wanted))
        .filter_map(|line| line.split('\t').next())
        .map(str::to_owned)
        .collect()
}
