//! One classification for handler and publisher errors: the low-cardinality `error.type`
//! value, and the settle decision a consumer carries out (SPEC §7).
//!
//! Two small traits, one family: [`ClassifyError`] names an error (`error.type` of spans and
//! metrics, used by the process and publish layers and by the consumer core alike), and
//! [`Decide`] turns a failure, known by that name and its attempt number, into a [`Decision`].
//! A handler panic is named [`PANIC`], a handler dropped before it finished [`CANCELLED`], and
//! both are decided like any other failure.
//!
//! [`Classifier`] is the default and does both: errors are named by downcast (through a
//! [`BoxError`] and its `source()` chain too), each name can be given a decision
//! ([`decision`](Classifier::decision)), and everything else gets the fallback decision
//! ([`Decision::Stop`] unless told otherwise). A closure `Fn(&E) -> Cow<'static, str>` and
//! [`TypeNameClassifier`] name errors too (the latter also decides: [`Decision::Stop`]).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use eventscope::classify::{Classifier, ClassifyError, Decide, Decision, Failed, TypeNameClassifier};
//! use eventscope::BoxError;
//!
//! #[derive(Debug)]
//! struct PaymentDeclined;
//! impl std::fmt::Display for PaymentDeclined {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
//!         f.write_str("payment declined")
//!     }
//! }
//! impl std::error::Error for PaymentDeclined {}
//!
//! let classifier = Classifier::new()
//!     .on::<PaymentDeclined>("PaymentDeclined")
//!     .on::<std::io::Error>("io")
//!     .decision("PaymentDeclined", Decision::Reject)
//!     .decision("io", Decision::retry(Duration::from_millis(100)));
//!
//! let error: BoxError = Box::new(PaymentDeclined);
//! let error_type = classifier.classify(&error);
//! assert_eq!(error_type, "PaymentDeclined");
//! assert_eq!(classifier.decide(&Failed::new(&error_type, 1)), Decision::Reject);
//! assert_eq!(classifier.decide(&Failed::new("_OTHER", 1)), Decision::Stop);
//!
//! #[derive(Debug)]
//! struct GatewayTimeout;
//! assert_eq!(TypeNameClassifier.classify(&GatewayTimeout), "GatewayTimeout");
//! ```

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::BoxError;

/// The `error.type` value used when nothing better is known (semconv's fallback).
pub const OTHER: &str = "_OTHER";

/// The `error.type` of a handler that panicked.
pub const PANIC: &str = "panic";

/// The `error.type` of a handler call or publish whose future was dropped before it finished.
pub const CANCELLED: &str = "cancelled";

/// What the consumer core does with a handled message (SPEC §7).
///
/// An `Ok` from the handler stack is [`Ack`](Decision::Ack); an error maps to a decision through
/// the [`ClassifyError`] in use. Each broker adapter carries the decision out its own way: on
/// Kafka and the embedded broker (ordered per partition) `Ack` and `Reject` commit past the
/// message once every earlier message of its partition is done, `Retry` hands it to the handler
/// again after `after` while the partition waits, and `Stop` pauses the partition at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Done: settle it.
    Ack,
    /// Hand the message to the handler again after `after`.
    Retry {
        /// Pause before the message is handed out again.
        after: Duration,
    },
    /// Settle it as failed for good (it was handled elsewhere, e.g. dead-lettered).
    Reject,
    /// Never settle past it: the partition (or, on unordered brokers, the consumer) stops here.
    Stop,
    /// Publish it to the consumer's dead-letter destination, then settle it as done (SPEC §7,
    /// §8). A consumer without a dead-letter destination stops instead: nothing is lost.
    DeadLetter,
}

impl Decision {
    /// `Retry { after }`.
    pub const fn retry(after: Duration) -> Self {
        Self::Retry { after }
    }
}

/// Maps an error to its `error.type`: a short, low-cardinality name such as a type or a code.
pub trait ClassifyError<E: ?Sized> {
    /// The `error.type` for `error`.
    fn classify(&self, error: &E) -> Cow<'static, str>;
}

/// Decides what a consumer does with a message whose handling failed (SPEC §7).
pub trait Decide {
    /// The decision for `failure`. The default is [`Decision::Stop`].
    fn decide(&self, failure: &Failed<'_>) -> Decision {
        let _ = failure;
        Decision::Stop
    }
}

