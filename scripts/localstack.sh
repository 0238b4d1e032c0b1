#!/usr/bin/env bash
# LocalStack, the local AWS (SQS, S3, SES, CloudWatch with alarm evaluation,
# CloudFormation, SNS, IAM, STS, Logs), without Docker and without an account token.
#
#   scripts/localstack.sh install [--optional]   the runtime in .venv-localstack
#   scripts/localstack.sh start [--if-installed] install if needed, start unless one answers
#   scripts/localstack.sh status                 exit 0 when one answers
#   scripts/localstack.sh stop                   stop the one this script started
#
# The runtime (`localstack-core`) needs Python 3.13 and pins its own boto3 and
# moto, so it lives in its own virtual environment, never in .venv.  Python
# 3.13 is looked for in pyenv and as Debian's /usr/bin/python3.13; `install
# --optional` (what `make setup` runs) says so and succeeds when there is none.
#
# One LocalStack serves the whole machine at 127.0.0.1:4566: two instances
# interfere (both write under /var/lib/localstack and /tmp/localstack), so
# `start` reuses any instance that answers, whoever started it, and `stop`
# stops only the one whose pid it recorded.  Stacks and tests keep apart by
# resource name prefix.  Idempotent; run as root in CI (LocalStack writes
# under /var/lib/localstack).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=2026.3.0
# Without each of these pins the runtime fails at start (see README: LocalStack).
PINS=("localstack-core[runtime]==$VERSION" 'cbor2<6' 'pyopenssl<25' 'cryptography<45'
      service_identity)
VENV=${FMN_LOCALSTACK_VENV:-.venv-localstack}
PORT=${FMN_LOCALSTACK_PORT:-4566}
URL="http://127.0.0.1:$PORT"
RUNDIR=var/localstack
STAMP="$VENV/.installed-$VERSION"

say() { echo "localstack: $*" >&2; }

find_python313() {
    local candidates=()
    if command -v pyenv >/dev/null 2>&1; then
        local root
        root=$(pyenv root 2>/dev/null || true)
        # the bare python3.13 shim refuses to run unless 3.13 is selected: call it directly
        [ -n "$root" ] && candidates+=("$root"/versions/3.13*/bin/python3.13)
    fi
    candidates+=("${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13
                 /usr/bin/python3.13 /usr/local/bin/python3.13)
    local py
    for py in "${candidates[@]}"; do
        if [ -x "$py" ] && "$py" -c 'import sys; assert sys.version_info[:2] == (3, 13)' \
                2>/dev/null; then
            echo "$py"
            return 0
        fi
    done
    return 1
}

answers() {  # the health endpoint answers and SQS is up
    python3 - "$URL" <<'PY' 2>/dev/null
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/_localstack/health", timeout=2) as r:
    services = json.load(r)["services"]
assert services.get("sqs") in ("available", "running"), services
PY
}

install() {
    local optional=${1:-}
    if [ -f "$STAMP" ]; then
        return 0
    fi
    local py
    if ! py=$(find_python313); then
        if [ "$optional" = --optional ]; then
            say "no Python 3.13 here (pyenv or /usr/bin/python3.13): not installed;" \
                "fmn up uses the moto server"
            return 0
        fi
        say "LocalStack $VERSION needs Python 3.13 (pyenv install 3.13, or Debian 13's python3.13)"
        return 1
    fi
    say "installing localstack-core $VERSION into $VENV ($("$py" -V 2>&1))"
    rm -rf "$VENV"
    "$py" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q "${PINS[@]}"
    "$VENV/bin/python" -c 'import localstack.runtime.main'
    touch "$STAMP"
}

start() {
    if answers; then
        say "answering at $URL (reused)"
        return 0
    fi
    if [ "${1:-}" = --if-installed ] && [ ! -f "$STAMP" ]; then
        say "not installed here (make localstack): fmn up uses the moto server"
        return 0
    fi
    install
    mkdir -p "$RUNDIR"
    say "starting at $URL (log: $RUNDIR/localstack.log)"
    # SQS_CLOUDWATCH_METRICS_REPORT_INTERVAL: AWS/SQS depth metrics every 5 s,
    # so alarms on queue depth evaluate within seconds.  localstack_runtime.py
    # is LocalStack's runtime without SQS's per-request metrics, which nothing
    # here reads and which cost the emulator most of its CPU under load.
    # Offline it logs "Error starting the DNS server" and "Docker not
    # available": harmless.
    SERVICES=sqs,s3,ses,cloudwatch,cloudformation,iam,sts,logs,sns,apigateway \
    GATEWAY_LISTEN="127.0.0.1:$PORT" SQS_ENDPOINT_STRATEGY=path SKIP_SSL_CERT_DOWNLOAD=1 \
    DISABLE_EVENTS=1 SQS_CLOUDWATCH_METRICS_REPORT_INTERVAL=5 \
        setsid nohup "$VENV/bin/python" scripts/localstack_runtime.py \
        >>"$RUNDIR/localstack.log" 2>&1 </dev/null &
    echo $! >"$RUNDIR/localstack.pid"
    for _ in $(seq 1 120); do
        if answers; then
            say "ready at $URL (pid $(cat "$RUNDIR/localstack.pid"))"
            return 0
        fi
        if ! kill -0 "$(cat "$RUNDIR/localstack.pid")" 2>/dev/null; then
            say "exited at start; the end of $RUNDIR/localstack.log:"
            tail -n 20 "$RUNDIR/localstack.log" >&2
            return 1
        fi
        sleep 0.5
    done
    say "did not answer at $URL within 60 s (see $RUNDIR/localstack.log)"
    return 1
}

stop() {
    local pidfile="$RUNDIR/localstack.pid"
    if [ ! -f "$pidfile" ]; then
        say "none started from here ($pidfile): nothing stopped"
        return 0
    fi
    local pid
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        say "stopped pid $pid"
    fi
    rm -f "$pidfile"
}

case "${1:-start}" in
    install) install "${2:-}" ;;
    start) start "${2:-}" ;;
    status) if answers; then say "answering at $URL"; else say "not answering at $URL"; exit 1; fi ;;
    stop) stop ;;
    python) find_python313 ;;
    *) echo "usage: $0 install [--optional] | start [--if-installed] | status | stop" >&2
       exit 2 ;;
esac
