//! A `/metrics` endpoint for Prometheus, on `127.0.0.1:9464` unless told otherwise.
//!
//! Built directly on `hyper`'s HTTP/1 connection driver (with `hyper-util`'s Tokio adapters), the
//! stack the rest of eventscope already pulls in, because a hardened endpoint needs per-connection
//! control that a one-call `serve` does not give: a timer for the header-read timeout, an idle
//! timeout, a cap on connections, and a shutdown that aborts what does not finish in time.
//!
//! What the server guarantees, all configurable through [`MetricsServer::builder`]:
//!
//! - **Header-read timeout** (default 5 s): a connection that has not delivered a complete request
//!   head this long after it was accepted, or after its previous response, is closed. So it also
//!   ends keep-alive connections that sit idle between scrapes longer than this.
//! - **Idle timeout** (default 30 s): a connection on which no byte moves in either direction for
//!   this long is closed, whatever state it is in (for instance a client that stopped reading a
//!   response).
//! - **Connection cap** (default 256): at the cap, the server stops accepting; further
//!   connections **wait** in the listen backlog and are served as soon as a slot frees (the two
//!   timeouts bound how long a slot is held). When the backlog is full, the OS refuses them.
//! - **Shutdown deadline** (default 5 s): [`MetricsServer::shutdown`] stops accepting at once,
//!   lets open connections finish their current response, and aborts whatever is still open
//!   when the deadline passes. It returns within the deadline (plus the time to abort), whatever
//!   clients do.
//! - **Shared encoding** (default cache 1 s): concurrent scrapes share one encode of the
//!   registry, and an exposition is reused for scrapes within the cache interval. Encoding runs
//!   on Tokio's blocking pool, not on the runtime's worker threads.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! use eventscope::metrics::Metrics;
//! use eventscope::server::MetricsServer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let metrics = Metrics::new();
//! let server = MetricsServer::builder()
//!     .shutdown_timeout(Duration::from_secs(2))
//!     .bind(metrics.registry().clone(), "127.0.0.1:0".parse().unwrap())
//!     .await?;
//! println!("scrape http://{}/metrics", server.local_addr());
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, Sleep};

/// The default listen address: loopback only, the port OpenTelemetry's Prometheus exporter uses.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9464));

/// Content type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The one path served.
const METRICS_PATH: &str = "/metrics";

/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Settings of a [`MetricsServer`]; start from [`MetricsServer::builder`].
///
/// Every setter consumes and returns the builder; the defaults suit a Prometheus scraping a
/// process on the same host or network.
#[derive(Clone, Debug)]
pub struct MetricsServerBuilder {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    shutdown_timeout: Duration,
    cache_ttl: Duration,
}

impl Default for MetricsServerBuilder {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_connections: 256,
            shutdown_timeout: Duration::from_secs(5),
            cache_ttl: Duration::from_secs(1),
        }
    }
}

impl MetricsServerBuilder {
    /// How long a connection may take to deliver a complete request head, counted from its
    /// accept or from the end of its previous response (default 5 s). Also the longest a
    /// keep-alive connection stays open between requests.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// How long a connection may move no byte in either direction before it is closed
    /// (default 30 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How many connections are served at once (default 256, at least 1). Connections beyond
    /// the cap wait in the listen backlog until one closes.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long [`MetricsServer::shutdown`] lets open connections finish before it aborts them
    /// (default 5 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long an encoded exposition is reused for later scrapes (default 1 s).
    /// `Duration::ZERO` encodes for every scrape, still sharing one encode between scrapes that
    /// arrive while it runs.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// Serves `registry` on `addr` (see [`DEFAULT_ADDR`]) with these settings; port 0 picks a
    /// free port.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound.
    pub async fn bind(self, registry: Registry, addr: SocketAddr) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let exposition = Arc::new(Exposition {
            registry,
            ttl: self.cache_ttl,
            cached: Mutex::new(None),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, exposition, self, stopped));
        Ok(MetricsServer {
            local_addr,
            stop,
            task: Some(task),
        })
    }
}

