//! [`KafkaConsumer::from_config`]: the consumer driver built straight from a [`ClientConfig`],
//! with the settings it depends on checked before anything is consumed.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext, DefaultConsumerContext, StreamConsumer};

use super::context::EventscopeContext;
use super::error::ConfigError;
use super::KafkaConsumer;
use crate::metrics::Metrics;

impl KafkaConsumer {
    /// Creates the `rdkafka` consumer from `config`, with an [`EventscopeContext`] reporting
    /// into `metrics`, and the driver for it; start from
    /// [`consumer_config`](super::consumer_config). Subscribe with
    /// [`subscribe`](Self::subscribe), or assign partitions through
    /// [`consumer`](Self::consumer).
    ///
    /// ```no_run
    /// use eventscope::kafka::{self, KafkaConsumer};
    /// use eventscope::metrics::Metrics;
    ///
    /// # fn main() -> Result<(), eventscope::kafka::error::ConfigError> {
    /// let config = kafka::consumer_config("127.0.0.1:9092", "billing");
    /// let consumer = KafkaConsumer::from_config(&config, &Metrics::new())?.subscribe(&["orders"])?;
    /// # let _ = consumer;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// When `group.id` is missing ([`ConfigError::MissingGroupId`]), `enable.auto.offset.store`
    /// is not `false` ([`ConfigError::AutoOffsetStore`]: offsets of unprocessed messages would
    /// be committed), `statistics.interval.ms` is not set
    /// ([`ConfigError::MissingStatisticsInterval`]: no lag; set it to `0` to go without), or
    /// librdkafka rejects the configuration ([`ConfigError::Client`]).
    /// `enable.auto.commit` may stay on: it only commits stored offsets, and the driver stores
    /// only what was processed.
    pub fn from_config(config: &ClientConfig, metrics: &Metrics) -> Result<Self, ConfigError> {
        Self::from_config_with_context(config, metrics, DefaultConsumerContext)
    }
}

impl<C: ConsumerContext + 'static> KafkaConsumer<C> {
    /// Like [`from_config`](KafkaConsumer::from_config), delegating logging, errors, OAuth and
    /// commit callbacks to your own consumer context (see [`EventscopeContext::wrap`]).
    ///
    /// # Errors
    ///
    /// As for [`from_config`](KafkaConsumer::from_config).
    pub fn from_config_with_context(
        config: &ClientConfig,
        metrics: &Metrics,
        context: C,
    ) -> Result<Self, ConfigError> {
        check(config)?;
        let consumer: StreamConsumer<EventscopeContext<C>> = config
            .create_with_context(EventscopeContext::wrap(config, metrics.clone(), context))?;
        Ok(Self::new(consumer))
    }

    /// Subscribes the consumer to `topics` (replacing an earlier subscription); partitions are
    /// assigned by the group.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Client`] when librdkafka refuses the subscription (e.g. an invalid
    /// topic pattern).
    pub fn subscribe(self, topics: &[&str]) -> Result<Self, ConfigError> {
        self.consumer().subscribe(topics)?;
        Ok(self)
    }
}

/// The settings the driver and the lag source depend on.
fn check(config: &ClientConfig) -> Result<(), ConfigError> {
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
    use crate::kafka::consumer_config;

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
    fn a_config_librdkafka_rejects_is_a_client_error() {
        let mut config = consumer_config("127.0.0.1:9092", "g");
        config.set("no.such.setting", "1");
        let error = KafkaConsumer::from_config(&config, &Metrics::new()).unwrap_err();
        assert!(matches!(error, ConfigError::Client(_)), "{error}");
    }
}
