//! Shows finished traces in the terminal as trees: service, span name, duration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// Most spans kept for printing; older ones are dropped in `--forever` mode.
const KEEP: usize = 20_000;

/// A finished span and the service that produced it.
type ServiceSpan = (Arc<str>, SpanData);

#[derive(Clone, Debug, Default)]
pub struct Collected(Arc<Mutex<Vec<ServiceSpan>>>);

/// A span exporter for one service that keeps its spans for the tree view.
#[derive(Debug)]
pub struct Collector {
    service: Arc<str>,
    store: Collected,
}

impl Collected {
    pub fn exporter(&self, service: &str) -> Collector {
        Collector {
            service: Arc::from(service),
            store: self.clone(),
        }
    }

    /// Renders the trace as a tree, or `None` if none of its spans were seen.
    pub fn render(&self, trace: TraceId) -> Option<String> {
        let spans: Vec<ServiceSpan> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| s.span_context.trace_id() == trace)
            .cloned()
            .collect();
        if spans.is_empty() {
            return None;
        }
        let ids: Vec<SpanId> = spans
            .iter()
            .map(|(_, s)| s.span_context.span_id())
            .collect();
        let mut children: HashMap<SpanId, Vec<usize>> = HashMap::new();
        let mut roots = Vec::new();
        for (i, (_, span)) in spans.iter().enumerate() {
            if ids.contains(&span.parent_span_id) {
                children.entry(span.parent_span_id).or_default().push(i);
            } else {
                roots.push(i);
            }
        }
        let by_start = |v: &mut Vec<usize>| v.sort_by_key(|i| spans[*i].1.start_time);
        by_start(&mut roots);
        children.values_mut().for_each(by_start);

        let mut out = format!("trace {trace}\n");
        fn walk(
            out: &mut String,
            spans: &[ServiceSpan],
            children: &HashMap<SpanId, Vec<usize>>,
            node: usize,
            prefix: &str,
            last: bool,
        ) {
            let (service, span) = &spans[node];
            let took = span
                .end_time
                .duration_since(span.start_time)
                .unwrap_or(Duration::ZERO);
            let error = span
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == "error.type")
                .map(|kv| format!("  error.type={}", kv.value))
                .unwrap_or_default();
            let branch = if last { "└─ " } else { "├─ " };
            let label = format!("{prefix}{branch}{service:<21} {}", span.name);
            out.push_str(&format!(
                "{label:<64} {:>9.3} ms{error}\n",
                took.as_secs_f64() * 1e3
            ));
            let next = format!("{prefix}{}", if last { "   " } else { "│  " });
            if let Some(kids) = children.get(&span.span_context.span_id()) {
                for (k, child) in kids.iter().enumerate() {
                    walk(out, spans, children, *child, &next, k + 1 == kids.len());
                }
            }
        }
        for (r, root) in roots.iter().enumerate() {
            walk(&mut out, &spans, &children, *root, "", r + 1 == roots.len());
        }
        Some(out)
    }
}

impl SpanExporter for Collector {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let mut store = self.store.0.lock().unwrap();
        store.extend(batch.into_iter().map(|s| (Arc::clone(&self.service), s)));
        if store.len() > KEEP {
            let excess = store.len() - KEEP;
            store.drain(..excess);
        }
        std::future::ready(Ok(()))
    }
}
