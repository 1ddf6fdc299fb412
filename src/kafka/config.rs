//! Kafka client configurations: the recommended starting points, the settings the consumer
//! relies on (checked before anything is consumed), and what it reads from them.

use std::sync::Arc;

use rdkafka::config::ClientConfig;

use rdkafka::bindings as rdsys;
use rdkafka::client::{Client, ClientContext};

use super::error::ConfigError;
use super::record::ServerAddress;

/// Where a client talks to and what it calls itself, for `server.address`, `server.port` and
/// `messaging.client.id` on its spans.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) server: Option<ServerAddress>,
    pub(crate) client_id: Arc<str>,
}

impl Endpoint {
    /// From a configuration: the first `bootstrap.servers` entry and `client.id` (librdkafka's
    /// default is `rdkafka`).
    pub(crate) fn from_config(config: &ClientConfig) -> Self {
        Self::from_settings(
            config
                .get("bootstrap.servers")
                .or_else(|| config.get("metadata.broker.list")),
            config.get("client.id"),
        )
    }

    /// From a live client's own configuration.
    pub(crate) fn of<C: ClientContext>(client: &Client<C>) -> Self {
        let bootstrap = setting(client, c"bootstrap.servers");
        let client_id = setting(client, c"client.id");
        Self::from_settings(bootstrap.as_deref(), client_id.as_deref())
    }

    /// `server.address`, `server.port` and `messaging.client.id`.
    pub(crate) fn attributes(&self, attrs: &mut crate::message::SpanAttributes) {
        use opentelemetry_semantic_conventions::attribute as semconv;
        if let Some(server) = &self.server {
            attrs.value(
                semconv::SERVER_ADDRESS,
                opentelemetry::StringValue::from(Arc::clone(&server.host)),
            );
            if let Some(port) = server.port {
                attrs.int(semconv::SERVER_PORT, i64::from(port));
            }
        }
        attrs.value(
            semconv::MESSAGING_CLIENT_ID,
            opentelemetry::StringValue::from(Arc::clone(&self.client_id)),
        );
    }

    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self::from_settings(None, None)
    }

    fn from_settings(bootstrap: Option<&str>, client_id: Option<&str>) -> Self {
        Self {
            server: bootstrap.and_then(ServerAddress::from_bootstrap),
            client_id: Arc::from(client_id.filter(|id| !id.is_empty()).unwrap_or("rdkafka")),
        }
    }
}

/// A setting of a live client, read back from librdkafka.
///
/// `rdkafka` keeps no copy of the configuration a client was created from, and a
/// `FutureProducer` or `StreamConsumer` handed to eventscope must not need its config passed
/// again; librdkafka keeps it and `rd_kafka_conf` reads it. `rdkafka` has no safe wrapper for
/// that (a `Client::config_value` would remove this function's `unsafe`).
#[allow(unsafe_code)]
fn setting<C: ClientContext>(client: &Client<C>, key: &std::ffi::CStr) -> Option<String> {
    let rk = client.native_ptr();
    // SAFETY: `rk` is the handle of `client`, live while it is borrowed. `rd_kafka_conf` returns
    // the client's own configuration, owned by librdkafka for the client's life and only read
    // here. `rd_kafka_conf_get` is asked for the size first (null buffer), then writes at most
    // that many bytes, the terminating NUL included, into a buffer of that size.
    unsafe {
        let conf = rdsys::rd_kafka_conf(rk);
        if conf.is_null() {
            return None;
        }
        let mut size = 0usize;
        let ok = rdsys::rd_kafka_conf_res_t::RD_KAFKA_CONF_OK;
        if rdsys::rd_kafka_conf_get(conf, key.as_ptr(), std::ptr::null_mut(), &mut size) != ok {
            return None;
        }
        let mut buffer = vec![0u8; size.max(1)];
        if rdsys::rd_kafka_conf_get(conf, key.as_ptr(), buffer.as_mut_ptr().cast(), &mut size) != ok
        {
            return None;
        }
        std::ffi::CStr::from_bytes_until_nul(&buffer)
            .ok()?
            .to_str()
            .ok()
            .map(str::to_owned)
    }
}

