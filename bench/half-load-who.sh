#!/usr/bin/env bash
# Who ran on the CPUs while the slowest frames of a half-load point were in
# the gateway: compare.sh's open-loop point (4 sessions × FPS frames/s,
# dog.jpg) with the client's frame log, and `perf record -a` of both CPUs on
# the monotonic clock, so each slow frame's window can be matched with the
# samples taken in it. Prints the run's p50/p99, the CPUs' share by thread
# name, and each frame over SLOW_MS with what ran while it was in flight
# (docs/benchmarks.md, "Slow episodes under the guest").
#
#   bench/half-load-who.sh BINARY [framegate serve args...]
#   env: TRANSPORT (ws|http, default ws), FPS (per session, 5.25), DUR (10),
#        SLOW_MS (55), KEEP (a folder to keep the frame log and samples in),
#        CARGO_TARGET_DIR. Needs perf (linux-perf) and root or
#        kernel.perf_event_paranoid <= 0.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
BINARY=$1; shift
LOAD="${CARGO_TARGET_DIR:-$REPO/target}/release/framegate-load"
KEY=bench-key-0123456789abcdef
PORT="${PORT:-18182}"
DUR="${DUR:-10}"
[[ "$DUR" =~ ^[0-9]+$ ]] || { echo "DUR is whole seconds, not $DUR" >&2; exit 2; }
command -v perf > /dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
if [[ "$(id -u)" != 0 && "$(cat /proc/sys/kernel/perf_event_paranoid)" -gt 0 ]]; then
    echo "perf record -a needs root or kernel.perf_event_paranoid <= 0" >&2; exit 1
fi
ORT_DYLIB_PATH="$(scripts/install-onnxruntime.sh | tail -n1)"
export ORT_DYLIB_PATH
OUT="${KEEP:-$(mktemp -d)}"
mkdir -p "$OUT"
PID=""; REC=""
cleanup() {
    [[ -n "$REC" ]] && kill "$REC" 2> /dev/null || true
    [[ -n "$PID" ]] && { kill "$PID" 2> /dev/null; wait "$PID" 2> /dev/null; } || true
    [[ -n "${KEEP:-}" ]] || rm -rf "$OUT"
}
trap cleanup EXIT
FRAMEGATE_DEV_KEY=$KEY RUST_LOG=warn "$BINARY" serve --http-listen "127.0.0.1:$PORT" --quic-listen off \
    --data-dir "$OUT/data" "$@" > "$OUT/fg.log" 2>&1 &
PID=$!
for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.1; done
curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" || { echo "the gateway did not get ready:" >&2; tail -5 "$OUT/fg.log" >&2; exit 1; }
perf record -q -a -k CLOCK_MONOTONIC -F 997 -o "$OUT/sys.perf" -- sleep "$((DUR + 4))" 2> "$OUT/perf.log" &
REC=$!
sleep 0.5
X=(); [[ "${TRANSPORT:-ws}" == http ]] && X=(--http-multipart)
# The report's run.measure_start_monotonic_s says when measuring started on
# perf's clock; the frame log's sent_ms counts from there.
"$LOAD" --key $KEY --quiet --warmup 2 --duration "$DUR" --json "$OUT/r.json" --frame-log "$OUT/frames.csv" \
    --transport "${TRANSPORT:-ws}" "${X[@]}" --mode open --sessions 4 --fps "${FPS:-5.25}" \
    --frames server/tests/data/dog.jpg --target "http://127.0.0.1:$PORT" > /dev/null
wait "$REC" || { echo "perf record failed:" >&2; cat "$OUT/perf.log" >&2; exit 1; }
REC=""
perf script -i "$OUT/sys.perf" -F comm,tid,cpu,time 2> /dev/null > "$OUT/samples.txt"
python3 - "$OUT" "${SLOW_MS:-55}" "$DUR" <<'PY'
import collections, csv, json, os, re, sys
out, slow_ms, dur = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
hz, cpus = 997, os.cpu_count()
r = json.load(open(out + "/r.json"))
print(f"{r['achieved_fps']:.1f} frames/s answered, p50 {r['latency_ms']['p50']:.1f} ms, "
      f"p99 {r['latency_ms']['p99']:.1f} ms")
t0 = r["run"]["measure_start_monotonic_s"]
samples = []
for line in open(out + "/samples.txt"):
    m = re.match(r"\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):", line)
    if m:
        samples.append((float(m.group(4)), m.group(1)))
samples.sort()
times = [t for t, _ in samples]
def share(a, b):
    import bisect
    c = collections.Counter(name for _, name in samples[bisect.bisect_left(times, a):bisect.bisect_right(times, b)])
    return c, max(b - a, 1e-9)
c, span = share(t0, t0 + dur)
print(f"CPUs over the point, by thread name (of {cpus}; perf samples only running threads and some idle):")
for name, n in c.most_common(8):
    print(f"  {name:20s} {n / hz / span:5.2f}")
rows = sorted(csv.DictReader(open(out + "/frames.csv")), key=lambda x: float(x["sent_ms"]))
slow = [x for x in rows if x["latency_ms"] and float(x["latency_ms"]) > slow_ms]
print(f"{len(slow)} of {len(rows)} frames over {slow_ms:g} ms:")
for x in slow:
    a = t0 + float(x["sent_ms"]) / 1000
    c, span = share(a, a + float(x["latency_ms"]) / 1000)
    ms = lambda k: int(x[k]) / 1000 if x[k] else float("nan")
    print(f"  sent at {float(x['sent_ms']) / 1000:6.2f} s: {float(x['latency_ms']):6.1f} ms (queue {ms('queue_us'):5.1f}, "
          f"decode {ms('decode_us'):5.1f}, infer {ms('infer_us'):6.1f}); samples {sum(c.values()) / hz / span:.2f} "
          f"CPUs' worth: " + ", ".join(f"{k} {v / hz / span:.2f}" for k, v in c.most_common(4)))
PY
