#!/usr/bin/env bash
# All GPU checks and timings of framegate-cuda in one go, on a GPU machine
# with no network and no Rust toolchain, using the binaries that
# build-gpu-bins.sh built beforehand into cuda-kernels/.gpu-bin/:
#   1. finds NVRTC (CUDA toolkit or pip wheel) and the driver,
#   2. runs every test executable with FRAMEGATE_REQUIRE_GPU=1 (a skip is a
#      failure): the kernels against their CPU references, and the gateway's
#      pipeline with pipeline.preprocess = "cuda" against its CPU path,
#   3. runs gpu-bench (D2D bandwidth, each kernel, end to end) and the
#      gateway's cpu-vs-cuda preprocessing bench (batches of 8 frames),
#   4. prints the timing table last.
# Logs go to $OUT (if set) or /tmp/framegate-gpu-check. Takes about 1-2 minutes.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bin=${FRAMEGATE_GPU_BIN:-$here/.gpu-bin}
logs=${OUT:-/tmp/framegate-gpu-check}
mkdir -p "$logs"
status=0

[ -x "$bin/gpu-bench" ] || { echo "no binaries in $bin: run cuda-kernels/build-gpu-bins.sh first" >&2; exit 1; }
cat "$bin/MANIFEST" 2>/dev/null | head -1

echo "== GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1 || echo "(nvidia-smi failed)"

echo "== NVRTC"
# cudarc (cuda-12080 bindings) dlopens libnvrtc.so / libnvrtc.so.12; CUDA 13
# ships libnvrtc.so.13, so we put a libnvrtc.so link to the library found
# first into a private folder on LD_LIBRARY_PATH (API calls used are the same).
roots=("${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
for d in /usr/local/cuda-*/lib64 /usr/lib/x86_64-linux-gnu; do roots+=("$d"); done
for py in python3 /opt/torch/.venv/bin/python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    while read -r sp; do
        for d in "$sp"/nvidia/cuda_nvrtc/lib "$sp"/nvidia/cu13/lib "$sp"/nvidia/cu12/lib; do roots+=("$d"); done
    done < <("$py" -c 'import site,sys; print("\n".join(site.getsitepackages()+[site.getusersitepackages()]))' 2>/dev/null)
done
nvrtc=""
for want in 12 13 ""; do
    for d in "${roots[@]}"; do
        for f in "$d"/libnvrtc.so."$want"* "$d"/libnvrtc.so; do
            [ -f "$f" ] || continue
            case "$f" in *builtins*|*alt*) continue ;; esac
            nvrtc=$(readlink -f "$f"); break 3
        done
    done
done
if [ -z "$nvrtc" ]; then
    nvrtc=$(ldconfig -p 2>/dev/null | grep -o '/[^ ]*libnvrtc\.so[.0-9]*$' | grep -v builtins | head -1 || true)
fi
if [ -n "$nvrtc" ]; then
    shim=$(mktemp -d /tmp/fg-nvrtc.XXXX)
    ln -sf "$nvrtc" "$shim/libnvrtc.so"
    ln -sf "$nvrtc" "$shim/libnvrtc.so.12"
    export LD_LIBRARY_PATH="$shim:$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "NVRTC: $nvrtc"
else
    echo "NVRTC: not found in ${roots[*]} (tests will fail)"
    status=1
fi

echo "== tests"
export FRAMEGATE_REQUIRE_GPU=1 RUST_BACKTRACE=1
# The gateway's test loads ONNX Runtime and the test photos from here.
ortdir=$(mktemp -d /tmp/fg-ort.XXXX)
if [ -f "$bin/lib/libonnxruntime.so.1.31.1.gz" ]; then
    gunzip -c "$bin/lib/libonnxruntime.so.1.31.1.gz" >"$ortdir/libonnxruntime.so.1.31.1"
fi
export ORT_DYLIB_PATH="$ortdir/libonnxruntime.so.1.31.1" FRAMEGATE_REPO_ROOT="$root"
passed=0; failed=0
for t in "$bin"/tests/*; do
    name=$(basename "$t")
    if timeout 150 "$t" --nocapture >"$logs/test-$name.log" 2>&1; then
        res=ok; passed=$((passed + 1))
    else
        res="FAILED (rc $?)"; failed=$((failed + 1)); status=1
    fi
    summary=$(grep -E '^test result:' "$logs/test-$name.log" | tail -1)
    echo "$name: $res; $summary"
    grep -E 'max abs error|SKIPPED|NVRTC [0-9]|panicked|^Cubin|^Ptx|boxes, worst|CUDA pipeline|^test .*(ok|FAILED)$' "$logs/test-$name.log" | sed 's/^/    /' | head -60
done
echo "tests: $passed executables passed, $failed failed"

# Out-of-bounds reads/writes: one test under compute-sanitizer, when there.
san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$san" ] && [ -x "$bin/tests/gpu_vs_cpu" ]; then
    echo "== compute-sanitizer memcheck (gpu_vs_cpu repeated_batches)"
    if timeout 120 "$san" --tool memcheck --error-exitcode 9 "$bin/tests/gpu_vs_cpu" repeated_batches \
        >"$logs/memcheck.log" 2>&1; then
        echo "memcheck: clean; $(grep -E 'ERROR SUMMARY' "$logs/memcheck.log" | tail -1)"
    else
        echo "memcheck: FAILED (rc $?)"; status=1
        grep -E 'ERROR SUMMARY|Invalid|at 0x|by thread' "$logs/memcheck.log" | head -20 | sed 's/^/    /'
    fi
fi

echo "== bench"
timeout 240 "$bin/gpu-bench" "$@" 2>&1 | tee "$logs/bench.log"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] || { echo "gpu-bench failed (rc $rc)"; status=1; }

echo "== gateway preprocessing: cpu (one worker thread) vs cuda, batches of 8"
brc=0
if [ -x "$bin/preprocess-device-bench" ]; then
    (cd "$logs" && timeout 150 "$bin/preprocess-device-bench" --bench --noplot) >"$logs/preprocess-device.log" 2>&1
    brc=$?
    grep -E '^CUDA device|SKIPPED|^preprocess_batch8/|time:|thrpt:' "$logs/preprocess-device.log" | sed 's/^/    /'
    [ "$brc" -eq 0 ] || { echo "preprocess-device-bench failed (rc $brc)"; status=1; }
    grep -q SKIPPED "$logs/preprocess-device.log" && { echo "preprocess-device-bench skipped the GPU"; status=1; }
fi

echo
echo "== summary: tests $passed passed / $failed failed; bench rc $rc; preprocessing bench rc $brc"
# The table, last.
sed -n '/^Device:/,$p' "$logs/bench.log"
exit $status
