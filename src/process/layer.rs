use tower_layer::Layer;

use super::{ParentPolicy, Process};
use crate::classify::Classifier;
use crate::metrics::Metrics;
use crate::propagation::Propagation;
use crate::span::Tracer;

/// Applies [`Process`] to a handler; see the [module docs](crate::process).
#[derive(Clone, Debug)]
pub struct ProcessLayer<C = Classifier> {
    pub(crate) metrics: Metrics,
    pub(crate) propagation: Propagation,
    pub(crate) policy: ParentPolicy,
    pub(crate) classifier: C,
    pub(crate) tracer: Tracer,
}

impl ProcessLayer {
    /// Records into `metrics`, extracts W3C Trace Context + Baggage, [`ParentPolicy::Auto`],
    /// names errors with [`Classifier::new`] (the default of a consumer too).
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            propagation: Propagation::default(),
            policy: ParentPolicy::Auto,
            classifier: Classifier::new(),
            tracer: Tracer::default(),
        }
    }
}

impl<C> ProcessLayer<C> {
    /// Uses another propagator.
    pub fn propagation(mut self, propagation: Propagation) -> Self {
        self.propagation = propagation;
        self
    }

    /// How the process span relates to the message's creation context.
    pub fn parent_policy(mut self, policy: ParentPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Starts the `process` spans with a tracer of `provider` (default: the global provider,
    /// as installed by `telemetry::init`, looked up when the first message arrives).
    pub fn tracer_provider<P: crate::SharedTracerProvider>(mut self, provider: &P) -> Self {
        self.tracer = Tracer::from_provider(provider);
        self
    }

    pub(crate) fn with_tracer(mut self, tracer: Tracer) -> Self {
        self.tracer = tracer;
        self
    }

    /// Uses `classifier` to derive `error.type` from the handler's errors.
    pub fn classify_errors<C2>(self, classifier: C2) -> ProcessLayer<C2> {
        ProcessLayer {
            metrics: self.metrics,
            propagation: self.propagation,
            policy: self.policy,
            classifier,
            tracer: self.tracer,
        }
    }
}

impl<S, C: Clone> Layer<S> for ProcessLayer<C> {
    type Service = Process<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Process {
            inner,
            config: self.clone(),
            memo: Default::default(),
        }
    }
}