/// A running `/metrics` server; stops on [`shutdown`](Self::shutdown) or when dropped.
///
/// Dropping it stops accepting at once and closes open connections in the background, with the
/// same deadline as [`shutdown`](Self::shutdown).
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsServer")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl MetricsServer {
    /// Serves `registry` on `addr` (see [`DEFAULT_ADDR`]) with the default settings; port 0
    /// picks a free port.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound.
    pub async fn bind(registry: Registry, addr: SocketAddr) -> io::Result<Self> {
        Self::builder().bind(registry, addr).await
    }

    /// Settings for a server: timeouts, connection cap, shutdown deadline, cache interval.
    pub fn builder() -> MetricsServerBuilder {
        MetricsServerBuilder::default()
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets open connections finish their current response for up to the
    /// shutdown deadline, aborts the rest, and returns.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "metrics server task failed");
            }
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Accepts connections until told to stop, then drains them within the deadline.
async fn accept_loop(
    listener: TcpListener,
    exposition: Arc<Exposition>,
    config: MetricsServerBuilder,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut connections = JoinSet::new();
    loop {
        // A slot first, then the accept: at the cap, new connections wait in the backlog.
        let next = async {
            let slot = slots.clone().acquire_owned().await;
            (slot, listener.accept().await)
        };
        tokio::select! {
            biased;
            () = stop_requested(&mut stopped) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            (slot, accepted) = next => match (slot, accepted) {
                (Ok(slot), Ok((stream, _peer))) => {
                    let connection = serve_connection(
                        stream,
                        exposition.clone(),
                        config.clone(),
                        stopped.clone(),
                    );
                    connections.spawn(async move {
                        connection.await;
                        drop(slot);
                    });
                }
                (_, Err(e)) => {
                    tracing::warn!(error = %e, "metrics server could not accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                // The semaphore is never closed.
                (Err(_), _) => break,
            },
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(config.shutdown_timeout, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "metrics server: aborting connections still open at the shutdown deadline"
        );
        connections.shutdown().await;
    }
}

/// Resolves once the server is told to stop (or its handle is gone).
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here.
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Serves one connection until it closes, times out, or the server stops.
async fn serve_connection(
    stream: TcpStream,
    exposition: Arc<Exposition>,
    config: MetricsServerBuilder,
    mut stopped: watch::Receiver<bool>,
) {
    // Scrape responses are written whole; don't let Nagle hold back their tail.
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(IdleTimeout::new(stream, config.idle_timeout));
    let service = hyper::service::service_fn(move |request| {
        let exposition = exposition.clone();
        async move { Ok::<_, Infallible>(respond(&exposition, &request).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop_requested(&mut stopped) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "metrics connection closed with an error");
    }
}

async fn respond(exposition: &Exposition, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != METRICS_PATH {
        return status(StatusCode::NOT_FOUND);
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = status(StatusCode::METHOD_NOT_ALLOWED);
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match exposition.text().await {
        Some(text) => {
            let mut response = Response::new(Full::new(text));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
            response
        }
        None => status(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

/// The registry and its most recent encoding.
struct Exposition {
    registry: Registry,
    ttl: Duration,
    /// Held across an encode, so scrapes arriving meanwhile wait for it instead of encoding too.
    cached: Mutex<Option<Encoded>>,
}

struct Encoded {
    started: Instant,
    text: Bytes,
}

impl Exposition {
    /// The exposition text: the cached one if it is fresh enough, else a new encode.
    /// `None` when encoding failed (the blocking pool is gone, or the encoder panicked).
    async fn text(&self) -> Option<Bytes> {
        let arrived = Instant::now();
        let mut cached = self.cached.lock().await;
        if let Some(encoded) = cached.as_ref() {
            // An encode that started after this scrape arrived is as fresh as a new one.
            if encoded.started >= arrived || encoded.started.elapsed() < self.ttl {
                return Some(encoded.text.clone());
            }
        }
        let started = Instant::now();
        let registry = self.registry.clone();
        let text = tokio::task::spawn_blocking(move || {
            Bytes::from(crate::metrics::encode_registry(&registry))
        })
        .await;
        match text {
            Ok(text) => {
                *cached = Some(Encoded {
                    started,
                    text: text.clone(),
                });
                Some(text)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics encoding failed");
                None
            }
        }
    }
}

/// Closes a connection on which no byte moved in either direction for `timeout`.
///
/// Progress only records the time; the timer is re-armed lazily when it fires, so the hot path
/// does not touch the timer wheel. Boxed timer: hyper wants `Unpin` I/O.
struct IdleTimeout<T> {
    inner: T,
    timer: Pin<Box<Sleep>>,
    timeout: Duration,
    last_progress: Instant,
}

impl<T> IdleTimeout<T> {
    fn new(inner: T, timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            timer: Box::pin(tokio::time::sleep_until(now + timeout)),
            timeout,
            last_progress: now,
        }
    }

    /// Called when the inner I/O is pending: `Err` once the connection has been idle too long.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let deadline = self.last_progress + self.timeout;
            if deadline <= Instant::now() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "metrics connection idle for too long",
                ));
            }
            self.timer.as_mut().reset(deadline);
        }
        Ok(())
    }

    /// Runs one I/O operation and keeps the idle clock.
    fn poll_io<R>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<io::Result<R>>,
        moved: impl FnOnce(&R) -> bool,
    ) -> Poll<io::Result<R>>
    where
        T: Unpin,
    {
        match op(Pin::new(&mut self.inner), cx) {
            Poll::Ready(result) => {
                if result.as_ref().is_ok_and(moved) {
                    self.last_progress = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                self.check_idle(cx)?;
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = self.get_mut();
        let result = ready!(this.poll_io(cx, |io, cx| io.poll_read(cx, buf), |_| false));
        if buf.filled().len() > before {
            this.last_progress = Instant::now();
        }
        Poll::Ready(result)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_io(cx, |io, cx| io.poll_write(cx, buf), |n| *n > 0)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_io(cx, |io, cx| io.poll_write_vectored(cx, bufs), |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_io(cx, |io, cx| io.poll_flush(cx), |_| false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_io(cx, |io, cx| io.poll_shutdown(cx), |_| false)
    }
}
