//! What a `/metrics` scrape costs the server, on a registry of eventscope's own families.
//!
//! ```text
//! cargo bench --bench scrape
//! SCRAPE_CALLGRIND=100 valgrind --tool=callgrind target/release/deps/scrape-<hash>   # encodes only
//! ```
//!
//! - `encode/1000_series`: one encode of a 1 000-series registry, which is all the server does
//!   per scrape when the cache is cold (`cache_ttl(Duration::ZERO)` makes every scrape cold);
//! - `http/1000_series/{uncached,cached}`: one keep-alive GET round trip, client included;
//! - `http/200_concurrent_2MB/{uncached,cached}`: 200 clients scraping a ~2.25 MB exposition at
//!   once (the case of issue 9), time until the last one has its body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{criterion_group, Criterion};
use eventscope::message::{HeaderList, Headers, HeadersMut, OutgoingMessage};
use eventscope::metrics::Metrics;
use eventscope::publish::PublishLayer;
use eventscope::server::MetricsServer;
use tower::{service_fn, Layer, ServiceExt};

/// A record published to one destination, to fill the registry with real series.
struct Record {
    destination: String,
    headers: HeaderList,
}

impl Headers for Record {
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter()
    }
}

impl HeadersMut for Record {
    fn set_header(&mut self, name: &str, value: &str) {
        self.headers.set_header(name, value);
    }
}

impl OutgoingMessage for Record {
    fn system(&self) -> &'static str {
        "kafka"
    }
    fn destination(&self) -> &str {
        &self.destination
    }
    fn payload(&self) -> &[u8] {
        &[]
    }
}

/// Samples in an exposition: every line that is not a comment.
fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

/// Metrics with publishes to as many destinations as it takes to reach `min_series` samples.
fn metrics_with(runtime: &tokio::runtime::Runtime, min_series: usize) -> Metrics {
    let metrics = Metrics::new();
    let publisher = PublishLayer::new(metrics.clone())
        .layer(service_fn(|_r: Record| async { Ok::<(), Infallible>(()) }));
    let mut destination = 0;
    while series(&metrics.encode()) < min_series {
        for _ in 0..8 {
            let record = Record {
                destination: format!("orders.region-{destination:04}.v1"),
                headers: HeaderList::new(),
            };
            runtime.block_on(publisher.clone().oneshot(record)).unwrap();
            destination += 1;
        }
    }
    metrics
}

async fn serve(metrics: &Metrics, cache_ttl: Duration) -> (MetricsServer, String) {
    let server = MetricsServer::builder()
        .cache_ttl(cache_ttl)
        .bind(
            metrics.registry().clone(),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .await
        .unwrap();
    let url = format!("http://{}/metrics", server.local_addr());
    (server, url)
}

async fn scrape(client: &reqwest::Client, url: &str) -> usize {
    let response = client.get(url).send().await.unwrap();
    assert!(response.status().is_success());
    response.bytes().await.unwrap().len()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let small = metrics_with(&runtime, 1000);
    let text = small.encode();
    eprintln!(
        "small registry: {} series, {} bytes",
        series(&text),
        text.len()
    );

    c.bench_function("encode/1000_series", |b| b.iter(|| small.encode()));

    let client = reqwest::Client::new();
    for (name, ttl) in [
        ("uncached", Duration::ZERO),
        ("cached", Duration::from_secs(1)),
    ] {
        let (server, url) = runtime.block_on(serve(&small, ttl));
        c.bench_function(&format!("http/1000_series/{name}"), |b| {
            b.to_async(&runtime).iter(|| scrape(&client, &url))
        });
        runtime.block_on(server.shutdown());
    }

    let large = metrics_with(&runtime, 11_000);
    let text = large.encode();
    eprintln!(
        "large registry: {} series, {} bytes",
        series(&text),
        text.len()
    );
    let mut group = c.benchmark_group("http/200_concurrent_2MB");
    group.sample_size(10);
    for (name, ttl) in [
        ("uncached", Duration::ZERO),
        ("cached", Duration::from_secs(1)),
    ] {
        let (server, url) = runtime.block_on(serve(&large, ttl));
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let scrapes: Vec<_> = (0..200)
                    .map(|_| {
                        let client = client.clone();
                        let url = url.clone();
                        tokio::spawn(async move { scrape(&client, &url).await })
                    })
                    .collect();
                for scrape in scrapes {
                    scrape.await.unwrap();
                }
            })
        });
        runtime.block_on(server.shutdown());
    }
    group.finish();
}

/// `SCRAPE_CALLGRIND=N`: N encodes of the 1 000-series registry and nothing else, for
/// `valgrind --tool=callgrind` (instructions per encode = total / N, less the setup).
fn callgrind() -> bool {
    let Some(n) = std::env::var("SCRAPE_CALLGRIND")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return false;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let metrics = metrics_with(&runtime, 1000);
    let mut bytes = 0;
    for _ in 0..n {
        bytes += std::hint::black_box(metrics.encode()).len();
    }
    eprintln!("{n} encodes, {bytes} bytes");
    true
}

criterion_group!(benches, bench);

fn main() {
    if !callgrind() {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
}
