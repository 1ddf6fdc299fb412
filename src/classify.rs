//! Turning a handler's or publisher's error into the low-cardinality `error.type` value.
//!
//! # Example
//!
//! ```
//! use std::borrow::Cow;
//! use eventscope::classify::{ClassifyError, TypeNameClassifier};
//!
//! #[derive(Debug)]
//! struct GatewayTimeout;
//! assert_eq!(TypeNameClassifier.classify(&GatewayTimeout), "GatewayTimeout");
//!
//! let by_kind = |e: &std::io::Error| -> Cow<'static, str> { format!("{:?}", e.kind()).into() };
//! let err = std::io::Error::from(std::io::ErrorKind::TimedOut);
//! assert_eq!(by_kind.classify(&err), "TimedOut");
//! ```

use std::borrow::Cow;

/// The `error.type` value used when nothing better is known (semconv's fallback).
pub const OTHER: &str = "_OTHER";

/// Maps an error to its `error.type`: a short, low-cardinality name such as a type or a code.
pub trait ClassifyError<E: ?Sized> {
    /// The `error.type` for `error`.
    fn classify(&self, error: &E) -> Cow<'static, str>;
}

impl<E: ?Sized, F> ClassifyError<E> for F
where
    F: Fn(&E) -> Cow<'static, str>,
{
    fn classify(&self, error: &E) -> Cow<'static, str> {
        self(error)
    }
}

/// The default classifier: the error's type name without its module path, or
/// [`OTHER`] for type-erased errors (`Box<dyn Error>`), whose name says nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct TypeNameClassifier;

impl<E: ?Sized> ClassifyError<E> for TypeNameClassifier {
    fn classify(&self, _error: &E) -> Cow<'static, str> {
        Cow::Borrowed(short_type_name(std::any::type_name::<E>()))
    }
}

fn short_type_name(full: &'static str) -> &'static str {
    if full.contains("dyn ") {
        return OTHER;
    }
    // Drop generic arguments, then the module path.
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
