#!/usr/bin/env bash
# Alternated A/B of gateway builds or settings on compare.sh's gateway-only
# point: a fresh `framegate serve --backend synthetic` per point, then the
# load (closed loop, 16 sessions × 8 frames in flight, synthetic 640×480
# JPEGs of ~51 KB, or LOADARGS), with the gateway's CPU per answered frame
# from /proc and the client's; ws-echo after each round unless NOECHO.
#
#   bench/ab-gateway-only.sh LABEL=BINARY[@ARG,ARG...] ...
#     e.g. old=/tmp/fg-old new=target/release/framegate nobatch=target/release/framegate@--max-batch,1
#   env: TRANSPORT (ws|http|quic, default ws), ROUNDS (3), DUR (8), NOECHO,
#        LOADARGS (replaces the load's mode/sessions/frames arguments),
#        CARGO_TARGET_DIR
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release"
KEY=bench-key-0123456789abcdef
PORT="${PORT:-18185}"; QPORT="${QPORT:-18186}"; EPORT="${EPORT:-18187}"
DUR="${DUR:-8}"; TRANSPORT="${TRANSPORT:-ws}"
read -r -a ARGS <<< "${LOADARGS:---mode closed --sessions 16 --in-flight 8 --synthetic 640x480 --synthetic-quality 65}"
ORT_DYLIB_PATH="$(scripts/install-onnxruntime.sh 2>/dev/null | tail -n1)"
export ORT_DYLIB_PATH
OUT="$(mktemp -d)"
PID=""
trap '[[ -n "$PID" ]] && kill $PID 2>/dev/null; rm -rf "$OUT"' EXIT

measure() { # label pid port [load args...]
    local label=$1 pid=$2 port=$3; shift 3
    "$BIN/framegate-load" --key $KEY --quiet --warmup 1 --duration 2 --transport "$TRANSPORT" "${ARGS[@]}" \
        "$@" --target "http://127.0.0.1:$port" > /dev/null 2>&1
    local s0 s1 c=0
    s0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    "$BIN/framegate-load" --key $KEY --quiet --warmup 1 --duration "$DUR" --transport "$TRANSPORT" "${ARGS[@]}" \
        "$@" --target "http://127.0.0.1:$port" --json "$OUT/r.json" > /dev/null 2>&1 &
    local lp=$!
    # The client's CPU: its last reading before it exits (warm-up included).
    while kill -0 $lp 2>/dev/null; do c=$(awk '{print $14 + $15}' "/proc/$lp/stat" 2>/dev/null || echo "$c"); sleep 0.2; done
    wait $lp || { echo "$label: the load failed" >&2; return 0; }
    s1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    python3 - "$label" "$OUT/r.json" "$((s1 - s0))" "$c" <<'PY'
import json, os, sys
label, path, server, client = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
r = json.load(open(path)); n = max(r["answered"], 1); us = 1e6 / os.sysconf("SC_CLK_TCK")
load = open("/proc/loadavg").read().split()[0]
print(f"{label:<10} {r['achieved_fps']:8.0f} /s  server {server * us / n:5.1f} us/frame  "
      f"client ~{client * us / n:5.1f} us/frame  load {load}", flush=True)
PY
}

one() { # label binary args-with-commas
    local label=$1 binary=$2 extra=()
    [[ -n "$3" ]] && IFS=, read -r -a extra <<< "$3"
    rm -rf "$OUT/data"
    FRAMEGATE_DEV_KEY=$KEY RUST_LOG=info "$binary" serve --http-listen "127.0.0.1:$PORT" \
        --quic-listen "127.0.0.1:$QPORT" --data-dir "$OUT/data" --backend synthetic "${extra[@]}" > "$OUT/fg.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.1; done
    local quic=()
    if [[ "$TRANSPORT" == quic ]]; then
        local pin
        pin="$(sed -n 's/.*QUIC listening on .*certificate sha256 \([0-9a-f]\{64\}\).*/\1/p' "$OUT/fg.log" | head -n 1)"
        quic=(--quic-target "127.0.0.1:$QPORT" --quic-pin "$pin")
    fi
    measure "$label" $PID $PORT "${quic[@]}"
    kill $PID; wait $PID 2>/dev/null || true; PID=""
}

for _ in $(seq 1 "${ROUNDS:-3}"); do
    for spec in "$@"; do
        label=${spec%%=*}; rest=${spec#*=}; binary=${rest%%@*}; args=""
        [[ "$rest" == *@* ]] && args=${rest#*@}
        one "$label" "$binary" "$args"
    done
    if [[ -z "${NOECHO:-}" && "$TRANSPORT" == ws ]]; then
        "$BIN/ws-echo" "127.0.0.1:$EPORT" > /dev/null 2>&1 &
        PID=$!; sleep 0.5
        measure echo $PID $EPORT
        kill $PID; wait $PID 2>/dev/null || true; PID=""
    fi
done
