#!/usr/bin/env bash
# Runs every test of the workspace: unit, handler (Router + oneshot) and
# process tests (the real server binary on 127.0.0.1, a free port).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace --locked "$@"
