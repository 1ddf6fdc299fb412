//! Every dashboard query returns data, and every shipped rule evaluates cleanly, against a real
//! Prometheus scraping the running `order_pipeline` example; and what its failure path does shows
//! there: the dead-letter alert fires for the declined payments, and the dead-letter, invalid and
//! duplicate series carry the error types and reasons the layers give them.
//!
//! Built with the `nats` feature, a second demo runs the same flow on JetStream (the server on
//! 127.0.0.1:4222) beside the embedded broker's, both scraped as one job: the panels of NATS-only
//! series (unacked messages, reconnects) get their data from it, and the panels that apply to
//! NATS must return data for its instance alone (`messaging_system="nats"`, empty partition
//! label).
//!
//! Built with the `rabbitmq` feature, the demo also runs on RabbitMQ (127.0.0.1:5672), scraped
//! by a Prometheus of its own: every dashboard query and rule must work with
//! `messaging_system="rabbitmq"`.
//!
//! Starts the example (`target/debug/examples/order_pipeline --forever`) and `prometheus` (Debian
//! package `prometheus`; `PROMETHEUS` overrides the path) on free loopback ports, with a 1 s
//! scrape and evaluation interval and `alerts/*.yml` loaded. Build the example first:
//! `cargo build --features dedup,schema --example order_pipeline`.

#[cfg(feature = "nats")]
mod common;
#[cfg(feature = "rabbitmq")]
mod rabbitmq_support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventscope::metrics::{label, name};
use eventscope::schema::error::{DECODE, SCHEMA};
use serde_json::Value;

const JOB: &str = "eventscope-demo";
const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(500);

/// Kills and reaps a child process when dropped, so a failing assertion leaves nothing behind.
struct Reaped {
    name: &'static str,
    child: Child,
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Reaped {
    /// Fails the test with a clear message if the process has already exited.
    fn assert_running(&mut self, log: &Path) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early ({status}); its output:\n{}",
                self.name,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

/// A scratch directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("eventscope-live-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
}

/// `target/debug/examples/order_pipeline`, next to this test's own `target/debug/deps`.
fn demo_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("target/<profile>/deps");
    let path = deps.join("../examples/order_pipeline");
    assert!(
        path.is_file(),
        "the example binary {} is missing; run `cargo build --features dedup,schema --example order_pipeline` first",
        path.display()
    );
    path
}

fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Reaped {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Reaped { name, child }
}

/// Every `expr` of every dashboard target, with the dashboard file and panel title.
fn dashboard_queries() -> Vec<(String, String, String)> {
    fn walk(panels: &Value, file: &str, out: &mut Vec<(String, String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    let title = panel["title"].as_str().unwrap_or("?");
                    out.push((file.to_owned(), title.to_owned(), expr.to_owned()));
                }
            }
            walk(&panel["panels"], file, out);
        }
    }
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("dashboards"))
        .expect("dashboards/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for path in files {
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read dashboard"))
                .expect("dashboard JSON");
        let file = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        walk(&json["panels"], &file, &mut out);
    }
    assert!(!out.is_empty(), "no dashboard queries found");
    out
}

