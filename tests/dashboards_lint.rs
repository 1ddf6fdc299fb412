//! Lints the shipped Grafana dashboards (`dashboards/*.json`) the way Grafana's dashboard-linter
//! would, and ties dashboards and alert rules to the metric catalogue in the code:
//!
//! - a `datasource` variable, and `job` / `instance` query variables on `$datasource`;
//! - every panel has a description and a unit, and uses the datasource variable, as does every
//!   target;
//! - every selector filters on `job=~"$job"` and `instance=~"$instance"` (threshold series are
//!   recorded by Prometheus itself and have neither; `dashboards/.lint` lists them for the
//!   upstream linter);
//! - counters and histogram series only appear inside `rate`, `irate` or `increase`, and every
//!   range is `$__rate_interval`;
//! - stable `uid`s and `schemaVersion` >= 39;
//! - every metric name a dashboard or a rule uses is a catalogue family (or a series of one, or a
//!   recording rule of `alerts/`), and every catalogue family is shown on some dashboard.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use eventscope::metrics::{MetricKind, CATALOGUE};
use serde_json::Value;

const RATE_FUNCTIONS: &[&str] = &["rate", "irate", "increase"];
const THRESHOLD_PREFIX: &str = "eventscope:threshold:";
const MIN_SCHEMA_VERSION: u64 = 39;

// ---------------------------------------------------------------------------------------------
// A small PromQL scanner: enough to find every series selector, its matchers, its range and the
// function call it sits in, for the queries this repository writes.

/// One series selector in a query.
#[derive(Debug, Clone, PartialEq)]
struct Selector {
    /// The metric name, `None` for a bare `{...}` selector.
    name: Option<String>,
    /// The text between `{` and `}`, empty when there are none.
    matchers: String,
    /// The text between `[` and `]` right after the selector.
    range: Option<String>,
    /// The innermost function or aggregation the selector is an argument of.
    function: Option<String>,
}

#[derive(Debug, Default)]
struct Scan {
    selectors: Vec<Selector>,
    /// Every `[...]` in the query: selector ranges and subquery ranges alike.
    ranges: Vec<String>,
}

const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "Inf", "NaN",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const AGGREGATIONS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

struct Scanner<'a> {
    chars: Vec<char>,
    pos: usize,
    expr: &'a str,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn skip_string(&mut self) {
        let quote = self.chars[self.pos];
        self.pos += 1;
        while let Some(c) = self.peek() {
            self.pos += 1;
            if c == '\\' && quote != '`' {
                self.pos += 1;
            } else if c == quote {
                return;
            }
        }
        panic!("unterminated string in {:?}", self.expr);
    }

    /// Consumes a bracketed region starting at the opening char and returns its inner text.
    fn take_balanced(&mut self, open: char, close: char) -> String {
        assert_eq!(self.peek(), Some(open));
        let start = self.pos + 1;
        let mut depth = 0;
        while let Some(c) = self.peek() {
            match c {
                '"' | '\'' | '`' => {
                    self.skip_string();
                    continue;
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        self.pos += 1;
                        return self.chars[start..self.pos - 1].iter().collect();
                    }
                }
                _ => {}
            }
            self.pos += 1;
        }
        panic!("unbalanced {open}{close} in {:?}", self.expr);
    }

    fn take_ident(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(is_ident_char) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }
}

