//! The broker the pipeline runs on, behind one small trait so the services don't care.

use std::future::Future;

use opentelemetry_sdk::trace::SdkTracerProvider;
use std::pin::Pin;

use eventscope::classify::Classifier;
use eventscope::consume::ConsumeError;
use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
use eventscope::message::{IncomingMessage, OutgoingMessage};
use eventscope::metrics::Metrics;
use eventscope::publish::PublishLayer;
use eventscope::BoxError;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub type Publisher<R> = BoxCloneSyncService<R, (), BoxError>;
pub type Handler<M> = BoxCloneSyncService<M, (), BoxError>;

/// A publisher as the pipeline holds it: its receipt dropped, its error boxed.
fn boxed<R, S>(service: S) -> Publisher<R>
where
    R: 'static,
    S: tower::Service<R> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(service.map_response(|_| ()).map_err(Into::into))
}

pub trait Bus: Clone + Send + Sync + 'static {
    type Record: OutgoingMessage + Send + 'static;
    type Message: IncomingMessage + Clone + Send + Sync + 'static;

    fn describe(&self) -> String;
    fn record(
        &self,
        topic: &str,
        key: &str,
        payload: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Self::Record;
    /// A publisher wrapped in eventscope's publish layer.
    /// `layer` wrapped around this broker's publisher.
    fn publisher(&self, layer: PublishLayer) -> Publisher<Self::Record>;
    /// A plain publisher: a legacy client that knows nothing of tracing.
    fn raw_publisher(&self) -> Publisher<Self::Record>;
    /// Runs `handler` wrapped in the consumer's process layer, which shares the consumer's
    /// metrics and classifier; what fails for good goes to `{topic}.dlq`.
    #[allow(clippy::too_many_arguments)] // the demo's one seam between a service and its broker
    fn consume(
        &self,
        group: &str,
        topic: &str,
        handler: Handler<Self::Message>,
        metrics: &Metrics,
        classifier: Classifier,
        provider: Option<&SdkTracerProvider>,
        stop: BoxFuture<()>,
    ) -> BoxFuture<Result<(), ConsumeError>>;
}

#[derive(Clone, Debug)]
pub struct Memory(pub MemoryBroker);

impl Bus for Memory {
    type Record = MemoryRecord;
    type Message = MemoryMessage;

    fn describe(&self) -> String {
        "the embedded in-memory broker".into()
    }

    fn record(
        &self,
        topic: &str,
        key: &str,
        payload: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> MemoryRecord {
        headers
            .iter()
            .fold(MemoryRecord::new(topic, payload).key(key), |r, (n, v)| {
                r.header(*n, *v)
            })
    }

    fn publisher(&self, layer: PublishLayer) -> Publisher<MemoryRecord> {
        boxed(layer.layer(self.0.publisher()))
    }

    fn raw_publisher(&self) -> Publisher<MemoryRecord> {
        boxed(self.0.publisher())
    }

    fn consume(
        &self,
        group: &str,
        topic: &str,
        handler: Handler<MemoryMessage>,
        metrics: &Metrics,
        classifier: Classifier,
        provider: Option<&SdkTracerProvider>,
        stop: BoxFuture<()>,
    ) -> BoxFuture<Result<(), ConsumeError>> {
        let mut consumer = self
            .0
            .consumer(group)
            .subscribe([topic])
            .metrics(metrics.clone())
            .classify_errors(classifier)
            .dead_letter(self.0.publisher());
        if let Some(provider) = provider {
            consumer = consumer.tracer_provider(provider);
        }
        Box::pin(consumer.run(handler, stop))
    }
}

#[cfg(feature = "kafka")]
pub use self::kafka_bus::Kafka;

#[cfg(feature = "kafka")]
mod kafka_bus {
    use std::time::Duration;

    use eventscope::classify::Classifier;
    use eventscope::consume::ConsumeError;
    use eventscope::kafka::{
        consumer_config, producer_config, EventscopeContext, KafkaConsumer, KafkaErrorClassifier,
        KafkaMessage, KafkaPublisher, KafkaRecord,
    };
    use eventscope::metrics::Metrics;
    use eventscope::publish::PublishLayer;
    use eventscope::BoxError;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::FutureProducer;
    use rdkafka::types::RDKafkaErrorCode;
    use tower::Layer;

    use super::{boxed, BoxFuture, Bus, Handler, Publisher};

    /// The pipeline over a Kafka-compatible broker.
    #[derive(Clone)]
    pub struct Kafka {
        bootstrap: String,
        producer: FutureProducer,
    }

