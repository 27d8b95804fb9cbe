#!/usr/bin/env bash
# Measures what idle live-updates streams (GET /v1/sync/events) cost the
# server, for BENCHMARKS.md: STREAMS streams held open by one client
# process, the release server's memory (VmRSS) before and after they open,
# and its CPU time (utime + stime from /proc/PID/stat) over IDLE seconds of
# idleness with them open (a `: ping` every 15 s on each), beside the same
# IDLE seconds with none open. Target: under 50 MiB added, no measurable CPU.
#
#   bash scripts/bench-streams.sh                 # 1000 streams, 60 s idle
#   STREAMS=2000 IDLE=30 SESSIONS=8 bash scripts/bench-streams.sh
#
# The server is `serve --demo` on a free port of 127.0.0.1 with a new
# database. The client signs in SESSIONS times (successful sign-ins cost the
# server an Argon2 hash each but count against no throttling limit) and
# spreads the streams over those access tokens: a token may hold several
# streams. The access tokens live 2 h, so no stream ends at its token's
# expiry during the run. The client is the Python below: plain sockets, a
# selector that reads the pings and counts any stream that ends.
set -euo pipefail
cd "$(dirname "$0")/.."
STREAMS="${STREAMS:-1000}"
IDLE="${IDLE:-60}"
SESSIONS="${SESSIONS:-4}"
TARGET="${CARGO_TARGET_DIR:-target}"

# Two descriptors per stream would do (the client's and the server's own
# processes each hold one), plus room for everything else.
want=$((STREAMS + 256))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want" ]; then
  ulimit -n "$want" || { echo "bench-streams: cannot raise ulimit -n to $want" >&2; exit 1; }
fi

cargo build --release --locked -p latchkey-server --bin latchkey-server
bin="$TARGET/release/latchkey-server"

tmp="$(mktemp -d)"
SERVER=""
cleanup() {
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

# Its start-up line only: no line per request.
export NO_COLOR=1 LATCHKEY_LOG="warn,latchkey_server::server=info"
. scripts/demo-server.sh
start_demo_server "$bin" "$tmp" --access-ttl 2h
addr="$SERVER_URL"
echo "server $addr (pid $SERVER, $bin), $STREAMS streams over $SESSIONS sessions, ${IDLE}s idle"
echo "cpus: $(nproc); load average: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$addr" "$SERVER" "$STREAMS" "$SESSIONS" "$IDLE" "$tmp/server.db.demo-password" <<'PY'
import json, os, selectors, socket, sys, time, urllib.parse, urllib.request

url, pid, streams, sessions, idle = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
with open(sys.argv[6]) as f:
    password = f.readline().strip()
host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
tck = os.sysconf("SC_CLK_TCK")

def server():
    """The server's VmRSS (KiB), CPU time (ticks), threads and open descriptors."""
    with open(f"/proc/{pid}/status") as f:
        st = dict(l.split(":", 1) for l in f if ":" in l)
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return {
        "rss": int(st["VmRSS"].split()[0]),
        "cpu": int(fields[11]) + int(fields[12]),
        "threads": int(st["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }

def show(label, s):
    print(f"  {label:<34} VmRSS {s['rss'] / 1024:7.1f} MiB  cpu {s['cpu'] / tck:6.2f} s"
          f"  threads {s['threads']:3}  fds {s['fds']}")

def sign_in():
    body = urllib.parse.urlencode({"grant_type": "password", "username": "demo",
                                   "password": password}).encode()
    with urllib.request.urlopen(f"{url}/v1/auth/token", body, timeout=30) as r:
        return json.load(r)["access_token"]

def idle_for(secs, sel=None):
    """Waits `secs`, reading whatever the streams send; returns (pings, ended)."""
    pings = ended = 0
    end = time.monotonic() + secs
    while (left := end - time.monotonic()) > 0:
        if sel is None:
            time.sleep(left)
            break
        for key, _ in sel.select(timeout=left):
            data = key.fileobj.recv(65536)
            if not data:
                sel.unregister(key.fileobj)
                ended += 1
            pings += data.count(b": ping")
    return pings, ended

tokens = [sign_in() for _ in range(sessions)]
time.sleep(2)
base = server()
show("signed in, no stream", base)
idle_for(idle)
quiet = server()
show(f"after {idle}s idle, no stream", quiet)

t0 = time.monotonic()
socks = []
for i in range(streams):
    s = socket.create_connection((host, port), timeout=30)
    s.sendall((f"GET /v1/sync/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Authorization: Bearer {tokens[i % sessions]}\r\n"
               "Accept: text/event-stream\r\n\r\n").encode())
    socks.append(s)
for i, s in enumerate(socks):
    got = b""
    while b"event: changed" not in got:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit(f"stream {i} ended before its first event: {got[:200]!r}")
        got += chunk
    if not got.startswith(b"HTTP/1.1 200"):
        sys.exit(f"stream {i}: {got[:200]!r}")
opened = time.monotonic() - t0
time.sleep(1)
after_open = server()
show(f"{streams} streams open ({opened:.2f}s)", after_open)

sel = selectors.DefaultSelector()
for s in socks:
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
pings, ended = idle_for(idle, sel)
after_idle = server()
show(f"after {idle}s idle, streams open", after_idle)

mib = lambda kib: kib / 1024
added = after_idle["rss"] - base["rss"]
print(f"  memory added by {streams} streams: {mib(added):.1f} MiB"
      f" ({added / streams:.1f} KiB per stream; {mib(after_open['rss'] - base['rss']):.1f} MiB"
      f" right after opening)")
print(f"  cpu to open them: {(after_open['cpu'] - quiet['cpu']) / tck:.2f} s")
for label, a, b in (("no stream", base, quiet), (f"{streams} streams", after_open, after_idle)):
    d = (b["cpu"] - a["cpu"]) / tck
    print(f"  cpu over {idle}s idle, {label}: {d:.2f} s ({100 * d / idle:.2f}% of one core)")
print(f"  pings read: {pings} ({pings / streams:.1f} per stream); streams ended meanwhile: {ended}")
PY
