//! The shipped Prometheus rules (`alerts/`): `promtool` accepts them and their unit tests pass,
//! every alert carries the labels and annotations the runbooks rely on, every alert is tested
//! both firing and quiet, and every threshold lives in `alerts/thresholds.yml` and is documented.
//! Also checks the compose stack's Prometheus configuration (`deploy/`).
//!
//! Needs `promtool` (Debian package `prometheus`); `PROMTOOL` overrides its path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

const RUNBOOK_BASE: &str = "https://github.com/eventscope/eventscope/blob/main/docs/runbooks.md#";
const SEVERITIES: &[&str] = &["critical", "warning", "info"];
const THRESHOLD_PREFIX: &str = "eventscope:threshold:";

#[derive(Debug, Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct TestFile {
    rule_files: Vec<String>,
    #[serde(default)]
    group_eval_order: Vec<String>,
    tests: Vec<TestGroup>,
}

#[derive(Debug, Deserialize)]
struct TestGroup {
    #[serde(default)]
    alert_rule_test: Vec<AlertTest>,
}

#[derive(Debug, Deserialize)]
struct AlertTest {
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<serde_yaml_ng::Value>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `*.yml` files directly in `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.yml files in {}", dir.display());
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn rule_files() -> Vec<(PathBuf, RuleFile)> {
    yaml_files(&root().join("alerts"))
        .into_iter()
        .map(|path| {
            let parsed = serde_yaml_ng::from_str(&read(&path))
                .unwrap_or_else(|e| panic!("{} is not a rule file: {e}", path.display()));
            (path, parsed)
        })
        .collect()
}

fn alerts() -> Vec<Rule> {
    rule_files()
        .into_iter()
        .flat_map(|(_, file)| file.groups)
        .flat_map(|group| group.rules)
        .filter(|rule| rule.alert.is_some())
        .collect()
}

fn promtool() -> String {
    std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".to_owned())
}

/// Runs `promtool` with `args` from the repository root and fails with its output unless it
/// succeeds.
fn run_promtool(args: &[&str]) -> String {
    let output = Command::new(promtool())
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{}` ({e}); install Debian's `prometheus` package or set PROMTOOL",
                promtool()
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "promtool {} failed ({}):\n{stdout}\n{stderr}",
        args.join(" "),
        output.status
    );
    stdout
}

