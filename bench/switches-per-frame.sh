#!/usr/bin/env bash
# CPU time and thread switches per answered frame, by thread, of a server and
# of the load client, under compare.sh's gateway-only point (closed loop, 16
# sessions × 8 frames in flight, synthetic 640×480 JPEGs of ~51 KB). Shows
# where a server's threads sleep and wake (docs/benchmarks.md, "Worker
# wake-ups put off to the end of the runtime's round").
#
#   bench/switches-per-frame.sh framegate BINARY [framegate serve args...]
#   bench/switches-per-frame.sh ws-echo BINARY
#   env: TRANSPORT (ws|http|quic, default ws; quic for framegate only),
#        DUR (seconds measured, 4), CARGO_TARGET_DIR
#
# framegate runs with `--backend synthetic` (give more serve args after the
# binary). Counts come from /proc/PID/task/*/{stat,status} before and after
# DUR seconds in the middle of the run.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
KIND=$1; BINARY=$2; shift 2
LOAD="${CARGO_TARGET_DIR:-$REPO/target}/release/framegate-load"
KEY=bench-key-0123456789abcdef
PORT="${PORT:-18183}"
QPORT="${QPORT:-18184}"
DUR="${DUR:-4}"
TRANSPORT="${TRANSPORT:-ws}"
[[ "$DUR" =~ ^[0-9]+$ ]] || { echo "DUR is whole seconds, not $DUR" >&2; exit 2; }
OUT="$(mktemp -d)"
case "$KIND" in
framegate)
    ORT_DYLIB_PATH="$(scripts/install-onnxruntime.sh 2>/dev/null | tail -n1)"
    export ORT_DYLIB_PATH
    FRAMEGATE_DEV_KEY=$KEY RUST_LOG=info "$BINARY" serve --http-listen "127.0.0.1:$PORT" \
        --quic-listen "127.0.0.1:$QPORT" --data-dir "$OUT/data" --backend synthetic "$@" > "$OUT/server.log" 2>&1 &
    ;;
ws-echo)
    [[ "$TRANSPORT" == ws ]] || { echo "ws-echo speaks WebSocket only" >&2; exit 2; }
    "$BINARY" "127.0.0.1:$PORT" > "$OUT/server.log" 2>&1 &
    ;;
*) echo "the first argument is framegate or ws-echo, not $KIND" >&2; exit 2 ;;
esac
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$OUT"' EXIT
for _ in $(seq 1 300); do
    if [[ "$KIND" == framegate ]]; then
        curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break
    else
        grep -q listening "$OUT/server.log" && break
    fi
    sleep 0.1
done
QUIC=()
if [[ "$TRANSPORT" == quic ]]; then
    PIN="$(sed -n 's/.*QUIC listening on .*certificate sha256 \([0-9a-f]\{64\}\).*/\1/p' "$OUT/server.log" | head -n 1)"
    QUIC=(--quic-target "127.0.0.1:$QPORT" --quic-pin "$PIN")
fi
# Per thread of a process: name, CPU ticks, voluntary and involuntary switches.
snap() {
    for t in /proc/"$1"/task/*; do
        printf '%s %s %s\n' "$(tr ' ' _ < "$t/comm")" "$(awk '{print $14 + $15}' "$t/stat")" \
            "$(awk '/^voluntary_ctxt/ {v = $2} /^nonvoluntary_ctxt/ {n = $2} END {print v, n}' "$t/status")"
    done 2>/dev/null || true
}
"$LOAD" --key $KEY --quiet --warmup 1 --duration $((DUR + 4)) --transport "$TRANSPORT" --mode closed \
    --sessions 16 --in-flight 8 --synthetic 640x480 --synthetic-quality 65 "${QUIC[@]}" \
    --target "http://127.0.0.1:$PORT" --json "$OUT/r.json" > /dev/null &
LPID=$!
sleep 3
snap $PID > "$OUT/s0"; snap $LPID > "$OUT/c0"
sleep "$DUR"
snap $PID > "$OUT/s1"; snap $LPID > "$OUT/c1"
wait $LPID
python3 - "$OUT" "$DUR" <<'PY'
import json, os, sys
out, dur = sys.argv[1], int(sys.argv[2])
fps = json.load(open(f"{out}/r.json"))["achieved_fps"]
frames = max(fps * dur, 1)
us_per_tick = 1e6 / os.sysconf("SC_CLK_TCK")
def rows(name):
    a = [l.split() for l in open(f"{out}/{name}0")]
    b = [l.split() for l in open(f"{out}/{name}1")]
    return [(x[0], int(y[1]) - int(x[1]), int(y[2]) - int(x[2]), int(y[3]) - int(x[3]))
            for x, y in zip(a, b) if x[0] == y[0]]
print(f"{fps:.0f} frames/s; per answered frame:")
for who, name in (("server", "s"), ("client", "c")):
    total = [0, 0, 0]
    for comm, cpu, vol, invol in rows(name):
        total = [total[0] + cpu, total[1] + vol, total[2] + invol]
        if who == "server" and cpu > 0:
            print(f"  server {comm:<18} cpu {cpu * us_per_tick / frames:5.1f} us  "
                  f"switches {vol / frames:.3f} voluntary, {invol / frames:.3f} involuntary")
    print(f"  {who} total{'':<13} cpu {total[0] * us_per_tick / frames:5.1f} us  "
          f"switches {total[1] / frames:.3f} voluntary, {total[2] / frames:.3f} involuntary")
PY
