//! Publishers: core NATS ([`NatsPublisher`], done once the client flushed the message) and
//! JetStream ([`JetStreamPublisher`], done at the stream's acknowledgement).

use std::fmt;
use std::task::{Context, Poll};

use async_nats::jetstream;
use tower_service::Service;

use super::carrier::to_header_map;
use super::error::{NatsErrorClassifier, PublishError, PublishErrorKind};
use super::future::ResponseFuture;
use super::record::{JetStreamReceipt, NatsRecord};
use crate::metrics::Metrics;
use crate::publish::PublishLayer;

/// The [`PublishLayer`] for NATS publishers: records into `metrics`, and a failed publish's
/// `error.type` is its [kind](super::error::PublishErrorKind) (`TimedOut`,
/// `StreamNotFound`, ...) instead of the error's type name.
///
/// Shorthand for `PublishLayer::new(metrics).classify_errors(NatsErrorClassifier)`.
pub fn publish_layer(metrics: Metrics) -> PublishLayer<NatsErrorClassifier> {
    PublishLayer::new(metrics).classify_errors(NatsErrorClassifier)
}

/// Publishes [`NatsRecord`]s with core NATS through your `async_nats::Client`; resolves once
/// the client has written the message to the server (a flush), with `()`.
///
/// Core NATS acknowledges nothing: a flushed message reached the server's socket, not
/// necessarily a subscriber. Wrap it in [`publish_layer`] to trace and measure; the `send`
/// span ends at the flush.
///
/// A record is handed to the client when its future is first polled; await each publish (or
/// poll them in order) where order matters. While the connection is down the client buffers
/// messages until its command queue is full, then the publish waits for the reconnect: put a
/// timeout around it if it must not.
#[derive(Clone)]
pub struct NatsPublisher {
    client: async_nats::Client,
}

impl NatsPublisher {
    /// Publishes through `client` (a clone of it: the client stays yours).
    pub fn new(client: async_nats::Client) -> Self {
        Self { client }
    }

    /// The client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

impl fmt::Debug for NatsPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsPublisher").finish_non_exhaustive()
    }
}

impl Service<NatsRecord> for NatsPublisher {
    type Response = ();
    type Error = PublishError;
    type Future = ResponseFuture<()>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, record: NatsRecord) -> Self::Future {
        let client = self.client.clone();
        ResponseFuture::new(async move {
            let NatsRecord {
                subject,
                payload,
                headers,
            } = record;
            let sent = match to_header_map(headers)? {
                Some(headers) => client.publish_with_headers(subject, headers, payload).await,
                None => client.publish(subject, payload).await,
            };
            sent.map_err(PublishError::core)?;
            client
                .flush()
                .await
                .map_err(|e| PublishError::new(PublishErrorKind::Flush, e))
        })
    }
}

/// Publishes [`NatsRecord`]s to JetStream through your `jetstream::Context`; resolves with a
/// [`JetStreamReceipt`] (stream, sequence, duplicate flag) when the stream acknowledged the
/// message.
///
/// Wrap it in [`publish_layer`] to trace and measure: the `send` span and the duration end at
/// the acknowledgement and carry the stream sequence and the `duplicate` flag. A duplicate (the
/// stream already had the record's `Nats-Msg-Id`) is no error. How long an acknowledgement is
/// awaited is the context's timeout (async-nats: 5 s unless set with
/// `ContextBuilder::timeout`); a [`TimedOut`](PublishErrorKind::TimedOut) message may still be
/// stored, so publish it again with the same id.
///
/// A record is sent when its future is first polled; any number may await their
/// acknowledgements at once (up to the context's `max_ack_inflight`).
#[derive(Clone)]
pub struct JetStreamPublisher {
    context: jetstream::Context,
}

impl JetStreamPublisher {
    /// Publishes through `context` (a clone of it).
    pub fn new(context: jetstream::Context) -> Self {
        Self { context }
    }

    /// The JetStream context.
    pub fn context(&self) -> &jetstream::Context {
        &self.context
    }
}

impl fmt::Debug for JetStreamPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamPublisher").finish_non_exhaustive()
    }
}

impl Service<NatsRecord> for JetStreamPublisher {
    type Response = JetStreamReceipt;
    type Error = PublishError;
    type Future = ResponseFuture<JetStreamReceipt>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, record: NatsRecord) -> Self::Future {
        let context = self.context.clone();
        ResponseFuture::new(async move {
            let NatsRecord {
                subject,
                payload,
                headers,
            } = record;
            let sent = match to_header_map(headers)? {
                Some(headers) => {
                    context
                        .publish_with_headers(subject, headers, payload)
                        .await
                }
                None => context.publish(subject, payload).await,
            };
            let ack = sent
                .map_err(PublishError::jetstream)?
                .await
                .map_err(PublishError::jetstream)?;
            Ok(JetStreamReceipt {
                stream: ack.stream,
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            })
        })
    }
}