/// Queries about the demo's failure path that must return data, with what each shows; the
/// demo's names start with `prefix`.
fn failure_path_queries(prefix: &str) -> Vec<(String, String)> {
    let group = label::GROUP;
    let error_type = label::ERROR_TYPE;
    let reason = label::REASON;
    vec![
        (
            "the dead-letter alert fires for the declined payments".to_owned(),
            format!(
                r#"ALERTS{{alertname="DeadLettersIncreasing",alertstate="firing",{group}="{prefix}payment-service"}}"#
            ),
        ),
        (
            "the core dead-letters declined payments".to_owned(),
            format!(
                r#"{}{{{error_type}="PaymentDeclined",{group}="{prefix}payment-service"}} > 0"#,
                name::DEAD_LETTERED
            ),
        ),
        (
            "undecodable payloads are dead-lettered as decode".to_owned(),
            format!(r#"{}{{{error_type}="{DECODE}"}} > 0"#, name::DEAD_LETTERED),
        ),
        (
            "invalid payloads are dead-lettered as schema".to_owned(),
            format!(r#"{}{{{error_type}="{SCHEMA}"}} > 0"#, name::DEAD_LETTERED),
        ),
        (
            "undecodable payloads are counted invalid".to_owned(),
            format!(r#"{}{{{reason}="{DECODE}"}} > 0"#, name::INVALID_MESSAGES),
        ),
        (
            "duplicates are counted".to_owned(),
            format!(
                r#"{}{{{group}="{prefix}payment-service"}} > 0"#,
                name::DUPLICATES
            ),
        ),
    ]
}

/// Panels without NATS data, and why: the NATS demo must feed every other one.
const NOT_NATS: &[(&str, &str)] = &[
    (
        "Stopped partitions",
        "JetStream has no partitions: a Stop stops the consumer",
    ),
    ("Recent rebalances", "JetStream consumers do not rebalance"),
    ("Rebalances", "JetStream consumers do not rebalance"),
    (
        "Duplicates skipped",
        "JetStream drops the demo's duplicate publishes itself (Nats-Msg-Id)",
    ),
    (
        "Dropped messages",
        "only the embedded broker and core NATS drop",
    ),
];

/// What Grafana would send with this job and instance selected and "All" groups and
/// destinations.
fn substitute(expr: &str, instance: &str) -> String {
    let mut q = expr.replace("$__rate_interval", "1m");
    q = q.replace("$job", JOB).replace("$instance", instance);
    for var in ["$group", "$destination"] {
        q = q.replace(var, ".*");
    }
    assert!(!q.contains('$'), "unsubstituted variable in {q}");
    q
}

async fn get_json(client: &reqwest::Client, url: reqwest::Url) -> Result<Value, String> {
    let response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| format!("{url}: {e}"))?;
    if !status.is_success() || body["status"] != "success" {
        return Err(format!("{url}: HTTP {status}: {body}"));
    }
    Ok(body)
}

async fn instant_query(client: &reqwest::Client, base: &str, query: &str) -> Result<usize, String> {
    let url = reqwest::Url::parse_with_params(&format!("{base}/api/v1/query"), &[("query", query)])
        .map_err(|e| e.to_string())?;
    let body = get_json(client, url).await?;
    Ok(body["data"]["result"].as_array().map_or(0, Vec::len))
}

/// The demo on the embedded broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_rules_work_against_the_running_example() {
    dashboards_and_rules_work_against(&[], &[], &[]).await;
}

/// The demo on RabbitMQ (127.0.0.1:5672, needs the example built with `--features rabbitmq`):
/// every query and rule works with `messaging_system="rabbitmq"` and an empty partition label.
/// Queries on families an unordered broker never has may be empty: a stopped partition (a
/// RabbitMQ consumer that a failure stops stops as a whole), rebalances (a queue's consumers
/// share it without partitions), dropped messages (RabbitMQ tells no consumer what its
/// overflow or TTL removed) and unacked messages (AMQP tells a client only a queue's ready
/// count; JetStream's demo feeds that panel in the embedded-broker run).
#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_rules_work_against_the_running_example_on_rabbitmq() {
    use eventscope::metrics::name;
    // Queues and exchanges of this run's own on the shared broker, deleted at the end.
    let prefix = format!("eventscope-live-{}-", std::process::id());
    let _cleanup = RabbitDemoCleanup(prefix.clone());
    let empty_partition = |family: &str| {
        format!(
            "{family}{{job=\"{JOB}\", messaging_system=\"rabbitmq\", messaging_destination_partition_id=\"\"}}"
        )
    };
    dashboards_and_rules_work_against(
        &["--rabbitmq", "amqp://127.0.0.1:5672", "--prefix", &prefix],
        &[
            name::PARTITION_STOPPED,
            name::REBALANCES,
            name::DROPPED_MESSAGES,
            name::UNACKED_MESSAGES,
        ],
        &[
            empty_partition(name::LAG_MESSAGES),
            empty_partition(name::LAG_SECONDS),
            empty_partition(name::LAST_MESSAGE_TIMESTAMP),
            format!(
                "{}{{job=\"{JOB}\", messaging_system=\"rabbitmq\"}}",
                name::RECONNECTS
            ),
        ],
    )
    .await;
}

