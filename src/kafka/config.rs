use rdkafka::config::ClientConfig;

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
