//! Shared setup of the NATS integration tests: they talk to the NATS server with JetStream on
//! 127.0.0.1:4222 (`EVENTSCOPE_NATS_URL` to use another), each with streams and consumers of
//! its own, deleted when the test ends (also when it fails). Tests that stop a server start a
//! private one (`nats-server`, or `NATS_SERVER_BIN`) on a free port with a store of its own.
#![allow(dead_code, unreachable_pub)]

#[path = "../shared/mod.rs"]
mod shared;
#[allow(unused_imports)] // each test crate uses some of them
pub use shared::{eventually, eventually_or_report, samples};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::nats::async_nats::{self, jetstream};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// The shared server.
pub fn url() -> String {
    std::env::var("EVENTSCOPE_NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".to_owned())
}

/// Fails with a hint when no server listens: these tests must not pass without one.
pub fn require_server() {
    let addr = url();
    let addr = addr.trim_start_matches("nats://");
    let reachable = addr
        .parse::<SocketAddr>()
        .ok()
        .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok());
    assert!(
        reachable.is_some(),
        "no NATS server on {addr}: start one with JetStream (`nats-server -js`), see DEVELOPERS.md"
    );
}

/// A name no other test (or earlier run) uses, valid as a stream, consumer or subject token.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

pub async fn client() -> async_nats::Client {
    require_server();
    async_nats::connect(url()).await.expect("connect to NATS")
}

pub async fn js() -> jetstream::Context {
    jetstream::new(client().await)
}

/// A stream of one subject, deleted when dropped.
pub struct TestStream {
    pub name: String,
    pub subject: String,
    pub stream: jetstream::stream::Stream,
    server: String,
}

impl TestStream {
    /// A memory stream capturing `{prefix}.<unique>` on the shared server, and one beside it
    /// for its dead letters (`{prefix}.<unique>.dlq`).
    pub async fn new(js: &jetstream::Context, prefix: &str) -> Self {
        Self::on(js, prefix, jetstream::stream::StorageType::Memory, url()).await
    }

    pub async fn on(
        js: &jetstream::Context,
        prefix: &str,
        storage: jetstream::stream::StorageType,
        server: String,
    ) -> Self {
        let name = unique(&prefix.to_ascii_uppercase());
        let subject = format!("{prefix}.{}", name.to_ascii_lowercase());
        let stream = js
            .create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                storage,
                ..Default::default()
            })
            .await
            .expect("create stream");
        js.create_stream(jetstream::stream::Config {
            name: format!("{name}_DLQ"),
            subjects: vec![format!("{subject}.dlq")],
            storage,
            ..Default::default()
        })
        .await
        .expect("create dead-letter stream");
        Self {
            name,
            subject,
            stream,
            server,
        }
    }

    /// A durable pull consumer of the stream: eventscope's recommended settings, with
    /// `ack_wait` and `max_deliver` of the test's choosing.
    pub async fn consumer(
        &self,
        durable: &str,
        ack_wait: Duration,
        max_deliver: i64,
    ) -> jetstream::consumer::PullConsumer {
        self.stream
            .get_or_create_consumer(
                durable,
                jetstream::consumer::pull::Config {
                    ack_wait,
                    max_deliver,
                    filter_subject: self.subject.clone(),
                    ..eventscope::nats::consumer_config(durable)
                },
            )
            .await
            .expect("create consumer")
    }

    /// `num_pending` and `num_ack_pending` of a consumer.
    pub async fn pending(&self, durable: &str) -> (u64, u64) {
        let info = self
            .stream
            .consumer_info(durable)
            .await
            .expect("consumer info");
        (info.num_pending, info.num_ack_pending as u64)
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        // Deleted from a thread of its own: a drop cannot await, and may run while a test
        // panics.
        let (name, server) = (self.name.clone(), self.server.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                if let Ok(client) = async_nats::connect(server).await {
                    let js = jetstream::new(client);
                    let _ = js.delete_stream(&name).await;
                    let _ = js.delete_stream(format!("{name}_DLQ")).await;
                }
            });
        })
        .join();
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A nats-server of the test's own, with JetStream and a file store, stopped by pid.
pub struct PrivateServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateServer {
    pub async fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("eventscope-nats"));
        std::fs::create_dir_all(&dir).expect("store dir");
        let mut server = Self {
            port,
            dir,
            child: None,
        };
        server.resume().await;
        server
    }

    pub fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and store.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_owned());
        let child = Command::new(&bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (install nats-server)"));
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the private server did not come up"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the server with SIGTERM (a clean shutdown that keeps its store) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy in front of a server, whose connections can be cut at once, as a network
/// failure would.
pub struct Proxy {
    pub port: u16,
    cut: Arc<Mutex<bool>>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(Mutex::new(false));
        let tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (cut, tasks) = (Arc::clone(&cut), Arc::clone(&tasks));
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        return;
                    };
                    if *cut.lock().unwrap() {
                        let _ = inbound.shutdown().await;
                        continue;
                    }
                    let upstream = upstream.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    tasks.lock().unwrap().push(task);
                }
            })
        };
        Self {
            port,
            cut,
            tasks,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        *self.cut.lock().unwrap() = true;
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// The sum of the samples of family `name` with every `label="value"` (one sample when the
/// labels pick one), `None` when there is none.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text, name, labels)
        .into_iter()
        .map(|(_, value)| value)
        .reduce(|a, b| a + b)
}

/// Publishes `payload` to `subject` with a header block written by hand (`HPUB`), as a client
/// other than async-nats could: bytes the Rust client would refuse to send.
pub async fn raw_hpub(server: &str, subject: &str, header_block: &[u8], payload: &[u8]) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let stream = TcpStream::connect(server).await.expect("raw connection");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let _info = lines.next_line().await.expect("INFO");
    write
        .write_all(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\n",
        )
        .await
        .unwrap();
    let mut frame = format!(
        "HPUB {subject} {} {}\r\n",
        header_block.len(),
        header_block.len() + payload.len()
    )
    .into_bytes();
    frame.extend_from_slice(header_block);
    frame.extend_from_slice(payload);
    frame.extend_from_slice(b"\r\nPING\r\n");
    write.write_all(&frame).await.unwrap();
    // The server answers the PING once it has processed the publish.
    loop {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .expect("PONG in time")
            .expect("read")
            .expect("a line");
        assert!(!line.starts_with("-ERR"), "server refused: {line}");
        if line == "PONG" {
            break;
        }
    }
}
