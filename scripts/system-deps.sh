#!/usr/bin/env bash
# Install the Debian packages the project needs to build and test, if missing.
#   libkrb5-dev   krb5-config, to build gssapi (pulled in by fedmsg_meta_fedora_infrastructure)
#   redis-server  the snapshot store, for tests and `make run`
#   postgresql    the production database engine, for the integration tests
#   rabbitmq-server  the AMQP broker the bridge consumes (fedora-messaging), locally
#   chromium      Debian's browser, driven headless by Playwright in the browser tests
# Run as root (CI, this project's machines); elsewhere it prints what to install.
set -euo pipefail

missing=()
command -v krb5-config >/dev/null 2>&1 || missing+=(libkrb5-dev)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ "${FMN_SKIP_POSTGRES:-}" = 1 ] || command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "system-deps: please install: ${missing[*]} (e.g. sudo apt-get install ${missing[*]})" >&2
    exit 1
fi
echo "system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
