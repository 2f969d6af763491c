#!/usr/bin/env bash
# The whole test suite: starts the services it needs, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh >/dev/null
export PORTCULLIS_TEST_PG="${PORTCULLIS_TEST_PG:-host=127.0.0.1 port=5432 user=postgres dbname=test}"
export PORTCULLIS_TEST_REDIS="${PORTCULLIS_TEST_REDIS:-redis://127.0.0.1:6379}"
cargo test --workspace "$@"
# The API suite again with every gateway on Postgres (a fresh schema per test). The Kong
# conformance module already ran each of its cases on both stores above: skip it here.
skip=(--skip kong_conformance)
case " $* " in *" -- "*) ;; *) skip=(-- "${skip[@]}") ;; esac
PORTCULLIS_TEST_DATABASE=postgres cargo test --test api "$@" "${skip[@]}"
