//! The demo's `/metrics` exposition holds every family of the catalogue with exactly the SPEC
//! §4 labels, and `promtool check metrics` accepts it; and its failure path is eventscope's:
//! declined payments retried then dead-lettered by the core, duplicates skipped by the
//! idempotency layer, undecodable and invalid payloads refused by the schema layer and
//! dead-lettered. The families only a networked broker reports (unacked messages, reconnects)
//! come from the demo on JetStream (`--nats`, with the `nats` feature; the server on
//! 127.0.0.1:4222).

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{demo_binary, free_port, sample, Child};
use eventscope::metrics::{label, name, MetricFamily, MetricKind, CATALOGUE};
use eventscope::schema::error::{DECODE, SCHEMA};

fn label_names(line: &str) -> BTreeSet<String> {
    let Some(start) = line.find('{') else {
        return BTreeSet::new();
    };
    let end = line.rfind('}').unwrap();
    let mut names = BTreeSet::new();
    let mut rest = &line[start + 1..end];
    while let Some(eq) = rest.find("=\"") {
        names.insert(rest[..eq].trim_start_matches(',').to_owned());
        // Skip the quoted value, honouring escapes.
        let mut chars = rest[eq + 2..].char_indices();
        let mut close = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    close = Some(eq + 2 + i + 1);
                    break;
                }
                _ => {}
            }
        }
        rest = &rest[close.unwrap()..];
    }
    names
}

/// Families the embedded broker has nothing for: the broker's own count of unacked messages,
/// and reconnects (it has no connection).
const NOT_MEMORY: &[&str] = &[name::UNACKED_MESSAGES, name::RECONNECTS];

fn missing(text: &str, families: &[&'static MetricFamily]) -> Vec<&'static str> {
    families
        .iter()
        .filter(|f| !text.lines().any(|l| l.starts_with(f.name)))
        .map(|f| f.name)
        .collect()
}

/// Label pairs a sample must carry.
type Labels = &'static [(&'static str, &'static str)];

/// What `--forever` shows of the failure path, as (what, series name, labels); each must be
/// above 0.
const FAILURE_PATH: &[(&str, &str, Labels)] = &[
    (
        "declined payments retried by the policy",
        name::RETRIES,
        &[
            (label::ERROR_TYPE, "PaymentDeclined"),
            (label::GROUP, "payment-service"),
        ],
    ),
    (
        "declined payments dead-lettered by the core",
        name::DEAD_LETTERED,
        &[
            (label::ERROR_TYPE, "PaymentDeclined"),
            (label::GROUP, "payment-service"),
            (label::DESTINATION, "orders"),
        ],
    ),
    (
        "undecodable payloads dead-lettered",
        name::DEAD_LETTERED,
        &[(label::ERROR_TYPE, DECODE)],
    ),
    (
        "payloads the schema rejects dead-lettered",
        name::DEAD_LETTERED,
        &[(label::ERROR_TYPE, SCHEMA)],
    ),
    (
        "undecodable payloads counted invalid",
        name::INVALID_MESSAGES,
        &[(label::REASON, DECODE), (label::GROUP, "inventory-service")],
    ),
    (
        "payloads the schema rejects counted invalid",
        name::INVALID_MESSAGES,
        &[(label::REASON, SCHEMA), (label::GROUP, "inventory-service")],
    ),
    (
        "duplicates skipped by the payment service",
        name::DUPLICATES,
        &[(label::GROUP, "payment-service")],
    ),
    (
        "duplicates skipped by the inventory service",
        name::DUPLICATES,
        &[(label::GROUP, "inventory-service")],
    ),
    (
        "duplicates skipped by the notification service",
        name::DUPLICATES,
        &[(label::GROUP, "notification-service")],
    ),
    (
        "dead letters sent to orders.dlq through the publish layer",
        name::SENT_MESSAGES,
        &[(label::DESTINATION, "orders.dlq"), (label::ERROR_TYPE, "")],
    ),
];

fn unmet(text: &str) -> Vec<&'static str> {
    FAILURE_PATH
        .iter()
        .filter(|(_, name, labels)| sample(text, name, labels).unwrap_or(0.0) <= 0.0)
        .map(|(what, _, _)| *what)
        .collect()
}

/// Runs the demo with `args` until its exposition holds `families` (and, with
/// `failure_path`, shows the failure path); the exposition.
async fn exposition(
    args: &[&str],
    families: &[&'static MetricFamily],
    failure_path: bool,
) -> (Child, String) {
    let port = free_port();
    let demo = Child(
        Command::new(demo_binary())
            .args([
                "--forever",
                "--rate",
                "50",
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
            ])
            .args(args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the demo starts"),
    );
    let url = format!("http://127.0.0.1:{port}/metrics");
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let text = match client.get(&url).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let absent = missing(&text, families);
        let unmet = if failure_path {
            unmet(&text)
        } else {
            Vec::new()
        };
        if absent.is_empty() && unmet.is_empty() {
            return (demo, text);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "families never appeared: {absent:?}; failure path not shown: {unmet:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Each family with exactly its catalogue labels and type, and promtool's approval.
fn check(text: &str, families: &[&'static MetricFamily]) {
    for family in families {
        let expected: BTreeSet<String> = family.labels.iter().map(|l| l.to_string()).collect();
        let sample_name = match family.kind {
            MetricKind::Histogram => format!("{}_count", family.name),
            _ => family.name.to_owned(),
        };
        let line = text
            .lines()
            .find(|l| l.starts_with(&sample_name) && l[sample_name.len()..].starts_with('{'))
            .unwrap_or_else(|| panic!("no sample of {sample_name}"));
        assert_eq!(label_names(line), expected, "labels of {}", family.name);
        let kind = match family.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        };
        assert!(
            text.contains(&format!("# TYPE {} {kind}", family.name)),
            "{} is a {kind}",
            family.name
        );
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (.ci/run installs Debian's prometheus package)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_demo_exposes_every_family_with_its_labels_and_its_failure_path_and_promtool_accepts_it(
) {
    let memory: Vec<&MetricFamily> = CATALOGUE
        .iter()
        .filter(|f| !NOT_MEMORY.contains(&f.name))
        .collect();
    let (_demo, text) = exposition(&[], &memory, true).await;
    check(&text, &memory);
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn the_demo_on_jetstream_exposes_the_families_of_networked_brokers() {
    let networked: Vec<&MetricFamily> = CATALOGUE
        .iter()
        .filter(|f| NOT_MEMORY.contains(&f.name) || f.name == name::LAG_MESSAGES)
        .collect();
    let (demo, text) = exposition(&["--nats", "nats://127.0.0.1:4222"], &networked, false).await;
    drop(demo);
    common::remove_nats_demo_streams().await;
    check(&text, &networked);
    assert!(
        text.lines().any(|l| l.starts_with(name::LAG_MESSAGES)
            && l.contains(r#"messaging_destination_partition_id="""#)
            && l.contains(r#"messaging_system="nats""#)),
        "JetStream lag has an empty partition label"
    );
}
