//! Redis dies mid-stream (a private server on a port of its own, killed by its pid) and comes
//! back on the same port: nothing is processed twice, nothing is lost, the failure shows in the
//! logs and the metrics, and processing resumes.
//!
//! The private server persists every write (`appendonly yes`, `appendfsync always`) in a
//! directory of its own: a store that forgets its done marks on restart cannot recognise the
//! duplicates of what it forgot, whatever the layer does.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;
use tokio::sync::Notify;

use common::{free_port, sample};
use eventscope::classify::{Classifier, Decision};
use eventscope::dedup::{DedupError, DedupLayer, RedisStore};
use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
use eventscope::metrics::{label, name, Metrics};
use eventscope::BoxError;
use tower::{service_fn, Layer, ServiceExt};

/// A redis-server of this test's own, stopped (by its pid) when dropped.
struct PrivateRedis {
    port: u16,
    pidfile: PathBuf,
    dir: PathBuf,
    killed: std::cell::Cell<bool>,
}

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("eventscope-redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("redis.pid");
        let _ = std::fs::remove_file(&pidfile);
        let status = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--daemonize",
                "yes",
                "--pidfile",
            ])
            .arg(&pidfile)
            .arg("--dir")
            .arg(&dir)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--bind", "127.0.0.1"])
            .status()
            .expect("redis-server runs");
        assert!(status.success());
        let server = Self {
            port,
            pidfile,
            dir,
            killed: std::cell::Cell::new(false),
        };
        // Up once it answers.
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && server.pid().is_some() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the private redis-server did not come up on {port}");
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|text| text.trim().parse().ok())
    }

    /// Kills the server at once, as a crash would.
    fn kill(&self) {
        if self.killed.replace(true) {
            return;
        }
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            for _ in 0..200 {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                    let _ = std::fs::remove_file(&self.pidfile);
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The server's files, removed once the test is over.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Log lines, as the test subscriber writes them.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const MESSAGES: usize = 120;
/// The first outage starts when this many events are settled and the consumer waits for more:
/// the next claims fail.
const IDLE_OUTAGE_AT: usize = 40;
/// The second starts while the handler of this event runs: its done mark fails.
const BUSY_OUTAGE_AT: usize = 80;

#[tokio::test(flavor = "current_thread")]
async fn redis_dies_mid_stream_and_comes_back() {
    let logs = Logs::default();
    let writer = logs.clone();
    let _logging = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish(),
    );
    let port = free_port();
    let first = PrivateRedis::start(port);
    let _files = Cleanup(first.dir.clone());
    let store = RedisStore::connect(&format!("redis://127.0.0.1:{port}"))
        .await
        .unwrap()
        .timeout(Duration::from_millis(300));

    let broker = MemoryBroker::new();
    broker.create_topic("orders", 1).unwrap();
    let metrics = Metrics::new();
    let consumer = broker
        .consumer("billing")
        .subscribe(["orders"])
        .metrics(metrics.clone())
        .classify_errors(
            Classifier::new()
                .on::<DedupError>("dedup")
                .decision("dedup", Decision::retry(Duration::from_millis(100))),
        );
    let runs: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let handled = Arc::new(AtomicUsize::new(0));
    // The handler of BUSY_OUTAGE_AT asks for the outage and returns once the server is gone.
    let (busy, killed_busy) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (r, h, b, k) = (
        Arc::clone(&runs),
        Arc::clone(&handled),
        Arc::clone(&busy),
        Arc::clone(&killed_busy),
    );
    let busy_id = format!("evt-{BUSY_OUTAGE_AT}");
    // A short lease: a claim written just before a crash, whose answer was lost, holds its id
    // only this long after the restart.
    let handler = DedupLayer::new(store, metrics.clone())
        .lease(Duration::from_secs(2))
        .layer(service_fn(move |m: MemoryMessage| {
            let id = String::from_utf8(m.headers().get("message-id").unwrap().to_vec()).unwrap();
            let (r, h, b, k) = (
                Arc::clone(&r),
                Arc::clone(&h),
                Arc::clone(&b),
                Arc::clone(&k),
            );
            let outage = id == busy_id;
            async move {
                if outage {
                    b.notify_one();
                    k.notified().await;
                }
                *r.lock().unwrap().entry(id).or_default() += 1;
                h.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BoxError>(())
            }
        }));

    // A stream of distinct events, each published twice (a producer's retry): the second copy
    // is a duplicate. The producer holds back after IDLE_OUTAGE_AT until the server is gone.
    let (idle, killed_idle) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (publisher, i2, k2) = (broker.clone(), Arc::clone(&idle), Arc::clone(&killed_idle));
    let producing = tokio::spawn(async move {
        for i in 0..MESSAGES {
            if i == IDLE_OUTAGE_AT {
                i2.notify_one();
                k2.notified().await;
            }
            let id = format!("evt-{i}");
            for _ in 0..2 {
                let record = MemoryRecord::new("orders", b"{}".to_vec()).header("message-id", &id);
                publisher.publisher().oneshot(record).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });

    let committed = broker.clone();
    let watched = Arc::clone(&handled);
    let chaos = async move {
        // Outage 1: the consumer has settled everything published so far and waits.
        idle.notified().await;
        while committed.committed("billing", "orders", 0).unwrap_or(0) < 2 * IDLE_OUTAGE_AT as i64 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        first.kill();
        killed_idle.notify_one();
        let before = watched.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let during = watched.load(Ordering::SeqCst);
        let second = PrivateRedis::start(port);

        // Outage 2: a handler runs; its done mark will fail.
        busy.notified().await;
        second.kill();
        killed_busy.notify_one();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let third = PrivateRedis::start(port);

        while committed.committed("billing", "orders", 0).unwrap_or(0) < 2 * MESSAGES as i64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(third);
        (before, during)
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let shutdown = async move {
        let _ = tx.send(chaos.await);
    };
    tokio::time::timeout(Duration::from_secs(60), consumer.run(handler, shutdown))
        .await
        .expect("processing resumed and finished")
        .unwrap();
    let (before, during) = rx.await.unwrap();
    producing.await.unwrap();

    // Nothing was processed while the store was away (fail closed).
    assert_eq!(before, during);
    // Nothing processed twice, nothing lost.
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), MESSAGES, "every event was processed");
    assert!(runs.values().all(|n| *n == 1), "{runs:?}");
    assert_eq!(
        broker.committed("billing", "orders", 0),
        Some(2 * MESSAGES as i64)
    );

    let text = metrics.encode();
    assert_eq!(sample(&text, name::DUPLICATES, &[]), Some(MESSAGES as f64));
    // The first outage shows in the metrics: calls failed as dedup errors, and were retried.
    let retried = sample(&text, name::RETRIES, &[(label::ERROR_TYPE, "dedup")]).unwrap_or(0.0);
    assert!(retried >= 1.0, "{text}");
    let failed = sample(
        &text,
        &format!("{}_count", name::PROCESS_DURATION),
        &[(label::ERROR_TYPE, "dedup")],
    )
    .unwrap_or(0.0);
    assert_eq!(failed, retried);
    // Both show in the logs, rate-limited: far fewer lines than failed attempts.
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let unavailable = logs
        .lines()
        .filter(|l| l.contains("dedup store unavailable"))
        .count();
    let unmarked = logs
        .lines()
        .filter(|l| l.contains("could not mark a processed message done"))
        .count();
    assert!(unavailable >= 1 && unmarked >= 1, "{logs}");
    assert!(unavailable <= 5 && unmarked <= 5, "{logs}");
    println!("retried {retried}, log lines: {unavailable} unavailable, {unmarked} unmarked");
}
