#!/usr/bin/env bash
# Builds the installable package and proves it: the .deb from the `dist`
# profile (`cargo tauri build --bundles deb -- --profile dist`, the tauri CLI
# taken from npm when `cargo tauri` is not installed), then
#   1. `apt-get install ./…deb` (pulls in WebKitGTK if missing),
#   2. starts the installed /usr/bin/latchkey-app under Xvfb in a private
#      D-Bus session and keychain, waits for its window and takes a
#      screenshot (target/package/installed.png),
#   3. `apt-get purge`s it and checks that every file it installed is gone.
# Prints the .deb's size against the 8 MB target.
#
#   bash scripts/package.sh            # build, install, start, uninstall
#   bash scripts/package.sh --build    # only build the .deb
#
# Installing is system-wide (as root): run it on a machine you may install on.
set -euo pipefail
cd "$(dirname "$0")/.."
TAURI_CLI_VERSION="${TAURI_CLI_VERSION:-2.12.6}"
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
OUT="$TARGET/package"

if [ "${1:-}" != "--inner" ]; then
  bash scripts/setup.sh
  if cargo tauri --version >/dev/null 2>&1; then
    cargo tauri build --bundles deb -- --locked --profile dist
  else
    npx --yes "@tauri-apps/cli@$TAURI_CLI_VERSION" build --bundles deb -- --locked --profile dist
  fi
  deb="$(ls -t "$TARGET"/dist/bundle/deb/*.deb | head -1)"
  size="$(stat -c %s "$deb")"
  printf 'package: %s: %s bytes (%s MB, %s MiB; target <= 8 MB)\n' "$deb" "$size" \
    "$(numfmt --to-unit=1000000 --format=%.2f "$size")" "$(numfmt --to-unit=Mi --format=%.2f "$size")"
  [ "${1:-}" = "--build" ] && exit 0

  mkdir -p "$OUT"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  cp "$deb" "$tmp/latchkey.deb"
  DEBIAN_FRONTEND=noninteractive apt-get install -y "$tmp/latchkey.deb" >"$tmp/install.log" 2>&1 ||
    { cat "$tmp/install.log" >&2; exit 1; }
  package="$(dpkg-deb -f "$tmp/latchkey.deb" Package)"
  dpkg -L "$package" >"$tmp/files"
  echo "installed $package: $(dpkg -s "$package" | sed -n 's/^Version: //p'), $(grep -c . "$tmp/files") paths"

  status=0
  env XDG_DATA_HOME="$tmp/data" XDG_CONFIG_HOME="$tmp/config" XDG_CACHE_HOME="$tmp/cache" \
    XDG_RUNTIME_DIR="$tmp" PKG_TMP="$tmp" OUT="$OUT" \
    xvfb-run -a -s "-screen 0 1280x800x24 -nolisten tcp" \
    dbus-run-session -- bash "$0" --inner || status=$?

  DEBIAN_FRONTEND=noninteractive apt-get purge -y "$package" >"$tmp/purge.log" 2>&1 ||
    { cat "$tmp/purge.log" >&2; exit 1; }
  if dpkg -s "$package" >/dev/null 2>&1; then
    echo "package: $package is still installed after purge" >&2
    exit 1
  fi
  left=0
  while read -r path; do
    [ -f "$path" ] && { echo "package: left behind: $path" >&2; left=1; }
  done <"$tmp/files"
  [ "$left" = 0 ] || exit 1
  echo "uninstalled $package: no file of it is left"
  exit "$status"
fi

# ---- inside xvfb-run + dbus-run-session --------------------------------------
mkdir -p "$XDG_DATA_HOME" "$XDG_CONFIG_HOME" "$XDG_CACHE_HOME"
eval "$(printf %s package | gnome-keyring-daemon --unlock --components=secrets)" >/dev/null
LATCHKEY_LOG=info /usr/bin/latchkey-app >"$PKG_TMP/app.log" 2>&1 &
app=$!
# Up when its window is mapped; with no session in the keychain it shows the
# sign-in form.
up=""
for _ in $(seq 600); do
  kill -0 "$app" 2>/dev/null || break
  if xwininfo -root -tree 2>/dev/null | grep -q '"Latchkey"'; then
    up=1
    break
  fi
  sleep 0.1
done
if [ -z "$up" ]; then
  echo "package: the installed app showed no window within 60 s; its log:" >&2
  cat "$PKG_TMP/app.log" >&2
  kill "$app" 2>/dev/null || true
  exit 1
fi
sleep 3 # let WebKit paint before the screenshot
import -window root "$OUT/installed.png"
echo "the installed app started: window up, screenshot $OUT/installed.png"
kill -TERM "$app"
wait "$app" 2>/dev/null || true
