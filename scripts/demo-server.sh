# Sourced by the bench scripts (bench-app.sh, bench-streams.sh), not run:
# a `--demo` server of their own for a while.
#
# start_demo_server BIN DIR [SERVE FLAGS...] starts `BIN serve --demo` on a
# free port of 127.0.0.1 with a new database in DIR, and returns once it
# listens, with SERVER set to its pid and SERVER_URL to its URL. Its output
# goes to DIR/server.out and DIR/server.log; the demo user's password is in
# DIR/server.db.demo-password. The script exits if the server has not
# started within 30 s. Stopping it is the caller's (kill "$SERVER").
start_demo_server() {
  local bin="$1" dir="$2"
  shift 2
  "$bin" serve --demo --db "$dir/server.db" --addr 127.0.0.1:0 "$@" \
    >"$dir/server.out" 2>"$dir/server.log" &
  SERVER=$!
  for _ in $(seq 300); do
    grep -q "listening on" "$dir/server.log" && break
    sleep 0.1
  done
  SERVER_URL="$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$dir/server.log" | head -1 | sed 's/listening on //')"
  if [ -z "$SERVER_URL" ]; then
    echo "$(basename "$0"): the server did not start" >&2
    cat "$dir/server.log" >&2
    exit 1
  fi
}
