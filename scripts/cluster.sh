#!/usr/bin/env bash
# A Portcullis cluster without Docker: the topology of docker/docker-compose.yml (one Postgres, one
# Redis, a one-shot `migrations bootstrap`, gateway nodes configured by environment) on local
# services, with N gateway nodes on free loopback ports.
#
#   scripts/cluster.sh [start] [N]      start N nodes (default 3), print their ports, run until Ctrl-C
#   scripts/cluster.sh start -d [N]     the same, but return once every node listens
#   scripts/cluster.sh stop             stop the nodes of a detached run
#
# Postgres and Redis come from the usual PORTCULLIS_* variables (defaults: 127.0.0.1:5432, user
# postgres, database test, schema portcullis_cluster; redis://127.0.0.1:6379, prefix
# portcullis-cluster); scripts/services.sh starts both. PORTCULLIS_BIN picks the binary (default
# target/debug/portcullis, built when missing). Logs and pids live in CLUSTER_DIR
# (default /tmp/portcullis-cluster).
#
# The cluster tests (tests/cluster.rs) start their nodes with the same variables, one process per
# node, so that they can kill and restart a single node.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${CLUSTER_DIR:-/tmp/portcullis-cluster}"

export PORTCULLIS_DATABASE=postgres
export PORTCULLIS_PG_HOST="${PORTCULLIS_PG_HOST:-127.0.0.1}"
export PORTCULLIS_PG_PORT="${PORTCULLIS_PG_PORT:-5432}"
export PORTCULLIS_PG_USER="${PORTCULLIS_PG_USER:-postgres}"
export PORTCULLIS_PG_DATABASE="${PORTCULLIS_PG_DATABASE:-test}"
export PORTCULLIS_PG_SCHEMA="${PORTCULLIS_PG_SCHEMA:-portcullis_cluster}"
export PORTCULLIS_REDIS_URL="${PORTCULLIS_REDIS_URL:-redis://127.0.0.1:6379}"
export PORTCULLIS_REDIS_PREFIX="${PORTCULLIS_REDIS_PREFIX:-portcullis-cluster}"
export PORTCULLIS_PROXY_LISTEN="${PORTCULLIS_PROXY_LISTEN:-127.0.0.1:0, 127.0.0.1:0 ssl}"
export PORTCULLIS_ADMIN_LISTEN="${PORTCULLIS_ADMIN_LISTEN:-127.0.0.1:0}"
export PORTCULLIS_STATUS_LISTEN="${PORTCULLIS_STATUS_LISTEN:-off}"
export PORTCULLIS_LOG_LEVEL="${PORTCULLIS_LOG_LEVEL:-info}"
export PORTCULLIS_LOG_FORMAT=text
export NO_COLOR=1

stop() {
  local pid
  [ -f "$dir/pids" ] || return 0
  while read -r pid; do
    kill -TERM "$pid" 2>/dev/null || true
  done <"$dir/pids"
  while read -r pid; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done <"$dir/pids"
  rm -f "$dir/pids"
  echo "cluster stopped"
}

# `addr=127.0.0.1:1234` of the first log line containing $2 in file $1.
addr_in() {
  grep -m1 "$2" "$1" 2>/dev/null | grep -o 'addr=[0-9.:]*' | head -n1 | cut -d= -f2 || true
}

start() {
  local detach=0 n=3
  for arg in "$@"; do
    case "$arg" in
      -d | --detach) detach=1 ;;
      *[!0-9]* | "") echo "usage: $0 [start [-d] [N] | stop]" >&2; exit 2 ;;
      *) n="$arg" ;;
    esac
  done
  local bin="${PORTCULLIS_BIN:-$root/target/debug/portcullis}"
  # Not a setting: the gateway refuses unknown PORTCULLIS_* variables.
  unset PORTCULLIS_BIN
  if [ ! -x "$bin" ]; then (cd "$root" && cargo build --bin portcullis); fi
  mkdir -p "$dir"
  if [ -f "$dir/pids" ]; then stop; fi

  # The compose file's one-shot bootstrap service; `up` applies what a newer build adds.
  "$bin" migrations bootstrap
  "$bin" migrations up

  : >"$dir/pids"
  if [ "$detach" = 0 ]; then trap 'stop; exit 0' INT TERM; fi
  local i
  for i in $(seq 1 "$n"); do
    : >"$dir/node-$i.log"
    # setsid: a detached node must survive this script, and not get the terminal's Ctrl-C twice.
    setsid "$bin" serve </dev/null >/dev/null 2>"$dir/node-$i.log" &
    echo $! >>"$dir/pids"
  done
  for i in $(seq 1 "$n"); do
    local log="$dir/node-$i.log" proxy="" admin=""
    for _ in $(seq 1 300); do
      proxy="$(addr_in "$log" 'proxy listening')"
      admin="$(addr_in "$log" 'admin API listening')"
      [ -n "$proxy" ] && [ -n "$admin" ] && break
      if ! kill -0 "$(sed -n "${i}p" "$dir/pids")" 2>/dev/null; then
        echo "node $i exited:" >&2; cat "$log" >&2; stop; exit 1
      fi
      sleep 0.1
    done
    if [ -z "$proxy" ] || [ -z "$admin" ]; then
      echo "node $i did not start listening; see $log" >&2; stop; exit 1
    fi
    echo "node $i: proxy http://$proxy admin http://$admin log $log"
  done
  echo "schema $PORTCULLIS_PG_SCHEMA, redis prefix $PORTCULLIS_REDIS_PREFIX"
  if [ "$detach" = 1 ]; then
    echo "detached: stop with $0 stop"
    return 0
  fi
  echo "Ctrl-C stops the cluster"
  wait
}

case "${1:-start}" in
  start) shift || true; start "$@" ;;
  stop) stop ;;
  [0-9]*) start "$@" ;;
  *) echo "usage: $0 [start [-d] [N] | stop]" >&2; exit 2 ;;
esac
