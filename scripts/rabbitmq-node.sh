#!/bin/sh
# A throw-away RabbitMQ node of its own, beside the machine's shared one (rabbit@localhost on
# 127.0.0.1:5672), for tests that stop, kill or freeze a broker: tests/rabbitmq_restart.rs.
#
#   scripts/rabbitmq-node.sh start  NAME PORT   start NAME@localhost with AMQP on 127.0.0.1:PORT
#                                               (distribution on PORT+20000), wait until it
#                                               serves; a node already running is left as it is
#   scripts/rabbitmq-node.sh kill   NAME        SIGKILL it (a crash), wait until it is gone
#   scripts/rabbitmq-node.sh stop   NAME        SIGTERM it (a clean shutdown), wait until gone
#   scripts/rabbitmq-node.sh freeze NAME        SIGSTOP it (a broker that stops answering)
#   scripts/rabbitmq-node.sh thaw   NAME        SIGCONT it
#   scripts/rabbitmq-node.sh status NAME        say whether it runs
#   scripts/rabbitmq-node.sh wipe   NAME        stop it if it runs and delete its files
#
# Its files are in $RABBITMQ_NODE_BASE/NAME (default /tmp/eventscope-rabbitmq-nodes/NAME): a
# second start reuses them, so durable queues and persistent messages survive a kill. It is
# found and stopped by its own pid file only; the shared node, its epmd and its files are never
# touched. Needs root (or passwordless sudo), as the node runs as the `rabbitmq` user with the
# shared node's Erlang cookie (/var/lib/rabbitmq/.erlang.cookie), which rabbitmqctl needs too.
set -eu

CMD="${1:-}"
NAME="${2:-}"
if [ -z "$CMD" ] || [ -z "$NAME" ]; then
    sed -n '2,20p' "$0" >&2
    exit 2
fi
case "$NAME" in
    *[!a-z0-9_-]* | rabbit) echo "rabbitmq-node.sh: bad node name '$NAME'" >&2; exit 2 ;;
esac

BASE="${RABBITMQ_NODE_BASE:-/tmp/eventscope-rabbitmq-nodes}"
DIR="$BASE/$NAME"
NODE="$NAME@localhost"
PID_FILE="$DIR/node.pid"

if [ "$(id -u)" -eq 0 ]; then
    AS_ROOT=""
else
    AS_ROOT="sudo -n"
fi
# The server and the CLI as the rabbitmq user, with its home (and so the shared cookie). Not
# /usr/sbin/rabbitmq-server: as the rabbitmq user that wrapper writes its output into the
# shared node's /var/log/rabbitmq/startup_log.
as_rabbitmq() {
    $AS_ROOT runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq "$@"
}
ctl() {
    as_rabbitmq /usr/lib/rabbitmq/bin/rabbitmqctl -n "$NODE" "$@"
}

pid() { [ -s "$PID_FILE" ] && cat "$PID_FILE" || true; }
alive() {
    P="$(pid)"
    [ -n "$P" ] && $AS_ROOT kill -0 "$P" 2>/dev/null
}
signal() { $AS_ROOT kill "-$1" "$(pid)"; }
wait_gone() { # up to 60 s
    i=0
    while $AS_ROOT kill -0 "$1" 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -le 600 ] || { echo "rabbitmq-node.sh: pid $1 still alive after 60 s" >&2; return 1; }
        sleep 0.1
    done
}
port_taken() { ss -Hltn "sport = :$1" | grep -q .; }
registered() { # the node's name is registered with epmd
    EPMD="$(ls /usr/lib/erlang/erts-*/bin/epmd 2>/dev/null | head -n1)"
    [ -n "$EPMD" ] && "$EPMD" -names 2>/dev/null | grep -q "^name $NAME at "
}

