//! A dedup store in Redis, shared by every consumer of a group.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::error::StoreError;
use super::store::{Claim, ClaimToken, DedupKey, DedupStore};

/// How long one store operation may take before it counts as a failure, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// The value of a done marker. Claims hold a token in hex, which never reads `done`.
const DONE: &str = "done";

/// Deletes a claim only if it still holds our token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// A dedup store in Redis (or a server speaking its protocol, 7.0 or later): the consumers of
/// a group share what was processed, across processes and restarts.
///
/// Keys are `eventscope:dedup:{group}:{id}` (SPEC §8), one per message:
///
/// - a claim is `SET key {token} NX PX {lease} GET`: one round trip both claims an absent key
///   and, when the key exists, tells a done marker (`done`) from another delivery's claim;
/// - a done marker is `SET key done PX {ttl}`;
/// - a failed handler's claim is removed by a script that deletes the key only if it still
///   holds this delivery's token, so a delivery whose lease ran out never deletes the claim of
///   the delivery that came after it.
///
/// It runs over a [`ConnectionManager`], which multiplexes (concurrent operations share one
/// connection, pipelined) and reconnects in the background. Every operation is bounded by a
/// timeout ([`timeout`](Self::timeout), default 1 s): a server that is down or stalled makes it
/// fail fast, and the layer fails closed (or open, if told).
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    release: Arc<redis::Script>,
    timeout: Duration,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://127.0.0.1:6379`) with a [`ConnectionManager`] that gives up
    /// a connection attempt after the timeout and reconnects with a short backoff (at most
    /// 1 s between attempts), so that operations fail fast while the server is away and work
    /// again soon after it is back.
    ///
    /// # Errors
    ///
    /// When the URL is invalid or the server cannot be reached now.
    pub async fn connect(url: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(DEFAULT_TIMEOUT))
            .set_response_timeout(Some(DEFAULT_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self::new(connection))
    }

    /// A store over a connection manager you configured.
    pub fn new(connection: ConnectionManager) -> Self {
        Self {
            connection,
            release: Arc::new(redis::Script::new(RELEASE)),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Bounds every store operation (default 1 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs `operation` on a handle of the connection, within the timeout.
    fn run<T, F>(&self, operation: impl FnOnce(ConnectionManager) -> F) -> BoxFuture<T>
    where
        F: Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        let (future, timeout) = (operation(self.connection.clone()), self.timeout);
        Box::pin(async move {
            match tokio::time::timeout(timeout, future).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(error)) => Err(StoreError::new(error)),
                Err(elapsed) => Err(StoreError::new(format!(
                    "no answer from redis within {timeout:?} ({elapsed})"
                ))),
            }
        })
    }
}

fn millis(duration: Duration) -> u64 {
    // Redis refuses 0 for PX.
    (duration.as_millis() as u64).max(1)
}

fn token_text(token: ClaimToken) -> String {
    format!("{:016x}", token.get())
}

impl DedupStore for RedisStore {
    type ClaimFuture = BoxFuture<Claim>;
    type CompleteFuture = BoxFuture<()>;
    type ReleaseFuture = BoxFuture<()>;

    fn claim(&self, key: &DedupKey, token: ClaimToken, lease: Duration) -> Self::ClaimFuture {
        let mut command = redis::cmd("SET");
        command
            .arg(key.as_str())
            .arg(token_text(token))
            .arg("NX")
            .arg("PX")
            .arg(millis(lease))
            .arg("GET");
        self.run(|mut connection| async move {
            let previous: Option<Vec<u8>> = command.query_async(&mut connection).await?;
            Ok(match previous {
                None => Claim::Claimed,
                Some(value) if value == DONE.as_bytes() => Claim::Duplicate,
                Some(_) => Claim::InFlight,
            })
        })
    }

    fn complete(&self, key: &DedupKey, ttl: Duration) -> Self::CompleteFuture {
        let mut command = redis::cmd("SET");
        command
            .arg(key.as_str())
            .arg(DONE)
            .arg("PX")
            .arg(millis(ttl));
        self.run(|mut connection| async move {
            let () = command.query_async(&mut connection).await?;
            Ok(())
        })
    }

    fn release(&self, key: &DedupKey, token: ClaimToken) -> Self::ReleaseFuture {
        let (script, key, token) = (Arc::clone(&self.release), key.clone(), token_text(token));
        self.run(|mut connection| async move {
            let _deleted: i64 = script
                .key(key.as_str())
                .arg(token)
                .invoke_async(&mut connection)
                .await?;
            Ok(())
        })
    }
}
