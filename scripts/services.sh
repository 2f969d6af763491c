#!/usr/bin/env bash
# Starts (installing when missing) the services the test suite talks to: PostgreSQL on
# 127.0.0.1:5432 (trust auth, database `test`) and Redis on 127.0.0.1:6379; installs Node and the
# third-party authorization server (oidc-provider) the oauth2-introspection tests start. Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  apt-get install -y -qq --no-install-recommends "$@"
}

if ! command -v pg_isready >/dev/null 2>&1; then apt_install postgresql postgresql-client; fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  if [ -d /etc/postgresql ] && [ -n "$(ls /etc/postgresql 2>/dev/null)" ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432
# Trust auth for local TCP is what this machine ships; make sure the test database exists.
if ! psql -h 127.0.0.1 -U postgres -tAc "select 1 from pg_database where datname='test'" 2>/dev/null | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -c "create database test" || su postgres -c "psql -c 'create database test'" || true
fi

if ! command -v redis-server >/dev/null 2>&1; then apt_install redis-server redis-tools; fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG && break; sleep 0.5; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping

# oauth2-introspection tests: node runs oidc-provider (tests/introspection, pinned by its lockfile).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then apt_install nodejs npm; fi
introspection_dir="$(cd "$(dirname "$0")/.." && pwd)/tests/introspection"
if [ ! -f "$introspection_dir/node_modules/oidc-provider/package.json" ]; then
  (cd "$introspection_dir" && npm ci --no-audit --no-fund)
fi
node --version

# The admin API's OpenAPI conformance test (tests/schemathesis.rs) runs schemathesis' `st`.
schemathesis_version=4.32.5
schemathesis_cli() { st "$@" 2>/dev/null || python3 -m schemathesis.cli "$@"; }
if ! schemathesis_cli --version 2>/dev/null | grep -q "$schemathesis_version"; then
  if ! command -v pip3 >/dev/null 2>&1; then apt_install python3-pip; fi
  # Its dependencies pinned too: a newer hypothesis can change what a run generates.
  constraints="$(cd "$(dirname "$0")" && pwd)/schemathesis-constraints.txt"
  pip3 install --quiet --disable-pip-version-check -c "$constraints" "schemathesis==$schemathesis_version" \
    || pip3 install --quiet --disable-pip-version-check --break-system-packages -c "$constraints" "schemathesis==$schemathesis_version"
fi
schemathesis_cli --version
