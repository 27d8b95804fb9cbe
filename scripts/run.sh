#!/usr/bin/env bash
# Builds and starts the Latchkey server on 127.0.0.1:8787 with a demo user,
# and prints how to sign in. Data lives in ./.latchkey/ (kept across runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked --release -p latchkey-server
mkdir -p .latchkey
exec ./target/release/latchkey-server serve --demo --db .latchkey/server.db \
  --addr "${LATCHKEY_ADDR:-127.0.0.1:8787}"
