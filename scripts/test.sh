#!/usr/bin/env bash
# Runs every test of the workspace: unit, handler (Router + oneshot) and
# process tests (the real server binary on 127.0.0.1, a free port), then the
# server's handler and process suites again on PostgreSQL (a private
# cluster the tests start themselves), then the process (protocol) tests,
# the engine's own tests and the 60 s load run through nginx to three
# server instances on PostgreSQL. The PostgreSQL fault tests
# (crates/server/tests/pg_faults.rs) start clusters of their own whatever
# the store, so they run once, in the first pass.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace --locked "$@"
LATCHKEY_TEST_STORE=postgres cargo test -p latchkey-server --locked --test handlers --test process --test instances "$@"
LATCHKEY_TEST_STORE=postgres LATCHKEY_TEST_SERVERS=3 cargo test -p latchkey-server --locked --test process "$@"
LATCHKEY_TEST_SERVERS=3 cargo test -p latchkey-client --locked --test engine --test load "$@"
