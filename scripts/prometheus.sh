#!/usr/bin/env bash
# Runs a throw-away Prometheus with eventscope's rules against a /metrics endpoint, for looking
# at the dashboards' queries and the alerts without Docker.
#
#   scripts/prometheus.sh [TARGET] [LISTEN]
#
# TARGET defaults to 127.0.0.1:9464 (the demo: cargo run --features dedup,schema --example order_pipeline -- --forever),
# LISTEN to 127.0.0.1:9090. Data lives in a temporary directory removed on exit.
set -euo pipefail

target="${1:-127.0.0.1:9464}"
listen="${2:-127.0.0.1:9090}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prometheus="${PROMETHEUS:-prometheus}"

command -v "$prometheus" >/dev/null || {
    echo "prometheus not found: apt-get install prometheus, or set PROMETHEUS" >&2
    exit 1
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files:
  - $repo/alerts/*.yml
scrape_configs:
  - job_name: eventscope-demo
    static_configs:
      - targets: ["$target"]
YAML

echo "Prometheus on http://$listen scraping $target (rules from $repo/alerts)" >&2
"$prometheus" \
    --config.file="$work/prometheus.yml" \
    --storage.tsdb.path="$work/data" \
    --web.listen-address="$listen" &
pid=$!
# Forward Ctrl-C / termination to Prometheus and wait for it, so the trap cleans up after it.
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT INT TERM
wait "$pid"