    impl Kafka {
        /// Connects and creates the topics (3 partitions each) when they do not exist yet.
        pub async fn connect(bootstrap: &str, topics: &[&str]) -> Result<Self, BoxError> {
            let admin: AdminClient<DefaultClientContext> = producer_config(bootstrap).create()?;
            let new: Vec<NewTopic<'_>> = topics
                .iter()
                .map(|t| NewTopic::new(t, 3, TopicReplication::Fixed(1)))
                .collect();
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            for result in admin.create_topics(&new, &options).await? {
                match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => return Err(format!("creating {topic}: {code}").into()),
                }
            }
            Ok(Self {
                bootstrap: bootstrap.to_owned(),
                producer: producer_config(bootstrap).create()?,
            })
        }
    }

    impl Bus for Kafka {
        type Record = KafkaRecord;
        type Message = KafkaMessage;

        fn describe(&self) -> String {
            format!("Kafka at {}", self.bootstrap)
        }

        fn record(
            &self,
            topic: &str,
            key: &str,
            payload: Vec<u8>,
            headers: &[(&str, &str)],
        ) -> KafkaRecord {
            headers
                .iter()
                .fold(KafkaRecord::new(topic, payload).key(key), |r, (n, v)| {
                    r.header(*n, *v)
                })
        }

        fn publisher(&self, layer: PublishLayer) -> Publisher<KafkaRecord> {
            boxed(
                layer
                    .classify_errors(KafkaErrorClassifier)
                    .layer(KafkaPublisher::new(self.producer.clone())),
            )
        }

        fn raw_publisher(&self) -> Publisher<KafkaRecord> {
            boxed(KafkaPublisher::new(self.producer.clone()))
        }

        fn consume(
            &self,
            group: &str,
            topic: &str,
            handler: Handler<KafkaMessage>,
            metrics: &Metrics,
            classifier: Classifier,
            provider: Option<&opentelemetry_sdk::trace::SdkTracerProvider>,
            stop: BoxFuture<()>,
        ) -> BoxFuture<Result<(), ConsumeError>> {
            let config = consumer_config(&self.bootstrap, group);
            let consumer: Result<StreamConsumer<EventscopeContext>, _> =
                config.create_with_context(EventscopeContext::new(&config));
            let consumer = match consumer.and_then(|c| c.subscribe(&[topic]).map(|()| c)) {
                Ok(consumer) => consumer,
                Err(e) => return Box::pin(async move { Err(ConsumeError::Broker(e.into())) }),
            };
            let mut driver = KafkaConsumer::new(consumer)
                .metrics(metrics.clone())
                .classify_errors(classifier)
                .dead_letter(KafkaPublisher::new(self.producer.clone()));
            if let Some(provider) = provider {
                driver = driver.tracer_provider(provider);
            }
            Box::pin(driver.run(handler, stop))
        }
    }
}

#[cfg(feature = "nats")]
pub use self::nats_bus::Nats;

#[cfg(feature = "nats")]
mod nats_bus {
    use std::time::Duration;

    use eventscope::classify::Classifier;
    use eventscope::consume::ConsumeError;
    use eventscope::metrics::Metrics;
    use eventscope::nats::async_nats::jetstream::{self, consumer::pull, stream};
    use eventscope::nats::{
        async_nats, consumer_config, JetStreamConsumer, JetStreamMessage, JetStreamPublisher,
        NatsErrorClassifier, NatsRecord,
    };
    use eventscope::publish::PublishLayer;
    use eventscope::BoxError;
    use tower::Layer;

    use super::{boxed, BoxFuture, Bus, Handler, Publisher};

    /// The pipeline over JetStream: a stream per topic (`EVENTSCOPE_DEMO_ORDERS` captures
    /// `orders`), a durable pull consumer per service.
    #[derive(Clone)]
    pub struct Nats {
        url: String,
        js: jetstream::Context,
    }

    /// The stream that holds `topic`.
    pub fn stream_name(topic: &str) -> String {
        format!(
            "EVENTSCOPE_DEMO_{}",
            topic.to_ascii_uppercase().replace('.', "_")
        )
    }

    impl Nats {
        /// Connects and creates the streams (kept an hour) when they do not exist yet.
        pub async fn connect(url: &str, topics: &[&str]) -> Result<Self, BoxError> {
            let client = async_nats::connect(url).await?;
            let js = jetstream::new(client);
            for topic in topics {
                js.get_or_create_stream(stream::Config {
                    name: stream_name(topic),
                    subjects: vec![(*topic).to_owned()],
                    max_age: Duration::from_secs(3600),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("creating the stream of {topic}: {e}"))?;
            }
            Ok(Self {
                url: url.to_owned(),
                js,
            })
        }
    }

