use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::{ValidateIncomingLayer, ValidateOutgoingLayer};
use super::{Checked, SchemaError, Unknown};
use crate::message::{Headers, IncomingMessage, OutgoingMessage};
use crate::BoxError;

/// A handler that only sees events their schema accepts; built by
/// [`ValidateIncomingLayer`].
#[derive(Clone, Debug)]
pub struct ValidateIncoming<S> {
    pub(crate) inner: S,
    pub(crate) layer: ValidateIncomingLayer,
}

/// A publisher that only sends events their schema accepts; built by
/// [`ValidateOutgoingLayer`].
#[derive(Clone, Debug)]
pub struct ValidateOutgoing<S> {
    pub(crate) inner: S,
    pub(crate) layer: ValidateOutgoingLayer,
}

macro_rules! accessors {
    ($service:ident, $what:literal) => {
        impl<S> $service<S> {
            #[doc = concat!("The wrapped ", $what, ".")]
            pub fn get_ref(&self) -> &S {
                &self.inner
            }

            #[doc = concat!("The wrapped ", $what, ", mutably.")]
            pub fn get_mut(&mut self) -> &mut S {
                &mut self.inner
            }

            #[doc = concat!("Unwraps the ", $what, ".")]
            pub fn into_inner(self) -> S {
                self.inner
            }
        }
    };
}

accessors!(ValidateIncoming, "handler");
accessors!(ValidateOutgoing, "publisher");

/// The check of one payload, with the unknown-schema policy applied.
fn check<H: Headers + ?Sized>(
    schemas: &super::Schemas,
    unknown: Unknown,
    headers: &H,
    payload: &[u8],
) -> Result<(), SchemaError> {
    match schemas.validate(headers, payload)? {
        Checked::Valid => Ok(()),
        Checked::Unknown => match unknown {
            Unknown::Pass => Ok(()),
            Unknown::Reject => Err(schemas.unknown(headers, payload)),
        },
    }
}

impl<S, M> Service<M> for ValidateIncoming<S>
where
    S: Service<M>,
    S::Error: Into<BoxError>,
    M: IncomingMessage,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, message: M) -> Self::Future {
        let layer = &self.layer;
        match check(&layer.schemas, layer.unknown, &message, message.payload()) {
            Ok(()) => ResponseFuture::inner(self.inner.call(message)),
            Err(error) => {
                layer.metrics.record_invalid(
                    message.system(),
                    message.destination(),
                    message.consumer_group().unwrap_or(""),
                    error.error_type(),
                );
                tracing::debug!(%error, "message refused before the handler");
                ResponseFuture::refused(error)
            }
        }
    }
}

impl<S, R> Service<R> for ValidateOutgoing<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    R: OutgoingMessage,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, record: R) -> Self::Future {
        let layer = &self.layer;
        match check(&layer.schemas, layer.unknown, &record, record.payload()) {
            Ok(()) => ResponseFuture::inner(self.inner.call(record)),
            Err(error) => ResponseFuture::refused(error),
        }
    }
}
