#!/usr/bin/env bash
# The machine's RabbitMQ (rabbit@localhost on 127.0.0.1:5672, guest/guest), which the RabbitMQ
# tests, benchmark and demo use. Development and CI machines run it already; this starts it when
# nothing listens on the port. It never stops or restarts a running broker: tests that do that
# use a node of their own (scripts/rabbitmq-node.sh).
#
#   scripts/rabbitmq.sh start     start the broker if port 5672 is closed, wait until it serves
#   scripts/rabbitmq.sh status    say whether it serves
set -euo pipefail

PORT=5672

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

start() {
    if port_open; then
        echo "RabbitMQ serves on 127.0.0.1:$PORT"
        return 0
    fi
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            echo "rabbitmq.sh: installing Debian's rabbitmq-server package" >&2
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
        else
            echo "rabbitmq.sh: rabbitmq-server is not installed: sudo apt-get install rabbitmq-server" >&2
            return 1
        fi
    fi
    # The package may have started it just now.
    if ! port_open; then
        echo "rabbitmq.sh: starting RabbitMQ (rabbitmq-server -detached)"
        rabbitmq-server -detached
    fi
    for _ in $(seq 1 120); do
        if port_open; then
            echo "RabbitMQ serves on 127.0.0.1:$PORT"
            return 0
        fi
        sleep 0.5
    done
    echo "rabbitmq.sh: RabbitMQ did not open 127.0.0.1:$PORT within 60 s (see /var/log/rabbitmq)" >&2
    return 1
}

case "${1:-}" in
    start) start ;;
    status)
        if port_open; then
            echo "RabbitMQ serves on 127.0.0.1:$PORT"
        else
            echo "nothing listens on 127.0.0.1:$PORT"
            exit 3
        fi
        ;;
    *)
        echo "usage: $0 start|status" >&2
        exit 2
        ;;
esac
