//! A `/metrics` endpoint for Prometheus, on `127.0.0.1:9464` unless told otherwise.
//!
//! Built on `axum`: a well-kept, small HTTP server on the same `hyper`/`tower` stack the rest of
//! eventscope uses, so it adds little to the build.
//!
//! # Example
//!
//! ```
//! use eventscope::metrics::Metrics;
//! use eventscope::server::MetricsServer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let metrics = Metrics::new();
//! let server = MetricsServer::bind(metrics.registry().clone(), "127.0.0.1:0".parse().unwrap()).await?;
//! println!("scrape http://{}/metrics", server.local_addr());
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use prometheus::Registry;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The default listen address: loopback only, the port OpenTelemetry's Prometheus exporter uses.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9464));

/// Content type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A running `/metrics` server; stops on [`shutdown`](Self::shutdown) or when dropped.
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsServer")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl MetricsServer {
    /// Serves `registry` on `addr` (see [`DEFAULT_ADDR`]); port 0 picks a free port.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound.
    pub async fn bind(registry: Registry, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    (
                        [(CONTENT_TYPE, TEXT_FORMAT)],
                        crate::metrics::encode_registry(&registry),
                    )
                }
            }),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            local_addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting scrapes and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "metrics server ended with an error"),
                Err(e) => tracing::warn!(error = %e, "metrics server task failed"),
                Ok(Ok(())) => {}
            }
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
