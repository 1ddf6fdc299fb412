//! Compiled schemas by event type and version, and the check of one payload.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::error::{Bounded, BuildError, SchemaError, SchemaErrorKind};
use super::header;
use crate::message::Headers;

/// How many of the validator's complaints a [`SchemaError`] names.
const MAX_REPORTED: usize = 3;

/// Compiled JSON Schemas, by event type and version; cheap to clone and share.
///
/// Built once, at startup, by [`Schemas::builder`]: every schema is compiled then, and one
/// that does not compile is an error there, not at the first message.
#[derive(Clone)]
pub struct Schemas {
    types: Arc<HashMap<Box<str>, Versions>>,
}

struct Versions {
    by_version: HashMap<Box<str>, Arc<Compiled>>,
    /// The highest numeric version, which validates events of newer versions.
    newest: Option<(u64, Arc<Compiled>)>,
}

struct Compiled {
    label: Box<str>,
    validator: jsonschema::Validator,
}

impl fmt::Debug for Schemas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for versions in self.types.values() {
            for compiled in versions.by_version.values() {
                list.entry(&compiled.label);
            }
        }
        list.finish()
    }
}

/// The outcome of a check that did not refuse the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Checked {
    /// A schema accepted it.
    Valid,
    /// No schema is registered for its event type and version; the layers pass it or refuse
    /// it, as configured ([`Unknown`](super::Unknown)).
    Unknown,
}

/// Builds [`Schemas`]; see [`Schemas::builder`].
#[derive(Debug, Default)]
pub struct SchemasBuilder {
    schemas: Vec<(String, String, String)>,
    exact_versions: bool,
}

impl SchemasBuilder {
    /// Registers the JSON Schema `schema` (JSON text) for events of `event_type` at
    /// `version` (`1`, `"1"` and `"1.0"` are different versions unless numeric: a version
    /// that is a whole number matches a header `1` and a payload `1` alike).
    ///
    /// The schema's own `$schema` picks the draft (default 2020-12). References are resolved
    /// within the schema only: nothing is fetched over HTTP or from files.
    pub fn schema(
        mut self,
        event_type: impl Into<String>,
        version: impl fmt::Display,
        schema: impl Into<String>,
    ) -> Self {
        self.schemas
            .push((event_type.into(), version.to_string(), schema.into()));
        self
    }

    /// Validates events only against the schema of their exact version. By default, an
    /// event of a known type whose (numeric) version is newer than every registered one is
    /// validated against the newest registered schema: a consumer reads newer events as the
    /// version it knows, as the tolerant-reader practice asks (additive changes stay valid
    /// as long as the older schema does not forbid unknown fields).
    pub fn exact_versions(mut self) -> Self {
        self.exact_versions = true;
        self
    }

    /// Compiles every schema.
    ///
    /// # Errors
    ///
    /// The first schema that is not JSON or does not compile.
    pub fn build(self) -> Result<Schemas, BuildError> {
        let mut types: HashMap<Box<str>, Versions> = HashMap::new();
        for (event_type, version, text) in self.schemas {
            let fail = |message: String| BuildError::new(&event_type, &version, message);
            let schema: Value =
                serde_json::from_str(&text).map_err(|e| fail(format!("not JSON: {e}")))?;
            let validator = jsonschema::validator_for(&schema).map_err(|e| fail(e.to_string()))?;
            let compiled = Arc::new(Compiled {
                label: format!("{event_type} v{version}").into(),
                validator,
            });
            let versions = types
                .entry(event_type.as_str().into())
                .or_insert_with(|| Versions {
                    by_version: HashMap::new(),
                    newest: None,
                });
            if !self.exact_versions {
                if let Ok(number) = version.parse::<u64>() {
                    if versions.newest.as_ref().is_none_or(|(n, _)| number > *n) {
                        versions.newest = Some((number, Arc::clone(&compiled)));
                    }
                }
            }
            let key: Box<str> = canonical_version(&version).into();
            if versions.by_version.insert(key, compiled).is_some() {
                return Err(fail("registered twice".to_owned()));
            }
        }
        Ok(Schemas {
            types: Arc::new(types),
        })
    }
}

/// A whole-number version in its plain decimal form (`01` → `1`), any other as is.
fn canonical_version(version: &str) -> String {
    match version.parse::<u64>() {
        Ok(number) => number.to_string(),
        Err(_) => version.to_owned(),
    }
}

impl Schemas {
    /// Starts registering schemas.
    pub fn builder() -> SchemasBuilder {
        SchemasBuilder::default()
    }

