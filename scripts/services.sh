#!/usr/bin/env bash
# Make sure the services the tests talk to answer, starting those that do not.
#   Redis       127.0.0.1:6379 (REDIS_URL)
#   PostgreSQL  127.0.0.1:5432, trust auth, database `test` (FMN_TEST_POSTGRES_URL)
#   RabbitMQ    127.0.0.1:5672, guest/guest (the bridge's AMQP source, fmn replay)
# Starting needs the Debian packages (scripts/system-deps.sh) and root.
set -euo pipefail

wait_for() {  # name, command...
    local name=$1; shift
    for _ in $(seq 1 60); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    echo "services: $name did not come up" >&2
    return 1
}

redis_up() { python3 - <<'PY'
import socket
s = socket.create_connection(("127.0.0.1", 6379), timeout=1)
s.sendall(b"PING\r\n")
assert s.recv(16).startswith(b"+PONG")
PY
}

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }

if ! redis_up 2>/dev/null; then
    echo "services: starting Redis" >&2
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for Redis redis_up
fi

if [ "${FMN_SKIP_POSTGRES:-}" != 1 ] && ! pg_up; then
    echo "services: starting PostgreSQL" >&2
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    if [ -z "$version" ]; then
        echo "services: no PostgreSQL cluster found (install postgresql)" >&2
        exit 1
    fi
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_for PostgreSQL pg_up
fi

rabbit_up() { python3 - <<'PY'
import socket
socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
PY
}

if [ "${FMN_SKIP_RABBITMQ:-}" != 1 ] && ! rabbit_up 2>/dev/null; then
    echo "services: starting RabbitMQ" >&2
    rabbitmq-server -detached
    wait_for RabbitMQ rabbit_up
fi

# The integration tests use the `test` database with trust auth for `postgres`.
if [ "${FMN_SKIP_POSTGRES:-}" != 1 ]; then
    if ! psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
        psql -h 127.0.0.1 -U postgres -c 'create database test' >/dev/null 2>&1 \
            || su postgres -c "createdb test" || true
    fi
fi
echo "services: Redis, PostgreSQL and RabbitMQ answer" >&2
