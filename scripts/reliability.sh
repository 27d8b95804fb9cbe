#!/usr/bin/env bash
# The long reliability suite (issue 5): the same tests as the short versions
# that run inside scripts/test.sh, scaled up by LATCHKEY_LONG=1, plus the
# fuzzers. Figures go to RELIABILITY.md. Usage:
#   bash scripts/reliability.sh            # everything (several hours)
#   bash scripts/reliability.sh PART...    # some of: faults crashes convergence load fuzz local pg
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export LATCHKEY_LONG=1
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(faults crashes convergence load fuzz local pg)
for part in "${parts[@]}"; do
    echo "== $part"
    case "$part" in
        # Each part adds its own line here.
        # 200 randomized runs: offline edits on one or two devices, then a
        # reconnect through the fault-injecting proxy; summary line: "faults summary".
        faults) cargo test -p latchkey-client --release --locked --test faults -- --nocapture 2>&1 | tee target/faults.log
                grep '^faults summary' target/faults.log ;;
        # The server SIGKILLed in pushes and refreshes (50 runs), a process using
        # the engine SIGKILLed in bursts of saves (100 runs); summary lines: CRASHES.
        crashes) cargo test -p latchkey-client --locked --test crashes -- --nocapture --test-threads=1 2>&1 | tee target/crashes.log
                 grep '^CRASHES' target/crashes.log ;;
        # Two devices, any interleaving of edits, deletes, syncs, restarts and
        # faults, 1000 proptest cases; summary line: "convergence summary".
        convergence) cargo test -p latchkey-client --locked --test convergence -- --nocapture 2>&1 | tee target/convergence.log
                     grep '^convergence summary' target/convergence.log ;;
        # 200 engines against one release server for 10 minutes (figures printed).
        load) cargo test -p latchkey-client --release --locked --test load -- --nocapture ;;
        # Each fuzz target to 10 million executions (or 20 minutes); one: FUZZ_TARGETS=server_token.
        fuzz) bash scripts/fuzz.sh ${FUZZ_TARGETS:-} ;;
        # A full disk, a read-only data folder, the keychain daemon killed mid-session.
        local) cargo test -p latchkey-client --locked --test local_faults --test keychain ;;
        # Three instances on one PostgreSQL (issue 14): the database restarted,
        # an instance SIGKILLed, the network to it cut for 10 s, ten times each,
        # and a restore from pg_dump; summary lines: "pg_faults summary".
        pg) cargo test -p latchkey-server --locked --test pg_faults -- --nocapture --test-threads=1 2>&1 | tee target/pg_faults.log
            grep 'pg_faults summary' target/pg_faults.log ;;
        *) echo "unknown part: $part (faults crashes convergence load fuzz local pg)" >&2; exit 2 ;;
    esac
done