/// A consumer configuration that suits [`KafkaConsumer`](super::KafkaConsumer): your starting
/// point, to adjust with [`ClientConfig::set`](https://docs.rs/rdkafka/0.39/rdkafka/config/struct.ClientConfig.html#method.set) (the `rdkafka` re-exported as [`kafka::rdkafka`](crate::kafka::rdkafka)).
///
/// Sets `bootstrap.servers`, `group.id`, `enable.auto.offset.store=false` (required: only
/// processed messages are stored), `statistics.interval.ms=1000` (for lag),
/// `auto.offset.reset=earliest` (a new group starts at the oldest message) and
/// `fetch.queue.backoff.ms=10`.
///
/// The last: once a consumer falls `queued.min.messages` (100 000) or
/// `queued.max.messages.kbytes` (64 MiB) behind what librdkafka fetched, librdkafka fetches
/// nothing more for `fetch.queue.backoff.ms`, 1 s by default, even when the consumer has
/// emptied its queue long before. A consumer a little slower than its broker then idles for
/// most of that second: in `benches/kafka_throughput.rs` such runs of 200 000 messages took
/// about a second longer (110 000 messages/s instead of 230 000; see `DEVELOPERS.md`). With
/// 10 ms it fetches again as soon as there is room.
pub fn consumer_config(bootstrap_servers: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("group.id", group)
        .set("enable.auto.offset.store", "false")
        .set("statistics.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("fetch.queue.backoff.ms", "10");
    config
}

/// A producer configuration: `bootstrap.servers` and nothing else, to adjust with
/// [`ClientConfig::set`](https://docs.rs/rdkafka/0.39/rdkafka/config/struct.ClientConfig.html#method.set) (the `rdkafka` re-exported as [`kafka::rdkafka`](crate::kafka::rdkafka)).
pub fn producer_config(bootstrap_servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap_servers);
    config
}

/// What the context knows from the consumer's configuration.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) group: Arc<str>,
    pub(crate) read_committed: bool,
    pub(crate) reset_earliest: bool,
    pub(crate) endpoint: Arc<Endpoint>,
}

impl Settings {
    pub(crate) fn from_config(config: &ClientConfig) -> Self {
        let group = config.get("group.id").unwrap_or_default();
        Self {
            group: Arc::from(group),
            read_committed: config.get("isolation.level") != Some("read_uncommitted"),
            reset_earliest: matches!(
                config.get("auto.offset.reset"),
                Some("earliest" | "smallest" | "beginning")
            ),
            endpoint: Arc::new(Endpoint::from_config(config)),
        }
    }
}

/// The settings the driver and the lag source depend on.
pub(crate) fn check(config: &ClientConfig) -> Result<(), ConfigError> {
    if config.get("group.id").is_none_or(str::is_empty) {
        return Err(ConfigError::MissingGroupId);
    }
    match config.get("enable.auto.offset.store").map(parse_bool) {
        Some(Some(false)) => {}
        Some(None) => return Err(invalid(config, "enable.auto.offset.store")),
        None | Some(Some(true)) => return Err(ConfigError::AutoOffsetStore),
    }
    match config.get("statistics.interval.ms").map(str::parse::<u32>) {
        Some(Ok(_)) => Ok(()),
        Some(Err(_)) => Err(invalid(config, "statistics.interval.ms")),
        None => Err(ConfigError::MissingStatisticsInterval),
    }
}

/// librdkafka's spellings of a boolean.
fn parse_bool(value: &str) -> Option<bool> {
    match value.trim() {
        "true" | "t" | "1" => Some(true),
        "false" | "f" | "0" => Some(false),
        _ => None,
    }
}

fn invalid(config: &ClientConfig, key: &'static str) -> ConfigError {
    ConfigError::InvalidValue {
        key,
        value: config.get(key).unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recommended_config_passes() {
        check(&consumer_config("127.0.0.1:9092", "g")).expect("consumer_config is usable");
        let mut no_lag = consumer_config("127.0.0.1:9092", "g");
        no_lag.set("statistics.interval.ms", "0");
        check(&no_lag).expect("lag may be switched off explicitly");
    }

    #[test]
    fn settings_that_lose_messages_or_lag_are_refused() {
        let with = |key: &str, value: &str| {
            let mut config = consumer_config("127.0.0.1:9092", "g");
            config.set(key, value);
            check(&config)
        };
        assert!(matches!(
            with("group.id", ""),
            Err(ConfigError::MissingGroupId)
        ));
        assert!(matches!(
            with("enable.auto.offset.store", "true"),
            Err(ConfigError::AutoOffsetStore)
        ));
        assert!(matches!(
            with("enable.auto.offset.store", "maybe"),
            Err(ConfigError::InvalidValue {
                key: "enable.auto.offset.store",
                ..
            })
        ));
        assert!(matches!(
            with("statistics.interval.ms", "soon"),
            Err(ConfigError::InvalidValue {
                key: "statistics.interval.ms",
                ..
            })
        ));
        let mut bare = ClientConfig::new();
        bare.set("group.id", "g");
        assert!(matches!(check(&bare), Err(ConfigError::AutoOffsetStore)));
        bare.set("enable.auto.offset.store", "false");
        assert!(matches!(
            check(&bare),
            Err(ConfigError::MissingStatisticsInterval)
        ));
    }

    #[test]
    fn settings_come_from_the_config() {
        let mut config = ClientConfig::new();
        config
            .set("group.id", "billing")
            .set("bootstrap.servers", "127.0.0.1:9092")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_uncommitted");
        let s = Settings::from_config(&config);
        assert_eq!(&*s.group, "billing");
        assert!(!s.read_committed && s.reset_earliest);
        assert_eq!(s.endpoint.server.as_ref().and_then(|s| s.port), Some(9092));
        assert_eq!(&*s.endpoint.client_id, "rdkafka");
        assert!(Settings::from_config(&ClientConfig::new()).read_committed);
    }
}
