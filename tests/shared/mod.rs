//! Helpers every broker's test support shares (`tests/{kafka,rabbitmq,nats}_support` include
//! this file and re-export it): waiting for an outcome, and reading metric samples.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

/// Polls `condition` until it holds; panics with `what` after `limit`. Tests assert outcomes,
/// never timings: the limit only keeps a broken run from hanging.
pub async fn eventually(what: &str, limit: Duration, condition: impl FnMut() -> bool) {
    eventually_or_report(what, limit, condition, String::new).await;
}

/// [`eventually`], and on a timeout the panic also says what `report` describes (what the
/// test saw), so a failed run can be understood from its output.
pub async fn eventually_or_report(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> bool,
    report: impl FnOnce() -> String,
) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition() {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let report = report();
            let separator = if report.is_empty() { "" } else { "; " };
            panic!("timed out after {limit:?} waiting for {what}{separator}{report}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The samples of one metric family in the exposition text whose labels include every
/// `label="value"` pair in `with`, as (labels, value).
pub fn samples(text: &str, name: &str, with: &[(&str, &str)]) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let labels = series.strip_prefix(name)?;
            if !(labels.is_empty() || labels.starts_with('{')) {
                return None;
            }
            with.iter()
                .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\"")))
                .then(|| (labels.to_owned(), value.parse().ok()))
                .and_then(|(labels, v)| v.map(|v| (labels, v)))
        })
        .collect()
}
