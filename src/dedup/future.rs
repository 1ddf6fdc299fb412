//! The future returned by [`Dedup`](super::Dedup).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use opentelemetry::trace::TraceContextExt;
use opentelemetry::KeyValue;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::error::DedupError;
use super::layer::Shared;
use super::{Claim, ClaimToken, DedupKey, DedupStore, Processed, DUPLICATE_ATTRIBUTE};
use crate::message::IncomingMessage;
use crate::BoxError;

pin_project! {
    /// Claims the message's id, then runs the handler and marks the id done, or answers
    /// [`Processed::Duplicate`] without running it.
    ///
    /// Dropped while the handler runs (a cancelled call), it releases the claim on the tokio
    /// runtime, if one is current, so a redelivery may run the handler; without a runtime the
    /// claim ends with its lease.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, M, St>
    where
        S: Service<M>,
        St: DedupStore,
    {
        #[pin]
        state: State<S, M, St>,
        guard: Guard<St>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, M, St>
    where
        S: Service<M>,
        St: DedupStore,
    {
        /// No id to deduplicate on, or the store failed and the layer fails open.
        Pass {
            #[pin]
            future: S::Future,
        },
        Claiming {
            #[pin]
            claim: St::ClaimFuture,
            service: Option<S>,
            message: Option<M>,
        },
        Running {
            #[pin]
            future: S::Future,
        },
        Completing {
            #[pin]
            complete: St::CompleteFuture,
            response: Option<S::Response>,
        },
        /// The done mark failed: tried again after a pause.
        Pausing {
            #[pin]
            pause: tokio::time::Sleep,
            response: Option<S::Response>,
        },
        Releasing {
            #[pin]
            release: St::ReleaseFuture,
            error: Option<BoxError>,
        },
        Finished,
    }
}

/// What the future owes the store if it is dropped half-way.
struct Guard<St: DedupStore> {
    shared: Arc<Shared<St>>,
    key: Option<DedupKey>,
    token: ClaimToken,
    /// How many done marks failed.
    failed_marks: u32,
    /// The claim is ours; on drop: `Release` while the handler runs, `Complete` once it
    /// succeeded.
    held: Option<Owed>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Owed {
    Release,
    Complete,
}

impl<St: DedupStore> Drop for Guard<St> {
    fn drop(&mut self) {
        let (Some(owed), Some(key)) = (self.held.take(), self.key.as_ref()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(
                message_id = key.id(),
                "a cancelled call leaves its dedup claim to expire (no tokio runtime to release it on)"
            );
            return;
        };
        let store = &self.shared.store;
        match owed {
            Owed::Release => drop(runtime.spawn(store.release(key, self.token))),
            Owed::Complete => drop(runtime.spawn(store.complete(key, self.shared.retention))),
        }
    }
}

impl<S, M, St> fmt::Debug for ResponseFuture<S, M, St>
where
    S: Service<M>,
    St: DedupStore,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("key", &self.guard.key.as_ref().map(DedupKey::as_str))
            .finish_non_exhaustive()
    }
}

impl<S, M, St> ResponseFuture<S, M, St>
where
    S: Service<M>,
    St: DedupStore,
{
    pub(crate) fn pass(future: S::Future, shared: &Arc<Shared<St>>) -> Self {
        Self {
            state: State::Pass { future },
            guard: Guard {
                shared: Arc::clone(shared),
                key: None,
                token: ClaimToken::NONE,
                failed_marks: 0,
                held: None,
            },
        }
    }

    pub(crate) fn claim(
        claim: St::ClaimFuture,
        service: S,
        message: M,
        key: DedupKey,
        token: ClaimToken,
        shared: &Arc<Shared<St>>,
    ) -> Self {
        Self {
            state: State::Claiming {
                claim,
                service: Some(service),
                message: Some(message),
            },
            guard: Guard {
                shared: Arc::clone(shared),
                key: Some(key),
                token,
                failed_marks: 0,
                held: None,
            },
        }
    }
}

/// The future was polled after it completed.
fn finished() -> BoxError {
    "dedup future polled after completion".into()
}

