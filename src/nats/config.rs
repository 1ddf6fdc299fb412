//! The recommended starting point for a JetStream pull consumer.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy};

/// How many times a message is delivered at most, in [`consumer_config`].
pub const MAX_DELIVER: i64 = 10;

/// A durable pull consumer's configuration that suits
/// [`JetStreamConsumer`](super::JetStreamConsumer): your starting point, to adjust with
/// struct update syntax (`pull::Config { filter_subject: "orders.>".into(), ..consumer_config("billing") }`).
///
/// Sets the durable name, explicit acks (required), `ack_wait` 30 s, and `max_deliver`
/// [`MAX_DELIVER`] (10): a message is delivered at most ten times, so a message the client
/// cannot read (a header that is not UTF-8, see the module docs), which is delivered again
/// every `ack_wait` and never settled, stops stalling the consumer after about five minutes.
/// A `Retry` decision counts as a delivery too: a retry policy with more attempts needs a
/// higher `max_deliver`.
pub fn consumer_config(durable: &str) -> pull::Config {
    pull::Config {
        durable_name: Some(durable.to_owned()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_deliver: MAX_DELIVER,
        ..pull::Config::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_with_explicit_acks_and_bounded_deliveries() {
        let config = consumer_config("billing");
        assert_eq!(config.durable_name.as_deref(), Some("billing"));
        assert_eq!(config.ack_policy, AckPolicy::Explicit);
        assert_eq!(config.max_deliver, MAX_DELIVER);
    }
}
