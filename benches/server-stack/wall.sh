#!/usr/bin/env bash
# One wall-clock run for paired A/B comparisons: start a variant with one worker, drive
# REQUESTS (default 200,000) keep-alive HTTP/1.1 requests over 64 connections, stop it.
#   wall.sh <variant> <port>
set -euo pipefail
bin=${SERVER_STACK_BIN:-target/release/server-stack}
"$bin" "$1" "127.0.0.1:$2" 1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && break; sleep 0.05; done
h2load -n "${REQUESTS:-200000}" -c 64 -t 1 --h1 -H 'authorization: Bearer abc' "http://127.0.0.1:$2/api/items" | grep -E "^requests:|^finished"