impl<S, M, St> Future for ResponseFuture<S, M, St>
where
    S: Service<M>,
    S::Error: Into<BoxError>,
    St: DedupStore,
    M: IncomingMessage,
{
    type Output = Result<Processed<S::Response>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let guard = this.guard;
        loop {
            match this.state.as_mut().project() {
                StateProj::Pass { future } => {
                    let result = std::task::ready!(future.poll(cx));
                    this.state.set(State::Finished);
                    return Poll::Ready(result.map(Processed::Done).map_err(Into::into));
                }
                StateProj::Claiming {
                    claim,
                    service,
                    message,
                } => {
                    let answer = std::task::ready!(claim.poll(cx));
                    let (Some(mut service), Some(message), Some(key)) =
                        (service.take(), message.take(), guard.key.as_ref())
                    else {
                        return Poll::Ready(Err(finished()));
                    };
                    let shared = &guard.shared;
                    match answer {
                        Ok(Claim::Claimed) => {
                            guard.held = Some(Owed::Release);
                            let future = service.call(message);
                            this.state.set(State::Running { future });
                        }
                        Ok(Claim::Duplicate) => {
                            this.state.set(State::Finished);
                            shared.metrics.record_duplicate(
                                message.system(),
                                message.destination(),
                                key.group(),
                            );
                            opentelemetry::Context::map_current(|cx| {
                                cx.span()
                                    .set_attribute(KeyValue::new(DUPLICATE_ATTRIBUTE, true))
                            });
                            tracing::debug!(message_id = key.id(), "duplicate delivery skipped");
                            return Poll::Ready(Ok(Processed::Duplicate));
                        }
                        Ok(Claim::InFlight) => {
                            this.state.set(State::Finished);
                            return Poll::Ready(Err(DedupError::in_flight(key.id()).into()));
                        }
                        Err(error) => {
                            if let Some(skipped) = shared.store_warnings.allow() {
                                tracing::warn!(
                                    %error,
                                    message_id = key.id(),
                                    fail_open = shared.fail_open,
                                    skipped,
                                    "dedup store unavailable"
                                );
                            }
                            if shared.fail_open {
                                let future = service.call(message);
                                this.state.set(State::Pass { future });
                            } else {
                                this.state.set(State::Finished);
                                let error = DedupError::unavailable(key.id(), error);
                                return Poll::Ready(Err(error.into()));
                            }
                        }
                    }
                }
                StateProj::Running { future } => {
                    let result = std::task::ready!(future.poll(cx));
                    let (Some(key), shared) = (guard.key.as_ref(), &guard.shared) else {
                        return Poll::Ready(Err(finished()));
                    };
                    match result {
                        Ok(response) => {
                            guard.held = Some(Owed::Complete);
                            let complete = shared.store.complete(key, shared.retention);
                            this.state.set(State::Completing {
                                complete,
                                response: Some(response),
                            });
                        }
                        Err(error) => {
                            let release = shared.store.release(key, guard.token);
                            this.state.set(State::Releasing {
                                release,
                                error: Some(error.into()),
                            });
                        }
                    }
                }
                StateProj::Completing { complete, response } => {
                    let done = std::task::ready!(complete.poll(cx));
                    let response = response.take();
                    if let (Err(error), Some(key)) = (done, guard.key.as_ref()) {
                        // The handler succeeded, so the message is settled whatever happens:
                        // failing it would retry into its own claim. Failing closed, the mark
                        // is tried again until the store answers (the partition waits, as it
                        // would for the store anyway), so a redelivery is still caught.
                        guard.failed_marks += 1;
                        let shared = &guard.shared;
                        let pause = Duration::from_millis(50 << guard.failed_marks.min(4));
                        let again = !shared.fail_open;
                        if let Some(skipped) = shared.store_warnings.allow() {
                            tracing::warn!(
                                %error,
                                message_id = key.id(),
                                retrying = again,
                                skipped,
                                "could not mark a processed message done"
                            );
                        }
                        if again {
                            this.state.set(State::Pausing {
                                pause: tokio::time::sleep(pause),
                                response,
                            });
                            continue;
                        }
                    }
                    guard.held = None;
                    this.state.set(State::Finished);
                    return Poll::Ready(response.map(Processed::Done).ok_or_else(finished));
                }
                StateProj::Pausing { pause, response } => {
                    std::task::ready!(pause.poll(cx));
                    let (Some(key), shared) = (guard.key.as_ref(), &guard.shared) else {
                        return Poll::Ready(Err(finished()));
                    };
                    let response = response.take();
                    let complete = shared.store.complete(key, shared.retention);
                    this.state.set(State::Completing { complete, response });
                }
                StateProj::Releasing { release, error } => {
                    let released = std::task::ready!(release.poll(cx));
                    guard.held = None;
                    if let (Err(release_error), Some(key)) = (released, guard.key.as_ref()) {
                        if let Some(skipped) = guard.shared.store_warnings.allow() {
                            tracing::warn!(
                                error = %release_error,
                                message_id = key.id(),
                                skipped,
                                "could not release the dedup claim of a failed message; its redeliveries wait for the lease to end"
                            );
                        }
                    }
                    let error = error.take();
                    this.state.set(State::Finished);
                    return Poll::Ready(Err(error.unwrap_or_else(finished)));
                }
                StateProj::Finished => return Poll::Ready(Err(finished())),
            }
        }
    }
}