    /// Checks `payload` against the schema of its event type and version (SPEC §8): the
    /// type from the `event-type` header, else the payload's `eventType`; the version from
    /// the `event-version` header, else `eventVersion`, else `version`.
    ///
    /// # Errors
    ///
    /// [`SchemaErrorKind::Decode`] for a payload that is not a JSON object naming its event
    /// type, [`SchemaErrorKind::Schema`] for one its schema rejects. Never panics, whatever
    /// the bytes.
    pub fn validate<H: Headers + ?Sized>(
        &self,
        headers: &H,
        payload: &[u8],
    ) -> Result<Checked, SchemaError> {
        let value: Value = serde_json::from_slice(payload)
            .map_err(|e| decode(format_args!("the payload is not JSON: {e}")))?;
        let Some(object) = value.as_object() else {
            return Err(decode(format_args!("the payload is not a JSON object")));
        };
        let event_type = non_empty(headers.header_str(header::EVENT_TYPE))
            .or_else(|| non_empty(object.get("eventType").and_then(Value::as_str)));
        let Some(event_type) = event_type else {
            return Err(decode(format_args!(
                "no event type: no `{}` header and no `eventType` text field",
                header::EVENT_TYPE
            )));
        };
        let Some(versions) = self.types.get(event_type) else {
            return Ok(Checked::Unknown);
        };
        let mut number = itoa::Buffer::new();
        let version = non_empty(headers.header_str(header::EVENT_VERSION))
            .map(|v| v.trim())
            .or_else(|| payload_version(object, &mut number));
        let Some(compiled) = version.and_then(|version| versions.find(version)) else {
            return Ok(Checked::Unknown);
        };
        compiled.check(&value)
    }

    /// The text of an unknown-schema refusal for this payload (called only then).
    pub(crate) fn unknown<H: Headers + ?Sized>(&self, headers: &H, payload: &[u8]) -> SchemaError {
        let value: Option<Map<String, Value>> = serde_json::from_slice(payload).ok();
        let field = |name: &str| {
            value
                .as_ref()
                .and_then(|object| object.get(name))
                .map(|v| v.to_string())
        };
        let event_type = non_empty(headers.header_str(header::EVENT_TYPE))
            .map(str::to_owned)
            .or_else(|| field("eventType"))
            .unwrap_or_default();
        let version = non_empty(headers.header_str(header::EVENT_VERSION))
            .map(str::to_owned)
            .or_else(|| field("eventVersion"))
            .or_else(|| field("version"))
            .unwrap_or_else(|| "(none)".to_owned());
        let mut text = Bounded::new();
        let _ = write!(
            text,
            "no schema for event type {event_type} version {version}"
        );
        SchemaError::new(SchemaErrorKind::UnknownSchema, text.text, None)
    }
}

impl Versions {
    fn find(&self, version: &str) -> Option<&Arc<Compiled>> {
        if let Some(found) = self.by_version.get(version) {
            return Some(found);
        }
        let number = version.parse::<u64>().ok()?;
        if let Some(found) = self.by_version.get(number.to_string().as_str()) {
            return Some(found);
        }
        match &self.newest {
            Some((newest, compiled)) if number > *newest => Some(compiled),
            _ => None,
        }
    }
}

impl Compiled {
    fn check(&self, value: &Value) -> Result<Checked, SchemaError> {
        let mut errors = self.validator.iter_errors(value);
        let Some(first) = errors.next() else {
            return Ok(Checked::Valid);
        };
        let path = first.instance_path().as_str().to_owned();
        let mut text = Bounded::new();
        let _ = write!(text, "{}: {}: {}", self.label, pointer(&path), first);
        for error in errors.by_ref().take(MAX_REPORTED - 1) {
            if text.full {
                break;
            }
            let _ = write!(
                text,
                "; {}: {}",
                pointer(error.instance_path().as_str()),
                error
            );
        }
        if !text.full && errors.next().is_some() {
            let _ = text.write_str("; …");
        }
        Err(SchemaError::new(
            SchemaErrorKind::Schema,
            text.text,
            Some(path),
        ))
    }
}

/// The root's pointer is empty; say `/` so the message reads.
fn pointer(path: &str) -> &str {
    if path.is_empty() {
        "/"
    } else {
        path
    }
}

fn non_empty(text: Option<&str>) -> Option<&str> {
    text.filter(|t| !t.trim().is_empty())
}

/// `eventVersion`, else `version`: a text, or a whole number written into `number`.
fn payload_version<'a>(
    object: &'a Map<String, Value>,
    number: &'a mut itoa::Buffer,
) -> Option<&'a str> {
    let value = object
        .get("eventVersion")
        .or_else(|| object.get("version"))?;
    match value {
        Value::String(text) => non_empty(Some(text.trim())),
        Value::Number(n) => {
            if let Some(n) = n.as_u64() {
                Some(number.format(n))
            } else {
                // 1.0 is version 1; other numbers name no registered version.
                let f = n.as_f64()?;
                (f.fract() == 0.0 && (0.0..1e15).contains(&f)).then(|| number.format(f as u64))
            }
        }
        _ => None,
    }
}

fn decode(message: fmt::Arguments<'_>) -> SchemaError {
    let mut text = Bounded::new();
    let _ = text.write_fmt(message);
    SchemaError::new(SchemaErrorKind::Decode, text.text, None)
}