fn scan(expr: &str) -> Scan {
    let mut s = Scanner {
        chars: expr.chars().collect(),
        pos: 0,
        expr,
    };
    let mut out = Scan::default();
    // One entry per open parenthesis: the function it calls, if any.
    let mut stack: Vec<Option<String>> = Vec::new();
    while let Some(c) = s.peek() {
        match c {
            c if c.is_whitespace() => s.pos += 1,
            '"' | '\'' | '`' => s.skip_string(),
            '#' => {
                while s.peek().is_some_and(|c| c != '\n') {
                    s.pos += 1;
                }
            }
            '$' => {
                s.pos += 1;
                if s.peek() == Some('{') {
                    s.take_balanced('{', '}');
                } else {
                    s.take_ident();
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && s.chars.get(s.pos + 1).is_some_and(char::is_ascii_digit)) =>
            {
                // Numbers and durations (`0.95`, `1e-9`, `5m`, `1h30m`).
                while s
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.')
                {
                    s.pos += 1;
                }
            }
            '(' => {
                stack.push(None);
                s.pos += 1;
            }
            ')' => {
                stack
                    .pop()
                    .unwrap_or_else(|| panic!("unbalanced ) in {expr:?}"));
                s.pos += 1;
            }
            '[' => {
                let range = s.take_balanced('[', ']');
                out.ranges.push(range);
            }
            '{' => {
                let selector = selector_at(&mut s, None, &stack, &mut out);
                out.selectors.push(selector);
            }
            c if is_ident_start(c) => {
                let ident = s.take_ident();
                s.skip_ws();
                if LABEL_LIST_KEYWORDS.contains(&ident.as_str()) {
                    if s.peek() == Some('(') {
                        s.take_balanced('(', ')');
                    }
                } else if KEYWORDS.contains(&ident.as_str()) {
                    // Operators and literals.
                } else if AGGREGATIONS.contains(&ident.as_str())
                    && matches!(s.peek(), Some('(' | 'b' | 'w'))
                {
                    // `sum by (x) (...)`: skip the grouping, the call follows.
                    let save = s.pos;
                    let next = s.take_ident();
                    if next == "by" || next == "without" {
                        s.skip_ws();
                        s.take_balanced('(', ')');
                        s.skip_ws();
                    } else {
                        s.pos = save;
                    }
                    assert_eq!(
                        s.peek(),
                        Some('('),
                        "aggregation {ident} without arguments in {expr:?}"
                    );
                    stack.push(Some(ident));
                    s.pos += 1;
                } else if s.peek() == Some('(') {
                    stack.push(Some(ident));
                    s.pos += 1;
                } else {
                    let selector = selector_at(&mut s, Some(ident), &stack, &mut out);
                    out.selectors.push(selector);
                }
            }
            _ => s.pos += 1,
        }
    }
    assert!(stack.is_empty(), "unbalanced ( in {expr:?}");
    out
}

fn selector_at(
    s: &mut Scanner<'_>,
    name: Option<String>,
    stack: &[Option<String>],
    out: &mut Scan,
) -> Selector {
    s.skip_ws();
    let matchers = if s.peek() == Some('{') {
        s.take_balanced('{', '}')
    } else {
        String::new()
    };
    s.skip_ws();
    let range = if s.peek() == Some('[') {
        let range = s.take_balanced('[', ']');
        out.ranges.push(range.clone());
        Some(range)
    } else {
        None
    };
    Selector {
        name,
        matchers,
        range,
        function: stack.last().cloned().flatten(),
    }
}

// ---------------------------------------------------------------------------------------------
// Loading.

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.{ext} in {}", dir.display());
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

struct Dashboard {
    file: String,
    json: Value,
}

fn dashboards() -> Vec<Dashboard> {
    files(&root().join("dashboards"), "json")
        .into_iter()
        .map(|path| Dashboard {
            file: path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned(),
            json: serde_json::from_str(&read(&path))
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display())),
        })
        .collect()
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

struct Target<'a> {
    panel: &'a str,
    index: usize,
    expr: &'a str,
}

fn targets(dashboard: &Value) -> Vec<Target<'_>> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("?");
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .map(move |(index, t)| Target {
                    panel: title,
                    index,
                    expr: t["expr"].as_str().unwrap_or(""),
                })
        })
        .collect()
}

fn variable<'a>(dashboard: &'a Value, name: &str) -> Option<&'a Value> {
    dashboard["templating"]["list"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)
}

fn variable_query(var: &Value) -> &str {
    var["query"]["query"]
        .as_str()
        .or_else(|| var["query"].as_str())
        .unwrap_or("")
}

fn uses_datasource_variable(datasource: &Value) -> bool {
    matches!(
        datasource["uid"].as_str(),
        Some("${datasource}" | "$datasource")
    )
}

/// Names a rule or a dashboard may query: catalogue families, the series of histograms, and the
/// recording rules of `alerts/`.
fn known_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for family in CATALOGUE {
        match family.kind {
            MetricKind::Histogram => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{}{suffix}", family.name));
                }
            }
            _ => {
                names.insert(family.name.to_owned());
            }
        }
    }
    names.extend(recorded_names());
    names
}

