#!/usr/bin/env bash
# Installs what building and testing Latchkey needs on Debian 12, once.
# Idempotent: a second run checks and returns in about a second.
set -euo pipefail

# Debian packages: a C toolchain (SQLite is built from source, bundled);
# D-Bus headers for the Secret Service keychain backend; a D-Bus session and
# gnome-keyring so keychain tests run headless in their own session; the
# WebKitGTK stack Tauri builds on; Xvfb and WebKitWebDriver for the real-
# window tests; ImageMagick for screenshots and x11-utils (xwininfo) to see
# a window appear; PostgreSQL, whose programs the server's tests run a
# private cluster with (LATCHKEY_TEST_STORE=postgres; they never use the
# system cluster the package may start); nginx (light) as the load balancer
# of the several-instances tests (run with its own config and prefix,
# never as a service).
PKGS=(build-essential pkg-config curl wget file ca-certificates libssl-dev
      libdbus-1-dev dbus dbus-x11 gnome-keyring libsecret-tools
      libwebkit2gtk-4.1-dev libjavascriptcoregtk-4.1-dev libsoup-3.0-dev
      libgtk-3-dev libayatana-appindicator3-dev librsvg2-dev libxdo-dev
      xvfb xauth webkit2gtk-driver imagemagick x11-utils postgresql nginx-light)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }

# tauri-driver bridges WebDriver to WebKitWebDriver for the real-window tests.
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! [ -x "$CARGO_BIN/tauri-driver" ]; then
  echo "setup: installing tauri-driver"
  cargo install --quiet --locked tauri-driver --version '^2'
fi
