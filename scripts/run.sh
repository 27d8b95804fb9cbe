#!/usr/bin/env bash
# Builds and starts the Latchkey server (127.0.0.1:8787, with a demo user)
# and the desktop app signed in to nothing yet: sign in with the printed
# credentials. Data lives in ./.latchkey/ and is kept across runs.
#
# With no display, the app runs in a virtual one (Xvfb :99); see it with
#   DISPLAY=:99 import -window root shot.png
# With no keychain (no D-Bus session), it gets a private gnome-keyring under
# ./.latchkey/ unlocked with the password "latchkey-dev".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The binaries, built with the features `cargo test --workspace` resolves
# (dev-dependencies on: any example asks for them), so that after
# scripts/test.sh this reuses that build instead of redoing the workspace.
cargo build --locked --workspace --bins --example bench_seed
mkdir -p .latchkey
ADDR="${LATCHKEY_ADDR:-127.0.0.1:8787}"

./target/debug/latchkey-server serve --demo --db .latchkey/server.db --addr "$ADDR" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; [ -n "${XVFB:-}" ] && kill $XVFB 2>/dev/null; true' EXIT
sleep 1
kill -0 $SERVER 2>/dev/null || { echo "run: the server did not start (see above)" >&2; exit 1; }

export LATCHKEY_SERVER_URL="http://$ADDR"
if [ -z "${DISPLAY:-}" ]; then
  Xvfb :99 -screen 0 1280x800x24 -nolisten tcp >/dev/null 2>&1 &
  XVFB=$!
  export DISPLAY=:99
  echo "run: no display; the app runs on Xvfb :99 (DISPLAY=:99 import -window root shot.png)"
fi
if [ -z "${DBUS_SESSION_BUS_ADDRESS:-}" ]; then
  export XDG_DATA_HOME="$PWD/.latchkey/xdg"
  mkdir -p "$XDG_DATA_HOME"
  echo "run: no D-Bus session; using a private keyring in .latchkey/xdg"
  dbus-run-session -- sh -c 'eval "$(printf %s latchkey-dev | gnome-keyring-daemon --unlock --components=secrets)" >/dev/null; exec ./target/debug/latchkey-app'
else
  ./target/debug/latchkey-app
fi
