#!/usr/bin/env bash
# QUIC vs WebSocket at equal offered load on loopback (docs/benchmarks.md).
#
#   scripts/bench-transports.sh [FPS_PER_SESSION] [SECONDS] [SESSIONS]
#
# Starts one `framegate serve` (the bundled model on ONNX Runtime), then runs
# client-sdk/examples/transport_bench against it over QUIC and over
# WebSocket, one after the other, same image (server/tests/data/dog.jpg),
# same offered load. Prints the load average before each run: timings on a
# shared machine mean little when it is above the core count.
# Set PROFILE=release for a release build (default: the dev profile, whose
# dependencies are built with opt-level 3).
set -euo pipefail
cd "$(dirname "$0")/.."
FPS="${1:-10}"; SECONDS_="${2:-20}"; SESSIONS="${3:-2}"
PROFILE="${PROFILE:-dev}"
ORT_DYLIB_PATH="$(scripts/install-onnxruntime.sh | tail -n 1)"; export ORT_DYLIB_PATH
flag=(); [[ "$PROFILE" == release ]] && flag=(--release)
cargo build -q "${flag[@]}" -p framegate -p framegate-client --example transport_bench
dir="${CARGO_TARGET_DIR:-target}/$([[ "$PROFILE" == release ]] && echo release || echo debug)"
DATA="$(mktemp -d)"; LOG="$DATA/serve.log"
export FRAMEGATE_DEV_KEY=bench-key-0123456789
"$dir/framegate" serve --http-listen 127.0.0.1:0 --quic-listen 127.0.0.1:0 --data-dir "$DATA" >"$LOG" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 300); do grep -q "ready (" "$LOG" && break; sleep 0.1; done
HTTP="$(sed -n 's/.*listening on http:\/\/\([^ ]*\).*/\1/p' "$LOG")"
QUIC="$(sed -n 's/.*QUIC listening on quic:\/\/\([^ ]*\) .*/\1/p' "$LOG")"
FP="$(sed -n 's/.*certificate sha256 \([0-9a-f]*\).*/\1/p' "$LOG")"
echo "machine: $(nproc) cores, $(uname -r); profile $PROFILE"
for url in "quic://$QUIC?pin=$FP" "ws://$HTTP" "quic://$QUIC?pin=$FP" "ws://$HTTP"; do
    echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    "$dir/examples/transport_bench" "$url" "$FRAMEGATE_DEV_KEY" server/tests/data/dog.jpg \
        --fps "$FPS" --seconds "$SECONDS_" --sessions "$SESSIONS"
done
