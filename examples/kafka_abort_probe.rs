//! Consumes one Kafka partition with eventscope's driver and reports what it saw, for
//! `tests/kafka_hostile.rs`, which builds it with `panic = "abort"`:
//!
//! ```text
//! cargo build --profile panic-abort --features kafka --example kafka_abort_probe
//! target/panic-abort/examples/kafka_abort_probe TOPIC PARTITION GROUP MESSAGES
//! ```
//!
//! Reads from 127.0.0.1:9092 until `MESSAGES` messages were handled (or 30 s passed, exit 2),
//! shuts down cleanly (committing them), prints `consumed=N invalid_headers=M` and exits 0.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventscope::kafka::{consumer_config, KafkaConsumer, KafkaMessage};
use eventscope::metrics::{name, Metrics};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tower::service_fn;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [topic, partition, group, messages] = args.as_slice() else {
        eprintln!("usage: kafka_abort_probe TOPIC PARTITION GROUP MESSAGES");
        return ExitCode::from(64);
    };
    let (Ok(partition), Ok(messages)) = (partition.parse::<i32>(), messages.parse::<usize>())
    else {
        eprintln!("PARTITION and MESSAGES are numbers");
        return ExitCode::from(64);
    };

    let metrics = Metrics::new();
    let config = consumer_config("127.0.0.1:9092", group);
    let consumer = match KafkaConsumer::from_config(&config) {
        Ok(consumer) => consumer.metrics(metrics.clone()),
        Err(error) => {
            eprintln!("kafka_abort_probe: {error}");
            return ExitCode::from(1);
        }
    };
    let mut assignment = TopicPartitionList::new();
    if let Err(error) = assignment
        .add_partition_offset(topic, partition, Offset::Stored)
        .and_then(|()| consumer.consumer().assign(&assignment))
    {
        eprintln!("kafka_abort_probe: assigning {topic}[{partition}]: {error}");
        return ExitCode::from(1);
    }

    let consumed = Arc::new(AtomicUsize::new(0));
    let (seen_tx, mut seen) = watch::channel(0usize);
    let handler = service_fn({
        let consumed = Arc::clone(&consumed);
        move |_m: KafkaMessage| {
            let n = consumed.fetch_add(1, Ordering::Relaxed) + 1;
            let _ = seen_tx.send(n);
            std::future::ready(Ok::<_, std::io::Error>(()))
        }
    });
    let shutdown = async move {
        let _ =
            tokio::time::timeout(Duration::from_secs(30), seen.wait_for(|n| *n >= messages)).await;
    };
    if let Err(error) = consumer.run(handler, shutdown).await {
        eprintln!("kafka_abort_probe: {error}");
        return ExitCode::from(1);
    }

    let consumed = consumed.load(Ordering::Relaxed);
    let invalid_headers: u64 = metrics
        .encode()
        .lines()
        .filter(|line| line.starts_with(name::TRACE_CONTEXT_INVALID))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    println!("consumed={consumed} invalid_headers={invalid_headers}");
    if consumed < messages {
        eprintln!("kafka_abort_probe: only {consumed} of {messages} messages within 30 s");
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