/// A failed attempt at handling a message, as [`Decide`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failed<'a> {
    error_type: &'a str,
    attempt: u32,
    dead_letter: bool,
}

impl<'a> Failed<'a> {
    /// Attempt `attempt` (1 = the first delivery) failed with `error_type`, on a consumer
    /// without a dead-letter destination.
    pub fn new(error_type: &'a str, attempt: u32) -> Self {
        Self {
            error_type,
            attempt: attempt.max(1),
            dead_letter: false,
        }
    }

    /// Whether the consumer has a dead-letter destination (what a [`RetryPolicy`] does when
    /// its attempts run out depends on it).
    pub fn with_dead_letter(mut self, configured: bool) -> Self {
        self.dead_letter = configured;
        self
    }

    /// Whether the consumer has a dead-letter destination.
    pub fn dead_letter(&self) -> bool {
        self.dead_letter
    }

    /// The failure's `error.type` ([`ClassifyError::classify`], [`PANIC`] or [`CANCELLED`]).
    pub fn error_type(&self) -> &'a str {
        self.error_type
    }

    /// Which attempt failed: 1 for the first delivery.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

impl<E: ?Sized, F> ClassifyError<E> for F
where
    F: Fn(&E) -> Cow<'static, str>,
{
    fn classify(&self, error: &E) -> Cow<'static, str> {
        self(error)
    }
}

/// Retries with exponential backoff and full jitter, a cap on the delay and on the number of
/// attempts, then a final decision (SPEC §8): a rule a [`Classifier`] gives an `error.type`
/// (or every failure) instead of a fixed [`Decision`].
///
/// Attempt `n` (1 = the first delivery) that fails is retried after a delay drawn uniformly
/// from `[0, min(max_delay, initial × 2^(n−1))]` (full jitter: retries of many messages that
/// failed together spread out instead of coming back at once), until `max_attempts` attempts
/// were made. The last failure then gets the exhausted decision: by default
/// [`Decision::DeadLetter`] when the consumer has a dead-letter destination, else
/// [`Decision::Stop`] (nothing is lost); [`on_exhausted`](Self::on_exhausted) chooses.
///
/// The growth and the caps come from `backon`'s exponential backoff; the jitter is drawn on
/// top of its delay.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use eventscope::classify::{Classifier, Decide, Decision, Failed, RetryPolicy};
///
/// let policy = RetryPolicy::exponential(Duration::from_millis(100))
///     .max_delay(Duration::from_secs(2))
///     .max_attempts(4);
/// let classifier = Classifier::new().otherwise(policy);
///
/// // Attempts 1 to 3 are retried, within the policy's bounds.
/// match classifier.decide(&Failed::new("io", 2)) {
///     Decision::Retry { after } => assert!(after <= Duration::from_millis(200)),
///     other => panic!("{other:?}"),
/// }
/// // The fourth failure is final: dead-lettered when the consumer has a destination.
/// let last = Failed::new("io", 4);
/// assert_eq!(classifier.decide(&last), Decision::Stop);
/// assert_eq!(classifier.decide(&last.with_dead_letter(true)), Decision::DeadLetter);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    initial: Duration,
    max_delay: Duration,
    max_attempts: u32,
    exhausted: Option<Decision>,
}

impl RetryPolicy {
    /// Backoff starting at `initial` and doubling, at most 30 s, for at most 5 attempts.
    pub fn exponential(initial: Duration) -> Self {
        Self {
            initial,
            max_delay: Duration::from_secs(30),
            max_attempts: 5,
            exhausted: None,
        }
    }

    /// The longest delay between two attempts (default 30 s).
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max_delay = max;
        self
    }

    /// Attempts in all, the first delivery included (default 5; at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// What the last failure gets: [`Decision::DeadLetter`], [`Decision::Reject`] or
    /// [`Decision::Stop`] (a `Retry` here would never end, and is taken as `Stop`). Default:
    /// `DeadLetter` when the consumer has a dead-letter destination, else `Stop`.
    pub fn on_exhausted(mut self, decision: Decision) -> Self {
        self.exhausted = Some(match decision {
            Decision::Retry { .. } => Decision::Stop,
            decision => decision,
        });
        self
    }

    /// The most attempts made.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The upper bound of the delay after failed attempt `attempt` (the jitter draws below it).
    pub fn delay_bound(&self, attempt: u32) -> Duration {
        use backon::BackoffBuilder;
        let index = attempt.max(1) as usize - 1;
        backon::ExponentialBuilder::new()
            .with_min_delay(self.initial)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .without_max_times()
            .build()
            .nth(index)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// The decision for a failure of attempt `failed.attempt()`.
    pub fn decide(&self, failed: &Failed<'_>) -> Decision {
        if failed.attempt() < self.max_attempts {
            let bound = self.delay_bound(failed.attempt());
            let jittered = bound.mul_f64(fastrand::f64());
            return Decision::Retry { after: jittered };
        }
        match self.exhausted {
            Some(decision) => decision,
            None if failed.dead_letter() => Decision::DeadLetter,
            None => Decision::Stop,
        }
    }
}

