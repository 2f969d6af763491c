#!/usr/bin/env bash
# Instructions per request of the oauth2 path on Postgres + Redis under callgrind, each token met
# cold (a token this gateway process never saw: answered by Redis, not cached) and then warm
# (answered by the near cache). Tokens go in the query string (`?access_token=`) so that each request of one
# h2load run carries another; one connection, so that no two requests share a token's first use.
# Needs Postgres (trust auth) and Redis on their default ports, the nginx upstream of
# callgrind.sh's examples on 127.0.0.1:9000, h2load and valgrind.
#
#   cold-callgrind.sh <portcullis binary>      (N=4000 cold requests by default)
set -euo pipefail
BIN=$(realpath "$1"); N=${N:-4000}
S=cgcold$RANDOM
work=$(mktemp -d)
export PORTCULLIS_PROXY_LISTEN=127.0.0.1:8000 PORTCULLIS_ADMIN_LISTEN=127.0.0.1:8001 PORTCULLIS_STATUS_LISTEN=off \
  PORTCULLIS_LOG_LEVEL=error PORTCULLIS_WORKER_PROCESSES=1 PORTCULLIS_TRUSTED_IPS=127.0.0.1/32 \
  PORTCULLIS_DATABASE=postgres PORTCULLIS_PG_HOST=${PG_HOST:-127.0.0.1} PORTCULLIS_PG_USER=${PG_USER:-postgres} PORTCULLIS_PG_DATABASE=${PG_DATABASE:-test} \
  PORTCULLIS_PG_SCHEMA=$S PORTCULLIS_REDIS_URL=redis://127.0.0.1:6379 PORTCULLIS_REDIS_PREFIX=$S
cd "$(dirname "$0")"
trap 'kill ${pid:-} ${vg:-} 2>/dev/null || true
  psql -q -h ${PG_HOST:-127.0.0.1} -U ${PG_USER:-postgres} ${PG_DATABASE:-test} -c "drop schema if exists $S cascade" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "$S:*" | xargs -r redis-cli del >/dev/null' EXIT
$BIN migrations up >/dev/null
$BIN serve >$work/gateway.log 2>&1 & pid=$!
OAUTH2=1 ./gateway-setup.sh >/dev/null
seq $((N + 1000)) | xargs -P 4 -I{} curl -s -X POST http://127.0.0.1:8000/api/oauth2/token -H 'x-forwarded-proto: https' \
  -d grant_type=client_credentials -d client_id=bench-client -d client_secret=bench-secret |
  grep -o '"access_token":"[^"]*"' | cut -d'"' -f4 > $work/tokens
kill $pid; wait $pid || true
echo "$(wc -l < $work/tokens) tokens" >&2
head -1000 $work/tokens | sed 's|^|http://127.0.0.1:8000/api/items?access_token=|' > $work/warm.txt
tail -n +1001 $work/tokens | sed 's|^|http://127.0.0.1:8000/api/items?access_token=|' > $work/cold.txt
out=$(mktemp -d)
valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" $BIN serve >"$out/server.log" 2>&1 & vg=$!
for _ in $(seq 600); do curl -sf -o /dev/null http://127.0.0.1:8001/ && break; sleep 0.2; done
# Twice: a record Redis answers with enters the near cache on its digest's second sighting.
for _ in 1 2; do
  h2load --h1 -c1 -n 1000 -i $work/warm.txt | grep -q "status codes: 1000 2xx" || { echo "warm-up failed" >&2; exit 1; }
done
run() { # name file n
  callgrind_control -z $vg >/dev/null 2>&1 & z=$!; sleep 1
  # Only 2xx answers count: a run that measured error answers is no figure.
  h2load --h1 -c1 -n $3 -i $2 | grep -q "status codes: $3 2xx" || { echo "$1: not every answer was 2xx" >&2; exit 1; }
  wait $z
  callgrind_control -d $vg >/dev/null 2>&1 & d=$!; sleep 1
  curl -s -o /dev/null http://127.0.0.1:8000/api/items; wait $d
  f=$(ls -t $out/cg.*.* | head -1)
  t=$(grep -h '^summary:' $f | awk '{print $2}')
  echo "$1: $((t / ($3 + 1))) instructions/request ($f)"
}
run cold $work/cold.txt $N
run warm $work/warm.txt $N
