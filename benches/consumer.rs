//! Per-message cost of the consumer core on the embedded broker: the same messages, all of
//! which succeed, consumed with and without a retry policy and a dead-letter destination. The
//! difference is what a message that succeeds pays for the failure path (issue 13's budget is
//! 150 instructions). A third case, `consume-core` (callgrind only), runs the consumer without
//! its process layer: the core and the embedded broker alone, the floor under the other two.
//!
//! ```text
//! cargo bench --bench consumer                                  # wall-clock, per message
//! scripts/bench-instructions.sh                                 # also counts these, by callgrind
//! ```
//!
//! With `EVENTSCOPE_CALLGRIND=consume|consume-dlq|consume-core` the binary consumes
//! `EVENTSCOPE_CALLGRIND_MESSAGES` (default 20 000) messages once, for
//! `valgrind --tool=callgrind --toggle-collect='*measured_consume*'`: only the consumer's run is
//! counted, not publishing the messages or building the runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventscope::classify::{Classifier, RetryPolicy};
use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
use eventscope::metrics::Metrics;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tokio::sync::Notify;
use tower::{service_fn, ServiceExt};

const TOPIC: &str = "orders";

fn provider() -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            0.0,
        ))))
        .build()
}

/// A broker holding `n` messages on one partition.
async fn loaded(n: usize) -> MemoryBroker {
    let broker = MemoryBroker::builder()
        .default_partitions(1)
        .retention(n + 1)
        .build();
    let publisher = broker.publisher();
    for i in 0..n {
        publisher
            .clone()
            .oneshot(MemoryRecord::new(TOPIC, format!("{i}").into_bytes()))
            .await
            .expect("publish");
    }
    broker
}

/// Consumes all `n` messages with the case's consumer, on `runtime`: the function callgrind
/// counts (the runtime polls the consumer's lanes inside this call).
#[inline(never)]
fn measured_consume(
    runtime: &tokio::runtime::Runtime,
    case: &str,
    broker: &MemoryBroker,
    n: usize,
    provider: &SdkTracerProvider,
) {
    runtime.block_on(consume(case, broker, n, provider));
}

/// Consumes all `n` messages with the case's consumer.
async fn consume(case: &str, broker: &MemoryBroker, n: usize, provider: &SdkTracerProvider) {
    let handled = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let handler = {
        let (handled, done) = (Arc::clone(&handled), Arc::clone(&done));
        service_fn(move |m: MemoryMessage| {
            if handled.fetch_add(1, Ordering::Relaxed) + 1 == n {
                done.notify_one();
            }
            std::future::ready(Ok::<_, std::io::Error>(m.payload().len()))
        })
    };
    let consumer = broker
        .consumer("bench")
        .subscribe([TOPIC])
        .metrics(Metrics::new())
        .tracer_provider(provider)
        .max_buffered(n + 1);
    let finished = done.notified();
    if case == "consume-dlq" {
        let policy = RetryPolicy::exponential(Duration::from_millis(100)).max_attempts(5);
        consumer
            .classify_errors(Classifier::new().otherwise(policy))
            .dead_letter(broker.publisher())
            .run(handler, finished)
            .await
            .expect("consumer");
    } else if case == "consume-core" {
        consumer
            .without_process_layer_for_benchmarks()
            .run(handler, finished)
            .await
            .expect("consumer");
    } else {
        consumer.run(handler, finished).await.expect("consumer");
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let provider = provider();
    if let Ok(case) = std::env::var("EVENTSCOPE_CALLGRIND") {
        let n = std::env::var("EVENTSCOPE_CALLGRIND_MESSAGES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(20_000);
        let broker = runtime.block_on(loaded(n));
        measured_consume(&runtime, &case, &broker, n, &provider);
        return;
    }
    // Wall-clock: alternated runs, medians per case.
    let n = 20_000;
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..5 {
        for (i, case) in ["consume", "consume-dlq"].into_iter().enumerate() {
            let broker = runtime.block_on(loaded(n));
            let start = Instant::now();
            measured_consume(&runtime, case, &broker, n, &provider);
            let seconds = start.elapsed().as_secs_f64();
            times[i].push(seconds / n as f64 * 1e6);
        }
    }
    for (i, case) in ["consume", "consume-dlq"].into_iter().enumerate() {
        times[i].sort_by(f64::total_cmp);
        println!(
            "{case:<12} {:.2} µs per message (median of 5, {n} messages)",
            times[i][2]
        );
    }
}
