#!/usr/bin/env bash
# Instructions per request of a server under callgrind (deterministic, unlike wall-clock figures
# on a shared machine): warm up, zero the counters, drive N keep-alive requests with h2load, dump,
# and divide. Every thread of the process counts, so the figure covers the whole server.
#
#   [SETUP=cmd] callgrind.sh <port> <requests> <h2load args...> -- <server command...>
#
# e.g. callgrind.sh 8080 20000 --h1 -H 'authorization: Bearer x' -- target/release/server-stack hyper-h1 127.0.0.1:8080
#
# VALGRIND_ARGS (optional) adds callgrind options, e.g. --cache-sim=yes: simulated cache misses per
# request are then printed beside the instructions.
set -euo pipefail
port=$1 requests=$2
shift 2
load=()
while [ "$1" != "--" ]; do load+=("$1"); shift; done
shift
out=$(mktemp -d)
valgrind --tool=callgrind ${VALGRIND_ARGS:-} --callgrind-out-file="$out/cg.%p" "$@" >"$out/server.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
url="http://127.0.0.1:$port/api/items"
# SETUP (optional): a command run once the server listens; a line it prints is sent as a header.
if [ -n "${SETUP:-}" ]; then
  header=$($SETUP)
  [ -z "$header" ] || load+=(-H "$header")
fi
h2load -n 2000 -c 8 "${load[@]}" "$url" >"$out/warmup.log"
grep -q "2000 succeeded" "$out/warmup.log" || { cat "$out/warmup.log" >&2; exit 1; }
# callgrind_control is served when the program next runs: the load that follows wakes it.
callgrind_control -z "$pid" >/dev/null 2>&1 &
zero=$!
sleep 1
h2load -n "$requests" -c 8 "${load[@]}" "$url" >"$out/load.log"
wait "$zero"
# Only 2xx answers count: a run that measured error answers is no figure.
grep -q "status codes: $requests 2xx" "$out/load.log" || { cat "$out/load.log" >&2; exit 1; }
callgrind_control -d "$pid" >/dev/null 2>&1 &
dump=$!
sleep 1
h2load -n 1 -c 1 "${load[@]}" "$url" >/dev/null
wait "$dump"
summary=$(grep -h '^summary:' "$out"/cg.*.1 2>/dev/null || true)
total=$(echo "$summary" | awk '{print $2}')
[ -n "$total" ] || { ls "$out" >&2; exit 1; }
echo "callgrind output: $(ls "$out"/cg.*.1)" >&2
echo "$total $requests" | awk '{printf "%.0f instructions/request (%d requests, %d instructions)\n", $1 / ($2 + 1), $2 + 1, $1}'
# With the cache simulated: each event (Ir, D1 and last-level misses...) per request.
events=$(grep -h '^events:' "$out"/cg.*.1 | head -1 | cut -d' ' -f2-)
if [ "$(echo "$events" | wc -w)" -gt 1 ]; then
  paste <(echo "$events" | tr ' ' '\n') <(echo "$summary" | cut -d' ' -f2- | tr ' ' '\n') |
    awk -v n="$requests" '{printf "  %s %.1f/request\n", $1, $2 / (n + 1)}'
fi
