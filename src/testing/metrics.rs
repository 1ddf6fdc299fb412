//! Metric reads: one exposition, parsed, read by family name and labels.

use std::collections::HashMap;
use std::fmt;

use crate::metrics::{MetricKind, Metrics, CATALOGUE};

/// The series of a [`Metrics`] at one moment, read by family name and labels, through the same
/// text exposition `/metrics` serves.
///
/// Every read takes a family name (from [`metrics::name`](crate::metrics::name)) and label
/// pairs (names from [`metrics::label`](crate::metrics::label)), and sums every series whose
/// labels include those pairs, as PromQL's `sum(family{...})` would: no pairs sum the whole
/// family. A label a series lacks reads as empty, so `(label::ERROR_TYPE, "")` selects the
/// successes. It is `None` when no series matches: a family that recorded nothing is told
/// apart from one that counted zero.
///
/// Misreads fail loudly instead of reading `None`: a family that is neither in the
/// [catalogue](crate::metrics::CATALOGUE) nor in the exposition, a read of the wrong kind (a
/// histogram through [`counter`](Self::counter)), or a label the family does not have.
///
/// Its `Display` is the exposition it read.
#[derive(Clone)]
pub struct MetricsSnapshot {
    text: String,
    samples: Vec<Sample>,
    /// Family name -> `# TYPE`.
    types: HashMap<String, String>,
}

#[derive(Clone, Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl fmt::Debug for MetricsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsSnapshot")
            .field("series", &self.samples.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for MetricsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl MetricsSnapshot {
    /// The series of `metrics` now.
    pub fn of(metrics: &Metrics) -> Self {
        Self::from_text(metrics.encode())
    }

    /// The series of a Prometheus text exposition, as a scrape of `/metrics` returns it.
    ///
    /// # Panics
    ///
    /// When a line is neither a comment nor a sample.
    #[track_caller]
    pub fn from_text(text: impl Into<String>) -> Self {
        let text = text.into();
        let mut samples = Vec::new();
        let mut types = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                if let (Some("TYPE"), Some(name), Some(kind)) =
                    (words.next(), words.next(), words.next())
                {
                    types.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            if line.is_empty() {
                continue;
            }
            match parse_sample(line) {
                Some(sample) => samples.push(sample),
                None => panic!(
                    "line {} of the exposition is not a sample: {line:?}",
                    number + 1
                ),
            }
        }
        Self {
            text,
            samples,
            types,
        }
    }

    /// The value of a counter, summed over the matching series.
    ///
    /// # Panics
    ///
    /// On a misread (see the [type docs](Self)), or a counter holding a fraction.
    #[track_caller]
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        self.check(name, MetricKind::Counter, labels);
        self.sum(name, labels).map(|v| whole(name, v))
    }

    /// The value of a gauge, summed over the matching series.
    ///
    /// # Panics
    ///
    /// On a misread (see the [type docs](Self)).
    #[track_caller]
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.check(name, MetricKind::Gauge, labels);
        self.sum(name, labels)
    }

    /// How many observations a histogram holds, summed over the matching series.
    ///
    /// # Panics
    ///
    /// On a misread (see the [type docs](Self)).
    #[track_caller]
    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        self.check(name, MetricKind::Histogram, labels);
        let count = format!("{name}_count");
        self.sum(&count, labels).map(|v| whole(&count, v))
    }

    /// The sum of a histogram's observations (seconds, for the duration families), summed over
    /// the matching series.
    ///
    /// # Panics
    ///
    /// On a misread (see the [type docs](Self)).
    #[track_caller]
    pub fn histogram_sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.check(name, MetricKind::Histogram, labels);
        self.sum(&format!("{name}_sum"), labels)
    }

    /// The series of a sample name with their labels, for the crate's own reads.
    pub(crate) fn series<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a [(String, String)], f64)> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name)
            .map(|s| (s.labels.as_slice(), s.value))
    }

    fn sum(&self, sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series(sample)
            .filter(|(have, _)| matches(have, labels))
            .map(|(_, value)| value)
            .reduce(|a, b| a + b)
    }

    #[track_caller]
    fn check(&self, name: &str, want: MetricKind, labels: &[(&str, &str)]) {
        let catalogued = CATALOGUE.iter().find(|f| f.name == name);
        let kind = catalogued.map(|f| Some(f.kind)).or_else(|| {
            self.types.get(name).map(|t| match t.as_str() {
                "counter" => Some(MetricKind::Counter),
                "gauge" => Some(MetricKind::Gauge),
                "histogram" => Some(MetricKind::Histogram),
                // Summaries and untyped families are read as they come.
                _ => None,
            })
        });
        let Some(kind) = kind else {
            let hint = ["_count", "_sum", "_bucket"]
                .iter()
                .find(|suffix| name.ends_with(*suffix))
                .map_or("", |_| {
                    " (read a histogram's count and sum by the family's name, with `histogram_count` and `histogram_sum`)"
                });
            panic!(
                "no metric family `{name}` in the catalogue or the exposition{hint}; the exposition:\n{self}"
            );
        };
        if let Some(kind) = kind.filter(|k| *k != want) {
            let read = match kind {
                MetricKind::Counter => "`counter`",
                MetricKind::Gauge => "`gauge`",
                MetricKind::Histogram => "`histogram_count` or `histogram_sum`",
            };
            panic!("`{name}` is a {kind:?}, not a {want:?}: read it with {read}");
        }
        let known: Vec<&str> = match catalogued {
            Some(family) => family.labels.to_vec(),
            None => {
                let mut seen: Vec<&str> = self
                    .samples
                    .iter()
                    .filter(|s| s.name.strip_prefix(name).is_some_and(is_family_suffix))
                    .flat_map(|s| s.labels.iter().map(|(k, _)| k.as_str()))
                    .filter(|k| *k != "le" && *k != "quantile")
                    .collect();
                seen.sort_unstable();
                seen.dedup();
                seen
            }
        };
        if known.is_empty() {
            return;
        }
        if let Some((label, _)) = labels.iter().find(|(k, _)| !known.contains(k)) {
            panic!(
                "`{name}` has no label `{label}`; its labels: {}",
                known.join(", ")
            );
        }
    }
}