fn is_counter_series(name: &str) -> bool {
    CATALOGUE.iter().any(|f| match f.kind {
        MetricKind::Counter => f.name == name,
        MetricKind::Histogram => ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name == format!("{}{s}", f.name)),
        MetricKind::Gauge => false,
    }) || name.ends_with("_total")
}

/// The catalogue family a series name belongs to.
fn family_of(name: &str) -> Option<&'static str> {
    CATALOGUE.iter().map(|f| f.name).find(|family| {
        name == *family
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name == format!("{family}{s}"))
    })
}

#[derive(serde::Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(serde::Deserialize)]
struct RuleGroup {
    rules: Vec<Rule>,
}

#[derive(serde::Deserialize)]
struct Rule {
    record: Option<String>,
    alert: Option<String>,
    expr: String,
}

fn rules() -> Vec<Rule> {
    files(&root().join("alerts"), "yml")
        .into_iter()
        .flat_map(|path| {
            let file: RuleFile = serde_yaml_ng::from_str(&read(&path))
                .unwrap_or_else(|e| panic!("{} is not a rule file: {e}", path.display()));
            file.groups.into_iter().flat_map(|g| g.rules)
        })
        .collect()
}

fn recorded_names() -> BTreeSet<String> {
    rules().into_iter().filter_map(|r| r.record).collect()
}

