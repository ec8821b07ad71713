#!/usr/bin/env bash
# CPU time and minor page faults of a gateway process per answered frame,
# under closed-loop load: a measure of cost that survives a busy machine
# better than frames/s does. Used for the A/B rows in docs/benchmarks.md
# (run the old and the new binary alternately).
#
#   bench/cpu-per-frame.sh BINARY [framegate serve args...]
#   env: TRANSPORT (http|ws, default http), SESSIONS (8), DUR (10),
#        FRAMES (server/tests/data/dog.jpg), CARGO_TARGET_DIR
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
BINARY=$1; shift
LOAD="${CARGO_TARGET_DIR:-$REPO/target}/release/framegate-load"
KEY=bench-key-0123456789abcdef
PORT="${PORT:-18181}"
OUT="$(mktemp -d)"
export ORT_DYLIB_PATH="$(scripts/install-onnxruntime.sh 2>/dev/null | tail -n1)"
FRAMEGATE_DEV_KEY=$KEY RUST_LOG=warn "$BINARY" serve --http-listen "127.0.0.1:$PORT" "$@" > "$OUT/fg.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$OUT"' EXIT
for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.1; done
run() { "$LOAD" --key $KEY --quiet --transport "${TRANSPORT:-http}" --mode closed --sessions "${SESSIONS:-8}" \
    --frames "${FRAMES:-server/tests/data/dog.jpg}" --target "http://127.0.0.1:$PORT" --warmup 0 "$@"; }
run --duration 2 > /dev/null   # warm-up
read -r u0 s0 f0 < <(awk '{print $14, $15, $10}' "/proc/$PID/stat")
run --duration "${DUR:-10}" --json "$OUT/r.json" > /dev/null
read -r u1 s1 f1 < <(awk '{print $14, $15, $10}' "/proc/$PID/stat")
python3 - "$u0" "$s0" "$f0" "$u1" "$s1" "$f1" "$OUT/r.json" <<'PY'
import json, os, sys
u0, s0, f0, u1, s1, f1 = map(int, sys.argv[1:7])
r = json.load(open(sys.argv[7]))
n = max(r["answered"], 1)
ms = 1000 / os.sysconf("SC_CLK_TCK")
stages = " ".join(f"{k} {v['mean']:.2f}" for k, v in r.get("stages_ms", {}).items())
print(f"frames {r['answered']}  cpu/frame {(u1 - u0 + s1 - s0) * ms / n:.2f} ms "
      f"(user {(u1 - u0) * ms / n:.2f}, sys {(s1 - s0) * ms / n:.2f})  minflt/frame {(f1 - f0) / n:.0f}  "
      f"fps {r['achieved_fps']:.1f}  stage means ms: {stages}")
PY
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