start() {
    PORT="${1:?start needs a PORT}"
    DIST=$((PORT + 20000))
    if alive; then
        echo "$NODE already runs (pid $(pid))"
        return 0
    fi
    if [ "$PORT" = 5672 ] || [ "$DIST" = 25672 ]; then
        echo "rabbitmq-node.sh: ports 5672 and 25672 are the shared node's" >&2
        return 1
    fi
    # A second node of this name would fail on the distribution port and, as it exits, delete
    # the first one's pid file.
    if registered; then
        echo "rabbitmq-node.sh: $NODE runs without a pid file here; stop it first" >&2
        return 1
    fi
    for p in "$PORT" "$DIST"; do
        if port_taken "$p"; then
            echo "rabbitmq-node.sh: port $p is taken" >&2
            return 1
        fi
    done
    $AS_ROOT mkdir -p "$DIR/mnesia" "$DIR/log"
    $AS_ROOT rm -f "$PID_FILE" # stale after a kill; its appearing tells the new boot apart
    $AS_ROOT sh -c "cat > '$DIR/rabbitmq.conf'" <<EOF
listeners.tcp.local = 127.0.0.1:$PORT
loopback_users.guest = true
EOF
    $AS_ROOT sh -c "[ -f '$DIR/enabled_plugins' ] || echo '[].' > '$DIR/enabled_plugins'"
    # Read by rabbitmq-env (sourced) and by the node itself: no RABBITMQ_ prefix.
    $AS_ROOT sh -c "cat > '$DIR/rabbitmq-env.conf'" <<EOF
NODENAME=$NODE
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=$PORT
DIST_PORT=$DIST
MNESIA_BASE=$DIR/mnesia
LOG_BASE=$DIR/log
CONFIG_FILE=$DIR/rabbitmq.conf
ENABLED_PLUGINS_FILE=$DIR/enabled_plugins
PID_FILE=$PID_FILE
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
    $AS_ROOT chmod 755 "$BASE"
    $AS_ROOT chown -R rabbitmq:rabbitmq "$DIR"
    as_rabbitmq RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf" \
        /usr/lib/rabbitmq/bin/rabbitmq-server -detached
    # await_startup fails at once until the node has registered, which is after it wrote its
    # pid file: wait for that first.
    i=0
    until [ -s "$PID_FILE" ]; do
        i=$((i + 1))
        [ "$i" -le 300 ] || { echo "rabbitmq-node.sh: no pid file after 30 s; see $DIR/log" >&2; return 1; }
        sleep 0.1
    done
    i=0
    until ctl -q -t 120 await_startup >/dev/null 2>&1; do
        i=$((i + 1))
        alive || { echo "rabbitmq-node.sh: $NODE died while booting; see $DIR/log" >&2; return 1; }
        [ "$i" -le 60 ] || { echo "rabbitmq-node.sh: $NODE did not start" >&2; return 1; }
        sleep 0.5
    done
    echo "$NODE serves AMQP on 127.0.0.1:$PORT (pid $(pid), files in $DIR)"
}

case "$CMD" in
    start) start "${3:-}" ;;
    kill | stop)
        if ! alive; then
            echo "$NODE does not run"
            exit 0
        fi
        P="$(pid)"
        signal CONT # a frozen node ignores TERM until it runs again
        if [ "$CMD" = kill ]; then signal KILL; else signal TERM; fi
        wait_gone "$P"
        if [ "$CMD" = kill ]; then echo "$NODE killed (pid $P)"; else echo "$NODE stopped (pid $P)"; fi
        ;;
    freeze) alive && signal STOP && echo "$NODE frozen (pid $(pid))" ;;
    thaw) alive && signal CONT && echo "$NODE thawed (pid $(pid))" ;;
    status)
        if alive; then echo "$NODE runs (pid $(pid))"; else echo "$NODE does not run"; exit 3; fi
        ;;
    wipe)
        if alive; then "$0" stop "$NAME" || "$0" kill "$NAME"; fi
        $AS_ROOT rm -rf "$DIR"
        echo "$NODE wiped"
        ;;
    *)
        echo "rabbitmq-node.sh: unknown command '$CMD'" >&2
        exit 2
        ;;
esac
