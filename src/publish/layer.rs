use tower_layer::Layer;

use super::Publish;
use crate::classify::TypeNameClassifier;
use crate::metrics::Metrics;
use crate::propagation::Propagation;
use crate::span::Tracer;

/// Applies [`Publish`] to a publisher service; see the [module docs](crate::publish).
#[derive(Clone, Debug)]
pub struct PublishLayer<C = TypeNameClassifier> {
    pub(crate) metrics: Metrics,
    pub(crate) propagation: Propagation,
    pub(crate) inject: bool,
    pub(crate) classifier: C,
    pub(crate) tracer: Tracer,
}

impl PublishLayer {
    /// Records into `metrics`, injects W3C Trace Context + Baggage.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            propagation: Propagation::default(),
            inject: true,
            classifier: TypeNameClassifier,
            tracer: Tracer::default(),
        }
    }
}

impl<C> PublishLayer<C> {
    /// Uses another propagator.
    pub fn propagation(mut self, propagation: Propagation) -> Self {
        self.propagation = propagation;
        self
    }

    /// Switches trace-context injection off (or on again), for consumers that choke on
    /// unknown headers. Spans, ids and metrics are unaffected.
    pub fn inject_context(mut self, inject: bool) -> Self {
        self.inject = inject;
        self
    }

    /// Starts the `send` spans with a tracer of `provider` (default: the global provider, as
    /// installed by `telemetry::init`, looked up when the first message is sent).
    pub fn tracer_provider<P: crate::SharedTracerProvider>(mut self, provider: &P) -> Self {
        self.tracer = Tracer::from_provider(provider);
        self
    }

    pub(crate) fn with_tracer(mut self, tracer: Tracer) -> Self {
        self.tracer = tracer;
        self
    }

    /// Uses `classifier` to derive `error.type` from the publisher's errors.
    pub fn classify_errors<C2>(self, classifier: C2) -> PublishLayer<C2> {
        PublishLayer {
            metrics: self.metrics,
            propagation: self.propagation,
            inject: self.inject,
            classifier,
            tracer: self.tracer,
        }
    }
}

impl<S, C: Clone> Layer<S> for PublishLayer<C> {
    type Service = Publish<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Publish {
            inner,
            config: self.clone(),
            memo: Default::default(),
        }
    }
}
