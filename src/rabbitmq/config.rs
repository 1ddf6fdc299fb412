//! What the RabbitMQ adapter takes from the URI it connects with, and the consumer's settings.

use std::sync::Arc;
use std::time::Duration;

use lapin::types::ShortString;
use lapin::uri::AMQPUri;
use lapin::ConnectionProperties;

/// The broker a client talks to, for `server.address` / `server.port`. Built from the URI's
/// host and port only: the URI's user info (the password) is never kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServerAddress {
    pub(crate) host: Arc<str>,
    pub(crate) port: u16,
}

impl ServerAddress {
    /// Host and port of an `amqp://` or `amqps://` URI (default ports 5672 and 5671); `None`
    /// for anything else. An IPv6 literal keeps its address (lapin's own parser reads it as
    /// `localhost`).
    pub(crate) fn from_uri(uri: &str) -> Option<Self> {
        let (scheme, rest) = uri.trim().split_once("://")?;
        let default_port = if scheme.eq_ignore_ascii_case("amqp") {
            5672
        } else if scheme.eq_ignore_ascii_case("amqps") {
            5671
        } else {
            return None;
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host_port = authority
            .rsplit_once('@')
            .map_or(authority, |(_userinfo, host)| host);
        let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        } else {
            match host_port.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            }
        };
        let port = match port {
            Some(port) if !port.is_empty() => port.parse().ok()?,
            _ => default_port,
        };
        // lapin connects to `localhost` when the URI names no host.
        let host = if host.is_empty() { "localhost" } else { host };
        Some(Self {
            host: Arc::from(host),
            port,
        })
    }
}

/// Most time between two reconnect attempts of a consumer, by default.
pub(crate) const DEFAULT_MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);
/// How often a consumer's lag is read, by default.
pub(crate) const DEFAULT_LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Everything a consumer needs to connect, again and again.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) uri: AMQPUri,
    pub(crate) properties: ConnectionProperties,
    pub(crate) queue: Arc<str>,
    pub(crate) queue_name: ShortString,
    pub(crate) server: Option<Arc<ServerAddress>>,
    pub(crate) lag_interval: Duration,
    pub(crate) max_reconnect_delay: Duration,
}

impl std::fmt::Debug for Settings {
    // Not the URI: it holds the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("queue", &self.queue)
            .field("server", &self.server)
            .field("lag_interval", &self.lag_interval)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &str) -> Option<(String, u16)> {
        ServerAddress::from_uri(uri).map(|s| (s.host.to_string(), s.port))
    }

    #[test]
    fn host_and_port_without_the_password() {
        assert_eq!(
            parse("amqp://guest:secret@127.0.0.1:5672/%2f"),
            Some(("127.0.0.1".into(), 5672))
        );
        assert_eq!(
            parse("amqps://user:p%40ss@broker.example.com/vh?heartbeat=10"),
            Some(("broker.example.com".into(), 5671))
        );
        assert_eq!(parse("amqp://localhost"), Some(("localhost".into(), 5672)));
        assert_eq!(parse("amqp://"), Some(("localhost".into(), 5672)));
        assert_eq!(parse("AMQP://[::1]:5673/%2f"), Some(("::1".into(), 5673)));
        assert_eq!(
            parse("amqp://a:b@[fe80::1]"),
            Some(("fe80::1".into(), 5672))
        );
        assert_eq!(parse("http://localhost"), None);
        assert_eq!(parse("amqp://host:port"), None);
        let address = ServerAddress::from_uri("amqp://guest:secret@h:1").unwrap();
        assert!(!format!("{address:?}").contains("secret"));
    }
}
