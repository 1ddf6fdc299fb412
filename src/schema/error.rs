//! The failures the schema layers add to a handler's or publisher's own.

use std::fmt;

/// `error.type` of a payload its schema rejects.
pub const SCHEMA: &str = "schema";

/// `error.type` of a payload that is not a JSON object naming its event type.
pub const DECODE: &str = "decode";

/// `error.type` of an event whose type and version have no schema (when the layer rejects
/// those).
pub const UNKNOWN_SCHEMA: &str = "unknown_schema";

/// The longest message a [`SchemaError`] keeps, in bytes: what fits the consumer's
/// `dlq-error-message` header (SPEC §8). The rest is cut on a character boundary.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Why a payload was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemaErrorKind {
    /// Its schema rejects it.
    Schema,
    /// It is not JSON, not a JSON object, or names no event type.
    Decode,
    /// No schema is registered for its event type and version.
    UnknownSchema,
}

impl SchemaErrorKind {
    /// The `error.type` value (and `reason` label): [`SCHEMA`], [`DECODE`] or
    /// [`UNKNOWN_SCHEMA`].
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Schema => SCHEMA,
            Self::Decode => DECODE,
            Self::UnknownSchema => UNKNOWN_SCHEMA,
        }
    }
}

/// A payload the schema layers refused, with what was wrong with it.
///
/// Its text ([`Display`](fmt::Display), also [`message`](Self::message)) names the event type
/// and version and, for [`Schema`](SchemaErrorKind::Schema), the JSON pointer of each
/// offending value and the validator's complaint, e.g.
/// `OrderCreated v1: /data/amountCents: "12" is not of type "integer"`; it is at most
/// [`MAX_MESSAGE_BYTES`] long, whatever the payload.
#[derive(Clone, Debug)]
pub struct SchemaError {
    kind: SchemaErrorKind,
    message: String,
    path: Option<String>,
}

impl SchemaError {
    pub(crate) fn new(kind: SchemaErrorKind, message: String, path: Option<String>) -> Self {
        Self {
            kind,
            message,
            path,
        }
    }

    /// What was wrong.
    pub fn kind(&self) -> SchemaErrorKind {
        self.kind
    }

    /// The `error.type` of this failure (SPEC §3, §8): `schema`, `decode` or
    /// `unknown_schema`. None of them goes away on a retry: dead-letter them.
    pub fn error_type(&self) -> &'static str {
        self.kind.as_str()
    }

    /// The JSON pointer of the first value the schema rejected (`""` for the whole payload);
    /// `None` unless the kind is [`Schema`](SchemaErrorKind::Schema).
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// The error's text.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SchemaError {}

/// A schema that could not be used: not JSON, or not a schema the validator can compile
/// (an unknown draft, a malformed keyword, a `$ref` to a document it may not fetch).
#[derive(Debug)]
pub struct BuildError {
    event_type: String,
    version: String,
    message: String,
}

impl BuildError {
    pub(crate) fn new(event_type: &str, version: &str, message: String) -> Self {
        Self {
            event_type: event_type.to_owned(),
            version: version.to_owned(),
            message,
        }
    }

    /// The event type of the schema that failed.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// Its version.
    pub fn version(&self) -> &str {
        &self.version
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the schema of {} v{} does not compile: {}",
            self.event_type, self.version, self.message
        )
    }
}

impl std::error::Error for BuildError {}

/// Text up to [`MAX_MESSAGE_BYTES`]: writing more is cut on a character boundary and then
/// refused, so formatting a huge value stops early.
pub(crate) struct Bounded {
    pub(crate) text: String,
    pub(crate) full: bool,
}

impl Bounded {
    pub(crate) fn new() -> Self {
        Self {
            text: String::new(),
            full: false,
        }
    }
}

impl fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = MAX_MESSAGE_BYTES.saturating_sub(self.text.len());
        if s.len() <= room {
            self.text.push_str(s);
            return Ok(());
        }
        let mut cut = room;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        self.text.push_str(s.get(..cut).unwrap_or_default());
        self.full = true;
        Err(fmt::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write;

    #[test]
    fn bounded_text_is_cut_on_a_character_boundary() {
        let mut text = Bounded::new();
        assert!(write!(text, "{}", "é".repeat(2000)).is_err());
        assert!(text.full);
        assert!(text.text.len() <= MAX_MESSAGE_BYTES);
        assert_eq!(text.text.len(), MAX_MESSAGE_BYTES);
        let mut short = Bounded::new();
        write!(short, "a{}", 1).unwrap();
        assert_eq!((short.text.as_str(), short.full), ("a1", false));
    }
}
