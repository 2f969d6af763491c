#!/usr/bin/env bash
# SETUP for callgrind.sh against the gateway (admin on ADMIN, proxy on PROXY, upstream on
# UPSTREAM): service `bench` with route /api; with OAUTH2=1 the oauth2 plugin, a consumer, its
# application and one client-credentials token, printed as the Authorization header to send.
# TARGETS (optional): space-separated addresses the service balances over through an upstream.
# PLUGINS (optional): JSON plugin bodies separated by newlines, each added to service `bench`
# (e.g. '{"name":"prometheus","config":{"latency_metrics":true}}'), to measure what one costs.
set -euo pipefail
admin=http://${ADMIN:-127.0.0.1:8001} proxy=http://${PROXY:-127.0.0.1:8000}
# Under valgrind the admin listener can come up well after the proxy listener.
for _ in $(seq 600); do curl -sf -o /dev/null "$admin/" && break; sleep 0.2; done
post() { curl -sf -X POST "$admin$1" -H 'content-type: application/json' -d "$2" >/dev/null; }
if [ -n "${TARGETS:-}" ]; then
  # TARGETS (optional): addresses balanced by an upstream that the service names.
  post /upstreams '{"name":"bench-upstream"}'
  for target in $TARGETS; do
    post /upstreams/bench-upstream/targets "{\"target\":\"$target\",\"weight\":100}"
  done
  post /services '{"name":"bench","host":"bench-upstream","port":80}'
else
  post /services "{\"name\":\"bench\",\"url\":\"http://${UPSTREAM:-127.0.0.1:9000}\"}"
fi
post /services/bench/routes '{"name":"bench-route","paths":["/api"]}'
while IFS= read -r plugin; do
  [ -z "$plugin" ] || post /services/bench/plugins "$plugin"
done <<<"${PLUGINS:-}"
header=""
if [ "${OAUTH2:-0}" = 1 ]; then
  post /services/bench/plugins '{"name":"oauth2","config":{"enable_client_credentials":true,"accept_http_if_already_terminated":true,"token_expiration":7200}}'
  post /consumers '{"username":"bench"}'
  post /consumers/bench/oauth2 '{"name":"bench-app","client_id":"bench-client","client_secret":"bench-secret","redirect_uris":["http://localhost/cb"]}'
  for _ in $(seq 300); do
    token=$(curl -s -X POST "$proxy/api/oauth2/token" -H 'x-forwarded-proto: https' \
      -d grant_type=client_credentials -d client_id=bench-client -d client_secret=bench-secret |
      sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
    [ -n "$token" ] && break
    sleep 0.2
  done
  header="authorization: Bearer $token"
fi
for _ in $(seq 300); do
  code=$(curl -s -o /dev/null -w '%{http_code}' ${header:+-H "$header"} "$proxy/api/items")
  [ "$code" = 200 ] && break
  sleep 0.2
done
[ "$code" = 200 ] || { echo "gateway never answered 200 ($code)" >&2; exit 1; }
echo "$header"