    impl Bus for Nats {
        type Record = NatsRecord;
        type Message = JetStreamMessage;

        fn describe(&self) -> String {
            format!("JetStream at {}", self.url)
        }

        /// NATS has no keys: the key is left out.
        fn record(
            &self,
            topic: &str,
            _key: &str,
            payload: Vec<u8>,
            headers: &[(&str, &str)],
        ) -> NatsRecord {
            headers
                .iter()
                .fold(NatsRecord::new(topic, payload), |r, (n, v)| {
                    r.header(*n, *v)
                })
        }

        fn publisher(&self, layer: PublishLayer) -> Publisher<NatsRecord> {
            boxed(
                layer
                    .classify_errors(NatsErrorClassifier)
                    .layer(JetStreamPublisher::new(self.js.clone())),
            )
        }

        fn raw_publisher(&self) -> Publisher<NatsRecord> {
            boxed(JetStreamPublisher::new(self.js.clone()))
        }

        fn consume(
            &self,
            group: &str,
            topic: &str,
            handler: Handler<JetStreamMessage>,
            metrics: &Metrics,
            classifier: Classifier,
            provider: Option<&opentelemetry_sdk::trace::SdkTracerProvider>,
            stop: BoxFuture<()>,
        ) -> BoxFuture<Result<(), ConsumeError>> {
            let (js, stream, group, topic) = (
                self.js.clone(),
                stream_name(topic),
                group.to_owned(),
                topic.to_owned(),
            );
            let (metrics, provider) = (metrics.clone(), provider.cloned());
            Box::pin(async move {
                let broker = |e: BoxError| ConsumeError::Broker(e);
                let pull = js
                    .get_stream(&stream)
                    .await
                    .map_err(|e| broker(e.into()))?
                    .get_or_create_consumer(
                        &group,
                        pull::Config {
                            filter_subject: topic,
                            ..consumer_config(&group)
                        },
                    )
                    .await
                    .map_err(|e| broker(e.into()))?;
                let dead_letters = JetStreamPublisher::new(js.clone());
                let mut consumer = JetStreamConsumer::new(js, pull)
                    .map_err(|e| broker(e.into()))?
                    .metrics(metrics)
                    .classify_errors(classifier)
                    .lag_interval(Duration::from_secs(1))
                    .dead_letter(dead_letters);
                if let Some(provider) = &provider {
                    consumer = consumer.tracer_provider(provider);
                }
                // Boxed where its types are concrete (the run future's bounds are higher-ranked).
                let run: BoxFuture<Result<(), ConsumeError>> =
                    Box::pin(consumer.run(handler, stop));
                run.await
            })
        }
    }
}

#[cfg(feature = "rabbitmq")]
pub use self::rabbit_bus::Rabbit;

#[cfg(feature = "rabbitmq")]
mod rabbit_bus {
    use std::sync::Arc;

    use eventscope::classify::Classifier;
    use eventscope::consume::ConsumeError;
    use eventscope::metrics::Metrics;
    use eventscope::publish::PublishLayer;
    use eventscope::rabbitmq::lapin::options::{
        ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions,
    };
    use eventscope::rabbitmq::lapin::types::{AMQPValue, FieldTable};
    use eventscope::rabbitmq::lapin::{Connection, ConnectionProperties, ExchangeKind};
    use eventscope::rabbitmq::{
        RabbitConsumer, RabbitErrorClassifier, RabbitMessage, RabbitPublisher, RabbitRecord,
    };
    use eventscope::BoxError;
    use tower::Layer;

    use super::{boxed, BoxFuture, Bus, Handler, Publisher};

    /// The pipeline over RabbitMQ: a fanout exchange per topic, and per consuming service a
    /// queue of its name (its consumer group) bound to it, so every service gets every event.
    /// Topics nobody consumes here get a queue of their name too, capped, so a publish is
    /// routed (records are mandatory). Queues go away half an hour after the demo ends, and the
    /// exchanges with them.
    #[derive(Clone)]
    pub struct Rabbit {
        uri: String,
        publisher: RabbitPublisher,
        /// Keeps the publishing connection open.
        _connection: Arc<Connection>,
    }

