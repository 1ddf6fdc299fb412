//! Kafka client configurations: the recommended starting points, the settings the consumer
//! relies on (checked before anything is consumed), and what it reads from them.

use std::sync::Arc;

use rdkafka::config::ClientConfig;

use super::error::ConfigError;
use super::record::ServerAddress;

/// A consumer configuration that suits [`KafkaConsumer`](super::KafkaConsumer): your starting
/// point, to adjust with [`ClientConfig::set`].
///
/// Sets `bootstrap.servers`, `group.id`, `enable.auto.offset.store=false` (required: only
/// processed messages are stored), `statistics.interval.ms=1000` (for lag) and
/// `auto.offset.reset=earliest` (a new group starts at the oldest message).
pub fn consumer_config(bootstrap_servers: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("group.id", group)
        .set("enable.auto.offset.store", "false")
        .set("statistics.interval.ms", "1000")
        .set("auto.offset.reset", "earliest");
    config
}

/// A producer configuration: `bootstrap.servers` and nothing else, to adjust with
/// [`ClientConfig::set`].
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
    pub(crate) server: Option<Arc<ServerAddress>>,
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
            server: config
                .get("bootstrap.servers")
                .or_else(|| config.get("metadata.broker.list"))
                .and_then(ServerAddress::from_bootstrap)
                .map(Arc::new),
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
        assert_eq!(s.server.as_ref().and_then(|s| s.port), Some(9092));
        assert!(Settings::from_config(&ClientConfig::new()).read_committed);
    }
}
