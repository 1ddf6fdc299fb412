use tower_layer::Layer;

use super::{Schemas, Unknown, ValidateIncoming, ValidateOutgoing};
use crate::metrics::Metrics;

/// Applies [`ValidateIncoming`] to a handler; see the [module docs](crate::schema).
#[derive(Clone, Debug)]
pub struct ValidateIncomingLayer {
    pub(crate) schemas: Schemas,
    pub(crate) metrics: Metrics,
    pub(crate) unknown: Unknown,
}

impl ValidateIncomingLayer {
    /// Validates against `schemas`, counting refusals in `metrics` (give it the consumer's
    /// metrics); refuses events without a schema ([`Unknown::Reject`]).
    pub fn new(schemas: Schemas, metrics: Metrics) -> Self {
        Self {
            schemas,
            metrics,
            unknown: Unknown::Reject,
        }
    }

    /// What to do with an event whose type and version have no schema.
    pub fn unknown(mut self, unknown: Unknown) -> Self {
        self.unknown = unknown;
        self
    }
}

impl<S> Layer<S> for ValidateIncomingLayer {
    type Service = ValidateIncoming<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ValidateIncoming {
            inner,
            layer: self.clone(),
        }
    }
}

/// Applies [`ValidateOutgoing`] to a publisher; see the [module docs](crate::schema).
#[derive(Clone, Debug)]
pub struct ValidateOutgoingLayer {
    pub(crate) schemas: Schemas,
    pub(crate) unknown: Unknown,
}

impl ValidateOutgoingLayer {
    /// Validates against `schemas`; refuses events without a schema ([`Unknown::Reject`]).
    pub fn new(schemas: Schemas) -> Self {
        Self {
            schemas,
            unknown: Unknown::Reject,
        }
    }

    /// What to do with an event whose type and version have no schema.
    pub fn unknown(mut self, unknown: Unknown) -> Self {
        self.unknown = unknown;
        self
    }
}

impl<S> Layer<S> for ValidateOutgoingLayer {
    type Service = ValidateOutgoing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ValidateOutgoing {
            inner,
            layer: self.clone(),
        }
    }
}