    impl Rabbit {
        /// Connects, declares the exchanges of `topics` and a queue for each `(queue, topic)`
        /// of `consumers` (emptied: the demo starts afresh), and a capped queue for each topic
        /// no consumer reads.
        pub async fn connect(
            uri: &str,
            topics: &[&str],
            consumers: &[(&str, &str)],
        ) -> Result<Self, BoxError> {
            let connection = Connection::connect(
                uri,
                ConnectionProperties::default().with_connection_name("eventscope-demo".into()),
            )
            .await?;
            let channel = connection.create_channel().await?;
            let mut arguments = FieldTable::default();
            arguments.insert("x-expires".into(), AMQPValue::LongInt(30 * 60 * 1000));
            for topic in topics {
                channel
                    .exchange_declare(
                        (*topic).into(),
                        ExchangeKind::Fanout,
                        // Gone once its queues are (they expire after the demo).
                        ExchangeDeclareOptions {
                            auto_delete: true,
                            ..ExchangeDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
            }
            let sinks = topics
                .iter()
                .filter(|t| !consumers.iter().any(|(_, topic)| topic == *t))
                .map(|t| (*t, *t));
            for (queue, topic) in consumers.iter().copied().chain(sinks) {
                let mut arguments = arguments.clone();
                if queue == topic {
                    arguments.insert("x-max-length".into(), AMQPValue::LongInt(10_000));
                }
                channel
                    .queue_declare(queue.into(), QueueDeclareOptions::default(), arguments)
                    .await?;
                channel
                    .queue_purge(queue.into(), QueuePurgeOptions::default())
                    .await?;
                channel
                    .queue_bind(
                        queue.into(),
                        (*topic).into(),
                        "".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
            // What a service fails for good goes to the queue `{queue}.dlq` (SPEC §8), through
            // the default exchange; capped like the sinks.
            for (queue, _) in consumers {
                let mut arguments = arguments.clone();
                arguments.insert("x-max-length".into(), AMQPValue::LongInt(10_000));
                channel
                    .queue_declare(
                        format!("{queue}.dlq").as_str().into(),
                        QueueDeclareOptions::default(),
                        arguments,
                    )
                    .await?;
            }
            // A connection of the publisher's own, replaced when it breaks.
            let publisher = RabbitPublisher::connect_with(
                uri,
                ConnectionProperties::default()
                    .with_connection_name("eventscope-demo-publisher".into()),
            )
            .await?;
            Ok(Self {
                uri: uri.to_owned(),
                publisher,
                _connection: Arc::new(connection),
            })
        }
    }

    impl Bus for Rabbit {
        type Record = RabbitRecord;
        type Message = RabbitMessage;

        fn describe(&self) -> String {
            let server = self.uri.rsplit('@').next().unwrap_or_default();
            format!("RabbitMQ at {server}")
        }

        /// To the topic's exchange; the key is not a routing key here (fanout), so each topic
        /// has one destination name.
        fn record(
            &self,
            topic: &str,
            _key: &str,
            payload: Vec<u8>,
            headers: &[(&str, &str)],
        ) -> RabbitRecord {
            headers
                .iter()
                .fold(RabbitRecord::new(topic, "", payload), |r, (n, v)| {
                    r.header(*n, *v)
                })
        }

        fn publisher(&self, layer: PublishLayer) -> Publisher<RabbitRecord> {
            boxed(
                layer
                    .classify_errors(RabbitErrorClassifier)
                    .layer(self.publisher.clone()),
            )
        }

        fn raw_publisher(&self) -> Publisher<RabbitRecord> {
            boxed(self.publisher.clone())
        }

        /// Consumes the queue named after the group (declared by `connect`).
        fn consume(
            &self,
            group: &str,
            _topic: &str,
            handler: Handler<RabbitMessage>,
            metrics: &Metrics,
            classifier: Classifier,
            provider: Option<&opentelemetry_sdk::trace::SdkTracerProvider>,
            stop: BoxFuture<()>,
        ) -> BoxFuture<Result<(), ConsumeError>> {
            let consumer = match RabbitConsumer::new(&self.uri, group) {
                Ok(consumer) => consumer,
                Err(e) => return Box::pin(async move { Err(ConsumeError::Broker(e.into())) }),
            };
            let mut consumer = consumer
                .metrics(metrics.clone())
                .classify_errors(classifier)
                .dead_letter(self.publisher.clone());
            if let Some(provider) = provider {
                consumer = consumer.tracer_provider(provider);
            }
            Box::pin(consumer.run(handler, stop))
        }
    }
}