/// What a [`Classifier`] does with failures of one `error.type`: a fixed [`Decision`] or a
/// [`RetryPolicy`]. Made from either with `into()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule(RuleKind);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RuleKind {
    Fixed(Decision),
    Policy(RetryPolicy),
}

impl From<Decision> for Rule {
    fn from(decision: Decision) -> Self {
        Self(RuleKind::Fixed(decision))
    }
}

impl From<RetryPolicy> for Rule {
    fn from(policy: RetryPolicy) -> Self {
        Self(RuleKind::Policy(policy))
    }
}

impl Rule {
    fn decide(&self, failed: &Failed<'_>) -> Decision {
        match &self.0 {
            RuleKind::Fixed(decision) => *decision,
            RuleKind::Policy(policy) => policy.decide(failed),
        }
    }
}

/// Names errors by their type name without the module path, or [`OTHER`] for type-erased
/// errors (`Box<dyn Error>`), whose name says nothing; decides [`Decision::Stop`] for every
/// failure.
#[derive(Clone, Copy, Debug, Default)]
pub struct TypeNameClassifier;

impl<E: ?Sized> ClassifyError<E> for TypeNameClassifier {
    fn classify(&self, _error: &E) -> Cow<'static, str> {
        Cow::Borrowed(short_type_name(std::any::type_name::<E>()))
    }
}

impl Decide for TypeNameClassifier {}