/// Problems with the selectors of one query, shared by dashboard targets and rules.
fn lint_selectors(where_: &str, scan: &Scan, known: &BTreeSet<String>, problems: &mut Vec<String>) {
    for sel in &scan.selectors {
        let Some(name) = &sel.name else {
            problems.push(format!(
                "{where_}: selector {{{}}} has no metric name",
                sel.matchers
            ));
            continue;
        };
        if !known.contains(name) {
            problems.push(format!(
                "{where_}: `{name}` is neither a catalogue metric nor a recording rule"
            ));
        }
        if is_counter_series(name)
            && !sel
                .function
                .as_deref()
                .is_some_and(|f| RATE_FUNCTIONS.contains(&f))
        {
            problems.push(format!(
                "{where_}: counter `{name}` must be inside rate/irate/increase, found in {:?}",
                sel.function
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The scanner's own tests: the lint is only as good as the scanner.

#[test]
fn scanner_finds_selectors_functions_and_ranges() {
    let scan = scan(
        r#"histogram_quantile(0.95, sum by (le, job) (rate(a_bucket{job=~"$job", le="1"}[$__rate_interval])))
           / on (job) group_left (x) max without (instance) (b_gauge offset 5m) > bool 2
           or label_replace(sum(c_total{error_type!=""}), "error_type", "ok", "error_type", "")
           or time() - d:recorded:rate5m or vector(0) unless {__name__="e"}"#,
    );
    let found: Vec<(Option<&str>, Option<&str>, Option<&str>)> = scan
        .selectors
        .iter()
        .map(|s| (s.name.as_deref(), s.function.as_deref(), s.range.as_deref()))
        .collect();
    assert_eq!(
        found,
        vec![
            (Some("a_bucket"), Some("rate"), Some("$__rate_interval")),
            (Some("b_gauge"), Some("max"), None),
            (Some("c_total"), Some("sum"), None),
            (Some("d:recorded:rate5m"), None, None),
            (None, None, None),
        ]
    );
    assert_eq!(scan.selectors[0].matchers, r#"job=~"$job", le="1""#);
    assert_eq!(scan.ranges, vec!["$__rate_interval"]);
}

#[test]
fn lint_rejects_bare_counters_unknown_names_and_fixed_ranges() {
    let known: BTreeSet<String> = ["messaging_client_sent_messages_total".to_owned()].into();
    let mut problems = Vec::new();
    let scan = scan(r#"sum(messaging_client_sent_messages_total) + rate(nonexistent_total[5m])"#);
    lint_selectors("probe", &scan, &known, &mut problems);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].contains("must be inside rate"));
    assert!(problems[1].contains("nonexistent_total"));
    assert_eq!(scan.ranges, vec!["5m"]);
}

// ---------------------------------------------------------------------------------------------
// The dashboards.

#[test]
fn dashboards_have_stable_identity_and_current_schema() {
    let mut uids = BTreeSet::new();
    let mut problems = Vec::new();
    for d in dashboards() {
        let uid = d.json["uid"].as_str().unwrap_or("");
        let stable = !uid.is_empty()
            && uid.len() <= 40
            && uid
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !stable {
            problems.push(format!(
                "{}: uid {uid:?} is not a stable lower-case slug",
                d.file
            ));
        }
        if !uids.insert(uid.to_owned()) {
            problems.push(format!("{}: uid {uid} is used twice", d.file));
        }
        if d.file != format!("{uid}.json") {
            problems.push(format!("{}: file name should be {uid}.json", d.file));
        }
        if !d.json["id"].is_null() {
            problems.push(format!(
                "{}: `id` must be null so imports do not clash",
                d.file
            ));
        }
        match d.json["schemaVersion"].as_u64() {
            Some(v) if v >= MIN_SCHEMA_VERSION => {}
            other => problems.push(format!(
                "{}: schemaVersion {other:?} < {MIN_SCHEMA_VERSION}",
                d.file
            )),
        }
        if d.json["title"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{}: no title", d.file));
        }
        let ids: Vec<u64> = panels(&d.json)
            .iter()
            .filter_map(|p| p["id"].as_u64())
            .collect();
        let unique: BTreeSet<u64> = ids.iter().copied().collect();
        if ids.len() != panels(&d.json).len() || unique.len() != ids.len() {
            problems.push(format!("{}: every panel needs a unique numeric id", d.file));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn dashboards_have_datasource_job_and_instance_variables() {
    let known = known_names();
    let mut problems = Vec::new();
    for d in dashboards() {
        match variable(&d.json, "datasource") {
            Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
            _ => problems.push(format!(
                "{}: no `datasource` variable of type datasource / prometheus",
                d.file
            )),
        }
        for name in ["job", "instance"] {
            let Some(v) = variable(&d.json, name) else {
                problems.push(format!("{}: no `{name}` variable", d.file));
                continue;
            };
            let query = variable_query(v);
            let ok = v["type"] == "query"
                && v["label"] == name
                && uses_datasource_variable(&v["datasource"])
                && v["multi"] == true
                && v["includeAll"] == true
                && v["allValue"] == ".+"
                && query.starts_with("label_values(")
                && query.ends_with(&format!(", {name})"));
            if !ok {
                problems.push(format!(
                    "{}: `{name}` must be a multi-value query variable labelled {name} on $datasource \
                     with allValue .+ and a label_values(..., {name}) query",
                    d.file
                ));
            }
        }
        // Variable queries name real metrics too.
        for v in d.json["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let query = variable_query(v);
            if let Some(inner) = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
            {
                if !uses_datasource_variable(&v["datasource"]) {
                    problems.push(format!(
                        "{}: variable {} does not use $datasource",
                        d.file, v["name"]
                    ));
                }
                let selector = inner.rsplit_once(',').map_or(inner, |(sel, _)| sel);
                for sel in scan(selector).selectors {
                    if let Some(name) = sel.name {
                        if !known.contains(&name) {
                            problems.push(format!(
                                "{}: variable {} queries unknown `{name}`",
                                d.file, v["name"]
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_panel_has_description_unit_and_datasource_variable() {
    let mut problems = Vec::new();
    for d in dashboards() {
        for panel in panels(&d.json) {
            if panel["type"] == "row" {
                continue;
            }
            let title = panel["title"].as_str().unwrap_or("?");
            let at = format!("{} / {title}", d.file);
            if panel["description"]
                .as_str()
                .is_none_or(|s| s.trim().is_empty())
            {
                problems.push(format!("{at}: no description"));
            }
            if panel["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                problems.push(format!("{at}: no unit"));
            }
            if panel["type"] == "heatmap"
                && panel["options"]["yAxis"]["unit"]
                    .as_str()
                    .is_none_or(str::is_empty)
            {
                problems.push(format!("{at}: heatmap without a y-axis unit"));
            }
            if !uses_datasource_variable(&panel["datasource"]) {
                problems.push(format!("{at}: panel datasource is not $datasource"));
            }
            let targets = panel["targets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{at}: no targets"));
            }
            for t in targets {
                if !uses_datasource_variable(&t["datasource"]) {
                    problems.push(format!(
                        "{at} [{}]: target datasource is not $datasource",
                        t["refId"]
                    ));
                }
                if t["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                    problems.push(format!("{at} [{}]: empty expr", t["refId"]));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_query_filters_on_job_and_instance_and_uses_rate_interval() {
    let known = known_names();
    let mut problems = Vec::new();
    let mut exempt = BTreeSet::new();
    for d in dashboards() {
        let title = d.json["title"].as_str().unwrap_or("?").to_owned();
        for t in targets(&d.json) {
            let at = format!("{} / {} [{}]", d.file, t.panel, t.index);
            let scan = scan(t.expr);
            if scan.selectors.is_empty() {
                problems.push(format!("{at}: selects no series: {}", t.expr));
            }
            lint_selectors(&at, &scan, &known, &mut problems);
            for sel in &scan.selectors {
                let name = sel.name.as_deref().unwrap_or("");
                if name.starts_with(THRESHOLD_PREFIX) {
                    exempt.insert((title.clone(), t.panel.to_owned(), t.index));
                    continue;
                }
                for matcher in [r#"job=~"$job""#, r#"instance=~"$instance""#] {
                    if !sel.matchers.split(',').any(|m| m.trim() == matcher) {
                        problems.push(format!("{at}: `{name}` lacks {matcher}"));
                    }
                }
            }
            for range in &scan.ranges {
                if range != "$__rate_interval" {
                    problems.push(format!(
                        "{at}: range [{range}] should be [$__rate_interval]"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The upstream linter learns about the same exemptions from dashboards/.lint.
    #[derive(serde::Deserialize)]
    struct LintFile {
        exclusions: BTreeMap<String, Exclusion>,
    }
    #[derive(serde::Deserialize)]
    struct Exclusion {
        reason: String,
        entries: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        dashboard: String,
        panel: String,
        #[serde(rename = "targetIdx")]
        target_idx: usize,
    }
    let lint: LintFile =
        serde_yaml_ng::from_str(&read(&root().join("dashboards/.lint"))).expect("dashboards/.lint");
    for rule in ["target-job-rule", "target-instance-rule"] {
        let exclusion = lint
            .exclusions
            .get(rule)
            .unwrap_or_else(|| panic!("dashboards/.lint lacks {rule}"));
        assert!(!exclusion.reason.trim().is_empty(), "{rule}: give a reason");
        let listed: BTreeSet<(String, String, usize)> = exclusion
            .entries
            .iter()
            .map(|e| (e.dashboard.clone(), e.panel.clone(), e.target_idx))
            .collect();
        assert_eq!(
            listed, exempt,
            "dashboards/.lint {rule} entries must be exactly the threshold targets"
        );
    }
}

#[test]
fn rules_use_only_catalogue_metrics_and_rate_their_counters() {
    let known = known_names();
    let mut problems = Vec::new();
    let rules = rules();
    assert!(!rules.is_empty());
    for rule in &rules {
        let name = rule
            .alert
            .as_deref()
            .or(rule.record.as_deref())
            .unwrap_or("?");
        lint_selectors(
            &format!("rule {name}"),
            &scan(&rule.expr),
            &known,
            &mut problems,
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_catalogue_family_is_on_a_dashboard() {
    let mut shown = BTreeSet::new();
    for d in dashboards() {
        for t in targets(&d.json) {
            for sel in scan(t.expr).selectors {
                if let Some(family) = sel.name.as_deref().and_then(family_of) {
                    shown.insert(family);
                }
            }
        }
    }
    let missing: Vec<&str> = CATALOGUE
        .iter()
        .map(|f| f.name)
        .filter(|n| !shown.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "catalogue families on no dashboard: {missing:?}"
    );
    // SPEC §4's 18 families, and messaging_consumer_connected and
    // messaging_consumer_reconnects_total (README, "Decisions").
    assert_eq!(
        CATALOGUE.len(),
        20,
        "SPEC §4 lists 18 families, the README two more; update the dashboards with the catalogue"
    );
}