fn relative(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| {
            p.strip_prefix(root())
                .expect("inside the repository")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

#[test]
fn promtool_check_rules_accepts_every_rule_file() {
    let files = relative(&yaml_files(&root().join("alerts")));
    let mut args = vec!["check", "rules"];
    args.extend(files.iter().map(String::as_str));
    let out = run_promtool(&args);
    assert_eq!(
        out.matches("SUCCESS").count(),
        files.len(),
        "promtool did not report every file as checked:\n{out}"
    );
}

#[test]
fn promtool_unit_tests_pass() {
    let files = relative(&yaml_files(&root().join("alerts/tests")));
    let mut args = vec!["test", "rules"];
    args.extend(files.iter().map(String::as_str));
    let out = run_promtool(&args);
    assert_eq!(
        out.matches("SUCCESS").count(),
        files.len(),
        "promtool did not report every test file as passing:\n{out}"
    );
}

/// GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn runbook_anchors() -> BTreeSet<String> {
    read(&root().join("docs/runbooks.md"))
        .lines()
        .filter(|line| line.starts_with('#'))
        .map(|line| anchor(line.trim_start_matches('#')))
        .collect()
}

#[test]
fn every_alert_has_severity_annotations_and_a_runbook_section() {
    let anchors = runbook_anchors();
    let alerts = alerts();
    assert!(
        alerts.len() >= 9,
        "expected the full alert set, found {}",
        alerts.len()
    );
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for rule in &alerts {
        let name = rule.alert.as_deref().expect("an alert");
        if !names.insert(name) {
            problems.push(format!("{name}: defined twice"));
        }
        match rule.labels.get("severity") {
            Some(s) if SEVERITIES.contains(&s.as_str()) => {}
            other => problems.push(format!(
                "{name}: severity {other:?} is not one of {SEVERITIES:?}"
            )),
        }
        for key in ["summary", "description", "runbook_url"] {
            if rule
                .annotations
                .get(key)
                .is_none_or(|v| v.trim().is_empty())
            {
                problems.push(format!("{name}: missing annotation `{key}`"));
            }
        }
        if let Some(url) = rule.annotations.get("runbook_url") {
            match url.strip_prefix(RUNBOOK_BASE) {
                None => problems.push(format!(
                    "{name}: runbook_url {url} does not start with {RUNBOOK_BASE}"
                )),
                Some(fragment) if !anchors.contains(fragment) => problems.push(format!(
                    "{name}: runbook_url anchor #{fragment} is not a heading of docs/runbooks.md"
                )),
                Some(fragment) if fragment != name.to_lowercase() => problems.push(format!(
                    "{name}: runbook_url points at #{fragment}, not at the alert's own section"
                )),
                Some(_) => {}
            }
        }
    }
    assert!(
        problems.is_empty(),
        "alert rule problems:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_alert_is_unit_tested_firing_and_not_firing() {
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    let alert_groups: BTreeSet<String> = rule_files()
        .into_iter()
        .flat_map(|(_, f)| f.groups)
        .map(|g| g.name)
        .collect();
    for path in yaml_files(&root().join("alerts/tests")) {
        let file: TestFile = serde_yaml_ng::from_str(&read(&path))
            .unwrap_or_else(|e| panic!("{} is not a promtool test file: {e}", path.display()));
        assert!(
            !file.rule_files.is_empty(),
            "{}: no rule_files",
            path.display()
        );
        // promtool sorts unlisted groups first, so a partial order would evaluate the alerts
        // before the recording rules they read.
        if !file.group_eval_order.is_empty() {
            let loaded: BTreeSet<String> = file
                .rule_files
                .iter()
                .flat_map(|rf| {
                    let rf_path = path.parent().expect("in a directory").join(rf);
                    let parsed: RuleFile =
                        serde_yaml_ng::from_str(&read(&rf_path)).expect("rule file");
                    parsed.groups.into_iter().map(|g| g.name)
                })
                .collect();
            let ordered: BTreeSet<String> = file.group_eval_order.iter().cloned().collect();
            assert!(
                loaded.is_subset(&ordered) && ordered.is_subset(&alert_groups),
                "{}: group_eval_order must list every loaded group ({loaded:?}), found {ordered:?}",
                path.display()
            );
        }
        for case in file.tests.iter().flat_map(|t| &t.alert_rule_test) {
            if case.exp_alerts.is_empty() {
                quiet.insert(case.alertname.clone());
            } else {
                firing.insert(case.alertname.clone());
            }
        }
    }
    let mut missing = Vec::new();
    for rule in alerts() {
        let name = rule.alert.expect("an alert");
        if !firing.contains(&name) {
            missing.push(format!("{name}: no test expects it to fire"));
        }
        if !quiet.contains(&name) {
            missing.push(format!("{name}: no test expects it to stay quiet"));
        }
    }
    assert!(
        missing.is_empty(),
        "untested alerts:\n{}",
        missing.join("\n")
    );
}

/// The number in `vector(<number>)`.
fn vector_value(expr: &str) -> Option<f64> {
    expr.trim()
        .strip_prefix("vector(")?
        .strip_suffix(')')?
        .trim()
        .parse()
        .ok()
}

#[test]
fn thresholds_live_in_one_file_and_are_documented() {
    let docs = read(&root().join("docs/alerts.md"));
    let mut thresholds = BTreeMap::new();
    let mut problems = Vec::new();
    let mut alert_exprs = String::new();
    let mut meta_expr = String::new();
    for (path, file) in rule_files() {
        let file_name = path
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        for rule in file.groups.iter().flat_map(|g| &g.rules) {
            if let Some(record) = &rule.record {
                if record.starts_with(THRESHOLD_PREFIX) {
                    if file_name != "thresholds.yml" {
                        problems.push(format!(
                            "{record} is recorded in {file_name}, not thresholds.yml"
                        ));
                    }
                    match vector_value(&rule.expr) {
                        Some(v) => {
                            if thresholds.insert(record.clone(), v).is_some() {
                                problems.push(format!("{record} is recorded twice"));
                            }
                        }
                        None => problems.push(format!(
                            "{record} is not a `vector(<number>)`: {}",
                            rule.expr
                        )),
                    }
                }
            }
            if let Some(alert) = &rule.alert {
                if alert == "EventscopeThresholdsMissing" {
                    meta_expr = rule.expr.clone();
                } else {
                    alert_exprs.push_str(&rule.expr);
                    alert_exprs.extend(rule.annotations.values().map(String::as_str));
                }
            }
        }
    }
    assert!(
        !thresholds.is_empty(),
        "alerts/thresholds.yml records no thresholds"
    );
    for (name, value) in &thresholds {
        if !alert_exprs.contains(name.as_str()) {
            problems.push(format!("{name} is used by no alert"));
        }
        if !meta_expr.contains(&format!("absent({name})")) {
            problems.push(format!("EventscopeThresholdsMissing does not watch {name}"));
        }
        // docs/alerts.md has a table row "| `name` | value | ..." for each threshold.
        let row = docs
            .lines()
            .find(|line| line.contains(&format!("`{name}`")) && line.starts_with('|'));
        match row.and_then(|line| line.split('|').nth(2)).map(str::trim) {
            Some(cell) if cell.parse::<f64>().ok() == Some(*value) => {}
            Some(cell) => problems.push(format!(
                "docs/alerts.md documents {name} as {cell}, thresholds.yml says {value}"
            )),
            None => problems.push(format!("docs/alerts.md has no table row for {name}")),
        }
    }
    // The freshness rule must select the bucket whose bound is the documented target.
    let target = thresholds
        .get("eventscope:threshold:queue_time_target_seconds")
        .copied()
        .expect("queue_time_target_seconds threshold");
    let thresholds_text = read(&root().join("alerts/thresholds.yml"));
    let le_bounds: Vec<f64> = thresholds_text
        .match_indices("le=~\"")
        .map(|(i, m)| {
            let rest = &thresholds_text[i + m.len()..];
            let bound: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            bound.parse().expect("a numeric bucket bound")
        })
        .collect();
    assert_eq!(
        le_bounds,
        vec![target],
        "the queue-time rule in alerts/thresholds.yml must select exactly the le bucket of \
         eventscope:threshold:queue_time_target_seconds"
    );
    // And only thresholds.yml may pick a queue-time bucket.
    for (path, _) in rule_files() {
        if !path.ends_with("thresholds.yml") {
            assert!(
                !read(&path).contains("le="),
                "{} selects a bucket bound",
                path.display()
            );
        }
    }
    assert!(
        problems.is_empty(),
        "threshold problems:\n{}",
        problems.join("\n")
    );
}

#[test]
fn deploy_prometheus_config_is_valid() {
    let out = run_promtool(&["check", "config", "deploy/prometheus.yml"]);
    assert!(
        out.contains("SUCCESS"),
        "promtool check config said:\n{out}"
    );
    // The stack must load the same rule files this crate ships.
    for rule_file in yaml_files(&root().join("alerts")) {
        let name = rule_file
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        assert!(
            out.contains(&name),
            "deploy/prometheus.yml does not load alerts/{name}:\n{out}"
        );
    }
}

#[test]
fn deploy_compose_file_is_valid() {
    let compose = root().join("deploy/docker-compose.yml");
    let output = match Command::new("docker-compose")
        .args(["-f", &compose.to_string_lossy(), "config", "--quiet"])
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            eprintln!("skipped: docker-compose is not installed ({e}); deploy/docker-compose.yml not validated");
            return;
        }
    };
    assert!(
        output.status.success(),
        "docker-compose config rejected deploy/docker-compose.yml:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