fn short_type_name(full: &'static str) -> &'static str {
    if full.contains("dyn ") {
        return OTHER;
    }
    // Drop generic arguments, then the module path.
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

type Probe = fn(&(dyn std::error::Error + 'static)) -> bool;

/// The default classifier: error types named by downcast, decisions by name; see the
/// [module docs](self).
///
/// An error is looked up as itself, then, when it is a [`BoxError`] (or a
/// `Box<dyn Error + Send + Sync>` inside one), as the boxed error and along its `source()`
/// chain; the first registered type found names it. An unregistered error gets its type name
/// ([`TypeNameClassifier`]), which is [`OTHER`] for a [`BoxError`].
#[derive(Clone, Default)]
pub struct Classifier {
    inner: Arc<Table>,
}

#[derive(Clone, Default)]
struct Table {
    types: Vec<(TypeId, Probe, Cow<'static, str>)>,
    decisions: Vec<(Cow<'static, str>, Rule)>,
    otherwise: Option<Rule>,
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classifier")
            .field(
                "types",
                &self.inner.types.iter().map(|t| &t.2).collect::<Vec<_>>(),
            )
            .field("decisions", &self.inner.decisions)
            .field("otherwise", &self.fallback())
            .finish()
    }
}

impl Classifier {
    /// Names nothing by downcast; decides [`Decision::Stop`] for every failure.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names errors of type `T` `error_type`.
    pub fn on<T>(self, error_type: impl Into<Cow<'static, str>>) -> Self
    where
        T: std::error::Error + 'static,
    {
        let probe: Probe = |e| e.is::<T>();
        self.edit(|t| t.types.push((TypeId::of::<T>(), probe, error_type.into())))
    }

    /// Failures named `error_type` (by [`on`](Self::on), a type name, [`PANIC`] or
    /// [`CANCELLED`]) get `rule`: a [`Decision`], or a [`RetryPolicy`].
    pub fn decision(self, error_type: impl Into<Cow<'static, str>>, rule: impl Into<Rule>) -> Self {
        let (error_type, rule) = (error_type.into(), rule.into());
        self.edit(|t| {
            t.decisions.retain(|(name, _)| *name != error_type);
            t.decisions.push((error_type, rule));
        })
    }

    /// The rule for failures without one of their own (default [`Decision::Stop`]).
    pub fn otherwise(self, rule: impl Into<Rule>) -> Self {
        let rule = rule.into();
        self.edit(|t| t.otherwise = Some(rule))
    }

    fn fallback(&self) -> Rule {
        self.inner
            .otherwise
            .unwrap_or(Rule(RuleKind::Fixed(Decision::Stop)))
    }

    fn edit(mut self, f: impl FnOnce(&mut Table)) -> Self {
        f(Arc::make_mut(&mut self.inner));
        self
    }

    fn by_type(&self, id: TypeId) -> Option<&Cow<'static, str>> {
        self.inner
            .types
            .iter()
            .find(|(t, _, _)| *t == id)
            .map(|(_, _, name)| name)
    }

    fn by_chain(&self, error: &(dyn std::error::Error + 'static)) -> Option<&Cow<'static, str>> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some((_, _, name)) = self.inner.types.iter().find(|(_, probe, _)| probe(error)) {
                return Some(name);
            }
            next = error.source();
        }
        None
    }
}

impl<E: 'static> ClassifyError<E> for Classifier {
    fn classify(&self, error: &E) -> Cow<'static, str> {
        if let Some(name) = self.by_type(TypeId::of::<E>()) {
            return name.clone();
        }
        let any: &dyn Any = error;
        let boxed: Option<&(dyn std::error::Error + 'static)> =
            if let Some(boxed) = any.downcast_ref::<BoxError>() {
                Some(&**boxed)
            } else {
                any.downcast_ref::<Box<dyn std::error::Error + Send>>()
                    .map(|b| &**b as &(dyn std::error::Error + 'static))
                    .or_else(|| {
                        any.downcast_ref::<Box<dyn std::error::Error>>()
                            .map(|b| &**b)
                    })
            };
        if let Some(name) = boxed.and_then(|e| self.by_chain(e)) {
            return name.clone();
        }
        TypeNameClassifier.classify(error)
    }
}

impl Decide for Classifier {
    fn decide(&self, failure: &Failed<'_>) -> Decision {
        self.inner
            .decisions
            .iter()
            .find(|(name, _)| name == failure.error_type())
            .map_or_else(|| self.fallback(), |(_, rule)| *rule)
            .decide(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Declined;
    impl fmt::Display for Declined {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("declined")
        }
    }
    impl std::error::Error for Declined {}

    #[derive(Debug)]
    struct Wrapper(Declined);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn short_names() {
        assert_eq!(short_type_name("std::io::error::Error"), "Error");
        assert_eq!(
            short_type_name("alloc::boxed::Box<dyn core::error::Error>"),
            OTHER
        );
        assert_eq!(short_type_name("my::Wrapper<u8>"), "Wrapper");
        assert_eq!(short_type_name("Plain"), "Plain");
    }

    #[test]
    fn downcasts_through_boxes_and_sources() {
        let c = Classifier::new().on::<Declined>("Declined");
        assert_eq!(c.classify(&Declined), "Declined");
        let boxed: BoxError = Box::new(Declined);
        assert_eq!(c.classify(&boxed), "Declined");
        let nested: BoxError = Box::new(Wrapper(Declined));
        assert_eq!(c.classify(&nested), "Declined");
        let other: BoxError = "text".into();
        assert_eq!(c.classify(&other), OTHER);
        // Unregistered concrete types keep their type name.
        assert_eq!(c.classify(&Wrapper(Declined)), "Wrapper");
    }

    #[test]
    fn decisions_by_name_with_a_fallback() {
        let c = Classifier::new()
            .decision("Declined", Decision::Reject)
            .decision(PANIC, Decision::retry(Duration::from_secs(1)));
        let decide = |c: &dyn Decide, error_type| c.decide(&Failed::new(error_type, 1));
        assert_eq!(decide(&c, "Declined"), Decision::Reject);
        assert_eq!(decide(&c, PANIC), Decision::retry(Duration::from_secs(1)));
        assert_eq!(decide(&c, OTHER), Decision::Stop);
        let c = c.otherwise(Decision::Ack);
        assert_eq!(decide(&c, OTHER), Decision::Ack);
        assert_eq!(decide(&TypeNameClassifier, OTHER), Decision::Stop);
    }
}
