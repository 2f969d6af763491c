#!/usr/bin/env bash
# CPU per request of each process a proxied request runs through — the proxy, its upstream and
# the load generator — during one wrk run: on a box where the three share the cores, a proxy that
# makes its peers work harder (more headers to read) loses throughput it does not spend itself.
#
#   cpu-split.sh <proxy pid> <upstream pid> <url> [wrk args...]
#
# (wrk's CPU includes loading a `-s` script.)
# e.g. cpu-split.sh "$(pgrep -f 'portcullis serve')" "$(pgrep -f 'nginx: worker' | head -1)" \
#        http://127.0.0.1:8000/api/items -H "authorization: Bearer $token"
# (for an nginx front run without a master, as nginx-proxy.conf does, its pid is the worker's).
# Prints req/s and µs of CPU (user + system, from /proc/<pid>/stat) per request of each.
# WITH_REDIS=1 also prints redis-server's (its `INFO cpu`, through redis-cli on the default port):
# for the oauth2 path on Postgres + Redis, where every token the gateway has not seen is a GET.
set -euo pipefail
proxy=$1 upstream=$2 url=$3
shift 3
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
redis_cpu() { # seconds of CPU redis-server has used, or 0 without WITH_REDIS=1
  if [ "${WITH_REDIS:-0}" = 1 ]; then
    redis-cli info cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.6f", s}'
  else
    echo 0
  fi
}
hz=$(getconf CLK_TCK)
p0=$(ticks "$proxy") u0=$(ticks "$upstream") r0=$(redis_cpu)
out=$({ /usr/bin/time -f "wrk-cpu %U %S" wrk -t1 -c64 -d"${SECONDS_RUN:-10}"s "$@" "$url"; } 2>&1)
p1=$(ticks "$proxy") u1=$(ticks "$upstream") r1=$(redis_cpu)
if echo "$out" | grep -q "Non-2xx"; then
  echo "$out" >&2
  echo "not every answer was 2xx: no figure" >&2
  exit 1
fi
requests=$(echo "$out" | awk '/requests in/ {print $1}')
rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
wrk_cpu=$(echo "$out" | awk '/wrk-cpu/ {print $2 + $3}')
awk -v p=$((p1 - p0)) -v u=$((u1 - u0)) -v w="$wrk_cpu" -v n="$requests" -v r="$rps" -v hz="$hz" \
  'BEGIN {printf "%.0f req/s; CPU µs/request: proxy %.2f, upstream %.2f, wrk %.2f, all %.2f",
    r, p / hz * 1e6 / n, u / hz * 1e6 / n, w * 1e6 / n, (p / hz + u / hz + w) * 1e6 / n}'
if [ "${WITH_REDIS:-0}" = 1 ]; then
  awk -v a="$r0" -v b="$r1" -v n="$requests" 'BEGIN {printf "; redis-server %.2f", (b - a) * 1e6 / n}'
fi
echo