fn is_family_suffix(rest: &str) -> bool {
    matches!(rest, "" | "_count" | "_sum" | "_bucket")
}

fn matches(have: &[(String, String)], want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| {
        let value = have
            .iter()
            .find(|(name, _)| name == k)
            .map_or("", |(_, value)| value.as_str());
        value == *v
    })
}

#[track_caller]
fn whole(name: &str, value: f64) -> u64 {
    assert!(
        value >= 0.0 && value.fract() == 0.0 && value <= u64::MAX as f64,
        "`{name}` is {value}, not a count: read it with `gauge`"
    );
    value as u64
}

/// `name{label="value",...} value [timestamp]`, label values with `\\`, `\"` and `\n` escaped.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            // A label name, or the end of the set.
            while chars
                .next_if(|(_, c)| *c == ',' || c.is_whitespace())
                .is_some()
            {}
            let (start, c) = chars.next()?;
            if c == '}' {
                rest = &inner[start + 1..];
                break;
            }
            let mut end = start + c.len_utf8();
            while let Some((i, c)) = chars.next_if(|(_, c)| *c != '=') {
                end = i + c.len_utf8();
            }
            let key = inner[start..end].trim().to_owned();
            chars.next().filter(|(_, c)| *c == '=')?;
            chars.next().filter(|(_, c)| *c == '"')?;
            let mut value = String::new();
            loop {
                match chars.next()? {
                    (_, '"') => break,
                    (_, '\\') => match chars.next()? {
                        (_, 'n') => value.push('\n'),
                        (_, c) => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            }
            labels.push((key, value));
        }
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{label, name};

    const TEXT: &str = r#"# HELP messaging_client_consumed_messages_total Messages delivered to the handler.
# TYPE messaging_client_consumed_messages_total counter
messaging_client_consumed_messages_total{messaging_consumer_group_name="billing",messaging_destination_name="orders",messaging_system="memory"} 3
messaging_client_consumed_messages_total{messaging_consumer_group_name="billing",messaging_destination_name="refunds",messaging_system="memory"} 2
messaging_client_consumed_messages_total{messaging_consumer_group_name="audit",messaging_destination_name="orders",messaging_system="memory"} 0
# TYPE messaging_process_duration_seconds histogram
messaging_process_duration_seconds_bucket{error_type="",messaging_consumer_group_name="billing",le="+Inf"} 4
messaging_process_duration_seconds_sum{error_type="",messaging_consumer_group_name="billing"} 0.25
messaging_process_duration_seconds_count{error_type="",messaging_consumer_group_name="billing"} 4
messaging_process_duration_seconds_count{error_type="Declined",messaging_consumer_group_name="billing"} 1
# TYPE my_queue_depth gauge
my_queue_depth{queue="a \"quoted\" \\ name\nx"} 1.5
"#;

    #[test]
    fn reads_sum_the_matching_series_and_tell_absent_from_zero() {
        let m = MetricsSnapshot::from_text(TEXT);
        let consumed = name::CONSUMED_MESSAGES;
        assert_eq!(m.counter(consumed, &[]), Some(5));
        assert_eq!(m.counter(consumed, &[(label::GROUP, "billing")]), Some(5));
        assert_eq!(
            m.counter(consumed, &[(label::DESTINATION, "orders")]),
            Some(3)
        );
        assert_eq!(m.counter(consumed, &[(label::GROUP, "audit")]), Some(0));
        assert_eq!(m.counter(consumed, &[(label::GROUP, "nobody")]), None);
        // A catalogued family with no series at all reads as absent.
        assert_eq!(m.counter(name::RETRIES, &[]), None);

        let process = name::PROCESS_DURATION;
        assert_eq!(m.histogram_count(process, &[]), Some(5));
        assert_eq!(
            m.histogram_count(process, &[(label::ERROR_TYPE, "")]),
            Some(4)
        );
        assert_eq!(
            m.histogram_sum(process, &[(label::ERROR_TYPE, "")]),
            Some(0.25)
        );
        assert_eq!(m.histogram_count(name::QUEUE_TIME, &[]), None);

        assert_eq!(
            m.gauge("my_queue_depth", &[("queue", "a \"quoted\" \\ name\nx")]),
            Some(1.5)
        );
        assert!(m.to_string().starts_with("# HELP"));
    }

    #[test]
    #[should_panic(expected = "is a Histogram, not a Counter: read it with `histogram_count`")]
    fn a_read_of_the_wrong_kind_fails() {
        MetricsSnapshot::from_text(TEXT).counter(name::PROCESS_DURATION, &[]);
    }

    #[test]
    #[should_panic(expected = "has no label `messaging_destination_partition_id`")]
    fn a_label_the_family_lacks_fails() {
        MetricsSnapshot::from_text(TEXT)
            .counter(name::CONSUMED_MESSAGES, &[(label::PARTITION, "0")]);
    }

    #[test]
    #[should_panic(expected = "no metric family `messaging_process_duration_seconds_count`")]
    fn an_unknown_family_fails_with_a_hint() {
        MetricsSnapshot::from_text(TEXT).counter(&format!("{}_count", name::PROCESS_DURATION), &[]);
    }

    #[test]
    #[should_panic(expected = "line 2 of the exposition is not a sample")]
    fn a_malformed_exposition_fails() {
        MetricsSnapshot::from_text("# TYPE x counter\nx{a=\"1\" 1\n");
    }

    #[test]
    fn reads_a_live_registry() {
        let metrics = Metrics::new();
        metrics.record_duplicate("memory", "orders", "billing");
        let m = MetricsSnapshot::of(&metrics);
        assert_eq!(
            m.counter(name::DUPLICATES, &[(label::DESTINATION, "orders")]),
            Some(1)
        );
    }
}