/// Deletes the queues and exchanges of the demo run whose names start with the prefix it holds,
/// from the shared RabbitMQ, when dropped: also when the test fails.
#[cfg(feature = "rabbitmq")]
struct RabbitDemoCleanup(String);

#[cfg(feature = "rabbitmq")]
impl Drop for RabbitDemoCleanup {
    fn drop(&mut self) {
        let prefix = self.0.clone();
        // A runtime of its own, on a thread of its own: the test's may be unwinding.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let connection = rabbitmq_support::connect("eventscope-live-cleanup").await;
                let channel = connection.create_channel().await.expect("channel");
                for service in [
                    "payment-service",
                    "inventory-service",
                    "notification-service",
                    "ledger-service",
                ] {
                    for queue in [
                        format!("{prefix}{service}"),
                        format!("{prefix}{service}.dlq"),
                    ] {
                        rabbitmq_support::delete_queue(&channel, &queue).await;
                    }
                }
                // A topic nobody consumes has a queue of its name (the demo's sinks).
                for topic in common::DEMO_TOPICS {
                    rabbitmq_support::delete_queue(&channel, &format!("{prefix}{topic}")).await;
                    let _ = channel
                        .exchange_delete(
                            format!("{prefix}{topic}").as_str().into(),
                            Default::default(),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

/// The catalogue families a query reads.
fn families_in(query: &str) -> Vec<&'static str> {
    eventscope::metrics::CATALOGUE
        .iter()
        .map(|family| family.name)
        .filter(|name| query.contains(name))
        .collect()
}

/// Runs the demo with `demo_args` and Prometheus scraping it, and waits until every dashboard
/// query has data (but those reading only families in `may_be_empty`), every `must_have` query
/// too, and every rule evaluates cleanly.
async fn dashboards_and_rules_work_against(
    demo_args: &[&str],
    may_be_empty: &[&str],
    must_have: &[String],
) {
    let prefix = demo_args
        .windows(2)
        .find(|pair| pair[0] == "--prefix")
        .map_or("", |pair| pair[1]);
    let demo_bin = demo_binary();
    let prometheus_bin = std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".to_owned());
    let tmp = TempDir::new();
    let demo_addr = free_port();
    let prom_addr = free_port();
    // The embedded-broker run also runs the demo on JetStream. Only that one: the demo's
    // streams have fixed names, and two runs at once would delete each other's.
    let nats_addr = (cfg!(feature = "nats") && demo_args.is_empty()).then(free_port);
    #[cfg(feature = "nats")]
    if nats_addr.is_some() {
        common::remove_nats_demo_streams().await;
    }
    let (targets, instances) = match nats_addr {
        Some(nats_addr) => (
            format!("'{demo_addr}', '{nats_addr}'"),
            format!("{demo_addr}|{nats_addr}"),
        ),
        None => (format!("'{demo_addr}'"), demo_addr.to_string()),
    };

    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {alerts}/*.yml\n\
         scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [{targets}]\n",
        alerts = root().join("alerts").display(),
    );
    let config_path = tmp.0.join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write prometheus.yml");

    let demo_log = tmp.0.join("demo.log");
    let mut demo = spawn(
        "order_pipeline",
        Command::new(&demo_bin)
            .args(["--forever", "--metrics-addr", &demo_addr.to_string()])
            .args(demo_args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        &demo_log,
    );
    let nats_log = tmp.0.join("demo-nats.log");
    let mut nats_demo = nats_addr.map(|nats_addr| {
        spawn(
            "order_pipeline --nats",
            Command::new(&demo_bin)
                .args([
                    "--forever",
                    "--nats",
                    "nats://127.0.0.1:4222",
                    "--metrics-addr",
                    &nats_addr.to_string(),
                ])
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            &nats_log,
        )
    });
    let prom_log = tmp.0.join("prometheus.log");
    let mut prometheus = spawn(
        "prometheus",
        Command::new(&prometheus_bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .arg("--storage.tsdb.retention.time=1h"),
        &prom_log,
    );

    let base = format!("http://{prom_addr}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let queries: Vec<(String, String, String)> = dashboard_queries()
        .into_iter()
        .filter(|(_, _, expr)| {
            let families = families_in(expr);
            families.is_empty() || !families.iter().all(|f| may_be_empty.contains(f))
        })
        .chain(
            must_have
                .iter()
                .map(|q| ("(this test)".to_owned(), "must have".to_owned(), q.clone())),
        )
        .collect();
    let started = Instant::now();

    // Poll until every query has data and every rule evaluated cleanly, or the deadline passes.
    let mut empty: BTreeMap<String, String>;
    let mut unhealthy: Vec<String>;
    loop {
        demo.assert_running(&demo_log);
        if let Some(nats_demo) = &mut nats_demo {
            nats_demo.assert_running(&nats_log);
        }
        prometheus.assert_running(&prom_log);
        empty = BTreeMap::new();
        unhealthy = Vec::new();
        let ready = instant_query(&client, &base, &format!("up{{job=\"{JOB}\"}} == 1")).await;
        let targets = if nats_addr.is_some() { 2 } else { 1 };
        match ready {
            Ok(n) if n >= targets => {
                for (file, panel, expr) in &queries {
                    let q = substitute(expr, &instances);
                    match instant_query(&client, &base, &q).await {
                        Ok(n) if n > 0 => {}
                        Ok(_) => {
                            empty.insert(format!("{file} / {panel}: {q}"), "no series".to_owned());
                        }
                        Err(e) => {
                            empty.insert(format!("{file} / {panel}: {q}"), e);
                        }
                    }
                }
                // The NATS demo alone feeds every panel that applies to NATS.
                if let Some(nats_addr) = nats_addr {
                    for (file, panel, expr) in &queries {
                        if NOT_NATS.iter().any(|(title, _)| title == panel) {
                            continue;
                        }
                        let q = substitute(expr, &nats_addr.to_string());
                        if !matches!(instant_query(&client, &base, &q).await, Ok(n) if n > 0) {
                            empty.insert(
                                format!("NATS demo: {file} / {panel}: {q}"),
                                "no series".to_owned(),
                            );
                        }
                    }
                }
                let url = reqwest::Url::parse(&format!("{base}/api/v1/rules")).expect("url");
                match get_json(&client, url).await {
                    Ok(body) => {
                        let groups = body["data"]["groups"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default();
                        let mut count = 0;
                        for rule in groups
                            .iter()
                            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                        {
                            count += 1;
                            if rule["health"] != "ok" {
                                unhealthy.push(format!(
                                    "{} health={} error={}",
                                    rule["name"], rule["health"], rule["lastError"]
                                ));
                            }
                        }
                        if count == 0 {
                            unhealthy.push("no rules loaded".to_owned());
                        }
                    }
                    Err(e) => unhealthy.push(e),
                }
                for (what, q) in failure_path_queries(prefix) {
                    match instant_query(&client, &base, &q).await {
                        Ok(n) if n > 0 => {}
                        Ok(_) => {
                            empty.insert(format!("{what}: {q}"), "no series".to_owned());
                        }
                        Err(e) => {
                            empty.insert(format!("{what}: {q}"), e);
                        }
                    }
                }
                if empty.is_empty() && unhealthy.is_empty() {
                    break;
                }
            }
            Ok(_) => {
                empty.insert(
                    "scrape".to_owned(),
                    format!("target {demo_addr} not up yet"),
                );
            }
            Err(e) => {
                empty.insert("prometheus".to_owned(), e);
            }
        }
        if started.elapsed() > DEADLINE {
            break;
        }
        tokio::time::sleep(POLL).await;
    }

    let report = |what: &str| {
        format!(
            "{what} after {:?}\nprometheus log tail:\n{}\ndemo log tail:\n{}",
            started.elapsed(),
            tail(&prom_log),
            tail(&demo_log)
        )
    };
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}\n{}",
        empty
            .iter()
            .map(|(q, why)| format!("  {q}\n    -> {why}"))
            .collect::<Vec<_>>()
            .join("\n"),
        report("gave up")
    );
    assert!(
        unhealthy.is_empty(),
        "rules not healthy:\n{}\n{}",
        unhealthy.join("\n"),
        report("gave up")
    );
    drop(prometheus);
    drop(demo);
    let nats_ran = nats_demo.is_some();
    drop(nats_demo);
    #[cfg(feature = "nats")]
    if nats_ran {
        common::remove_nats_demo_streams().await;
    }
    #[cfg(not(feature = "nats"))]
    let _ = nats_ran;
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
