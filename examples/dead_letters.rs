//! Lists and replays a Kafka dead-letter topic (SPEC §8), on `eventscope::replay`.
//!
//! ```text
//! cargo run --features kafka --example dead_letters -- list   --topic orders.dlq
//! cargo run --features kafka --example dead_letters -- replay --topic orders.dlq [--dry-run]
//!     [--error-type PaymentDeclined] [--id ID] [--group eventscope-replay]
//! common: --bootstrap 127.0.0.1:9092 (default: $KAFKA_BOOTSTRAP, else 127.0.0.1:9092)
//! ```
//!
//! `list` prints every record as a table (id, original destination, error type, attempts,
//! failed at) and commits nothing. `replay` sends the records back to their original topics,
//! committing its progress in the group (`eventscope-replay` by default) as it goes, so a replay
//! stopped and started again goes on where it stopped; `--dry-run` lists what it would send,
//! with a group of its own. Both stop once the topic is read to its end (as it was when they
//! started).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use eventscope::kafka::rdkafka::producer::FutureProducer;
use eventscope::kafka::rdkafka::{Offset, TopicPartitionList};
use eventscope::kafka::{
    consumer_config, producer_config, KafkaConsumer, KafkaMessage, KafkaPublisher,
};
use eventscope::replay::{Replay, Replayed};
use eventscope::BoxError;
use indicatif::{ProgressBar, ProgressStyle};
use tower::{service_fn, Service, ServiceExt};

struct Args {
    command: String,
    bootstrap: String,
    topic: String,
    group: String,
    error_type: Option<String>,
    id: Option<String>,
    dry_run: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let command = args.next().ok_or("a command: list or replay")?;
    if command != "list" && command != "replay" {
        return Err(format!("unknown command {command:?}: list or replay"));
    }
    let mut parsed = Args {
        command,
        bootstrap: std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        topic: String::new(),
        group: "eventscope-replay".into(),
        error_type: None,
        id: None,
        dry_run: false,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--bootstrap" => parsed.bootstrap = value()?,
            "--topic" => parsed.topic = value()?,
            "--group" => parsed.group = value()?,
            "--error-type" => parsed.error_type = Some(value()?),
            "--id" => parsed.id = Some(value()?),
            "--dry-run" => parsed.dry_run = true,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if parsed.topic.is_empty() {
        return Err("--topic names the dead-letter topic".into());
    }
    if parsed.command == "list" || parsed.dry_run {
        // Listing commits nothing that matters: a group nobody uses again.
        parsed.group = format!("eventscope-list-{}", uuid::Uuid::now_v7().simple());
    }
    Ok(parsed)
}

/// The next offset to read and the end of each partition, as the topic is now.
fn partitions(args: &Args) -> Result<Vec<(i32, i64, i64)>, BoxError> {
    let client: BaseConsumer = consumer_config(&args.bootstrap, &args.group).create()?;
    let metadata = client.fetch_metadata(Some(&args.topic), Duration::from_secs(10))?;
    let topic = metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| format!("topic {} does not exist", args.topic))?;
    let mut list = TopicPartitionList::new();
    for p in topic.partitions() {
        list.add_partition(&args.topic, p.id());
    }
    let committed = client.committed_offsets(list, Duration::from_secs(10))?;
    let mut out = Vec::new();
    for element in committed.elements() {
        let (low, high) =
            client.fetch_watermarks(&args.topic, element.partition(), Duration::from_secs(10))?;
        let next = match element.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        out.push((element.partition(), next, high));
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("dead_letters: {error}\n(see the header of examples/dead_letters.rs)");
            return ExitCode::from(64);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dead_letters: {error}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    let ends = partitions(&args)?;
    let total: i64 = ends
        .iter()
        .map(|(_, next, high)| (high - next).max(0))
        .sum();
    let listing = args.command == "list" || args.dry_run;

    // Where each partition was read to, to stop once every one reached its end.
    let reached: Arc<Mutex<HashMap<i32, i64>>> = Arc::new(Mutex::new(
        ends.iter().map(|(p, next, _)| (*p, *next)).collect(),
    ));
    let bar = ProgressBar::new(total.max(0) as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let rows: Arc<Mutex<Vec<[String; 5]>>> = Arc::default();
    let producer: FutureProducer = producer_config(&args.bootstrap).create()?;
    let mut replay = Replay::new(KafkaPublisher::new(producer)).dry_run(listing);
    // Listing shows every record; a replay (or its dry run) only those asked for.
    if args.command == "replay" {
        if let Some(error_type) = &args.error_type {
            replay = replay.error_type(error_type.as_str());
        }
        if let Some(id) = &args.id {
            replay = replay.id(id.as_str());
        }
    }
    let replay = {
        let (rows, bar) = (Arc::clone(&rows), bar.clone());
        replay.on_progress(move |event| {
            let (verb, record) = match event {
                Replayed::Sent(record) => ("replayed", record),
                Replayed::Listed(record) => ("listed", record),
                Replayed::Skipped(record) => {
                    bar.set_message(format!("skipped {}", record.id));
                    return;
                }
                _ => return,
            };
            bar.set_message(format!("{verb} {}", record.id));
            rows.lock().unwrap().push([
                record.id.clone(),
                record.original_destination.clone(),
                record.error_type.clone(),
                record.attempts.map(|n| n.to_string()).unwrap_or_default(),
                record.failed_at.clone(),
            ]);
        })
    };
    let handler = {
        let (reached, bar) = (Arc::clone(&reached), bar.clone());
        service_fn(move |message: KafkaMessage| {
            let (mut replay, reached, bar) = (replay.clone(), Arc::clone(&reached), bar.clone());
            async move {
                let position = (message.partition().unwrap_or_default(), message.offset());
                ServiceExt::<KafkaMessage>::ready(&mut replay)
                    .await?
                    .call(message)
                    .await?;
                reached.lock().unwrap().insert(position.0, position.1 + 1);
                bar.inc(1);
                Ok::<_, BoxError>(())
            }
        })
    };
    let done = {
        let reached = Arc::clone(&reached);
        let ends = ends.clone();
        async move {
            loop {
                let at_end = {
                    let reached = reached.lock().unwrap();
                    ends.iter()
                        .all(|(p, _, high)| reached.get(p).is_some_and(|r| r >= high))
                };
                if at_end {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let config = consumer_config(&args.bootstrap, &args.group);
    let consumer = KafkaConsumer::from_config(&config)?
        .commit_interval(Duration::from_millis(100))
        .max_concurrency(1);
    let mut assignment = TopicPartitionList::new();
    for (partition, _, _) in &ends {
        assignment.add_partition_offset(&args.topic, *partition, Offset::Stored)?;
    }
    consumer.consumer().assign(&assignment)?;
    consumer.run(handler, done).await?;
    bar.finish_and_clear();

    let rows = rows.lock().unwrap();
    if listing {
        let header = [
            "ID",
            "ORIGINAL DESTINATION",
            "ERROR TYPE",
            "ATTEMPTS",
            "FAILED AT",
        ];
        let [id, destination, error_type, attempts, failed_at] = header;
        println!("{id:<38} {destination:<28} {error_type:<20} {attempts:>8}  {failed_at}");
        for [id, destination, error_type, attempts, failed_at] in rows.iter() {
            println!("{id:<38} {destination:<28} {error_type:<20} {attempts:>8}  {failed_at}");
        }
        println!("{} record(s)", rows.len());
    } else {
        println!(
            "replayed {} of {total} record(s) from {}",
            rows.len(),
            args.topic
        );
    }
    Ok(())
}
