#!/usr/bin/env bash
# All GPU checks and timings of framegate-cuda in one go, on a GPU machine
# with no network and no Rust toolchain, using the binaries that
# build-gpu-bins.sh built beforehand into cuda-kernels/.gpu-bin/:
#   1. finds NVRTC (CUDA toolkit or pip wheel) and the driver,
#   2. runs every test executable with FRAMEGATE_REQUIRE_GPU=1 (a skip is a
#      failure): the kernels against their CPU references, and the gateway's
#      pipeline with pipeline.preprocess = "cuda" against its CPU path,
#   3. runs gpu-bench (D2D bandwidth, each kernel, end to end), the
#      gateway's cpu-vs-cuda preprocessing bench (batches of 8 frames) and,
#      when built, the gateway itself with --preprocess cpu and cuda under
#      framegate-load,
#   4. prints the timing table last.
# Logs go to $OUT (if set) or /tmp/framegate-gpu-check. Takes about 1-2 minutes.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bin=${FRAMEGATE_GPU_BIN:-$here/.gpu-bin}
logs=${OUT:-/tmp/framegate-gpu-check}
mkdir -p "$logs"
logs=$(cd "$logs" && pwd)
status=0
[ -f "$bin/MANIFEST" ] || { echo "no binaries in $bin: run cuda-kernels/build-gpu-bins.sh first" >&2; exit 1; }
bin=$(cd "$bin" && pwd)
cat "$bin/MANIFEST" | head -1
scratch=()
trap 'rm -rf "${scratch[@]}"' EXIT
# build-gpu-bins.sh compresses the large files with xz (to fit the device tool's
# 64 MiB): unpack a copy.
if [ -n "$(find "$bin" -name '*.xz' | head -1)" ]; then
    unpacked=$(mktemp -d /tmp/fg-gpu-bin.XXXX)
    scratch+=("$unpacked")
    cp -r "$bin"/. "$unpacked"/
    for f in $(find "$unpacked" -name '*.xz'); do
        if xz -d -f "$f" 2>/dev/null ||
            python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[1][:-3], "wb"))' "$f"; then
            rm -f "$f"
        else
            echo "cannot unpack $f (no xz, no python3 lzma)"; status=1
        fi
    done
    chmod +x "$unpacked"/tests/* "$unpacked"/gpu-bench "$unpacked"/preprocess-device-bench "$unpacked"/framegate* 2>/dev/null
    bin=$unpacked
fi
# Everything build-gpu-bins.sh makes must be here: a missing piece is a
# failure, not a skipped check.
for need in gpu-bench preprocess-device-bench tests/gpu_vs_cpu tests/server_cuda_preprocess lib/libonnxruntime.so.1.31.1; do
    [ -f "$bin/$need" ] || { echo "missing $need in the binaries"; status=1; }
done

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
    scratch+=("$shim")
    ln -sf "$nvrtc" "$shim/libnvrtc.so"
    ln -sf "$nvrtc" "$shim/libnvrtc.so.12"
    export LD_LIBRARY_PATH="$shim:$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "NVRTC: $nvrtc"
else
    echo "NVRTC: not found in ${roots[*]} (tests will fail)"
    status=1
fi

# What the TensorRT backend (issue 8) would need from this machine's image:
# TensorRT's libnvinfer, cuDNN, and an ONNX Runtime build with the TensorRT
# and CUDA execution providers. Information only: nothing here fails the check.
echo "== TensorRT / ONNX Runtime GPU providers on this machine (information)"
found=$(timeout 30 find / -xdev \( -name 'libnvinfer.so*' -o -name 'libcudnn.so*' \
    -o -name 'libonnxruntime_providers_tensorrt.so' -o -name 'libonnxruntime_providers_cuda.so' \) \
    2>/dev/null | sort | head -20)
echo "${found:-    (no libnvinfer, libcudnn or ONNX Runtime GPU provider library found)}" | sed 's/^\//    \//'
seen_py=" "
for py in python3 /opt/torch/.venv/bin/python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    real=$(readlink -f "$(command -v "$py")")
    case "$seen_py" in *" $real "*) continue ;; esac
    seen_py="$seen_py$real "
    "$py" - <<'PY' 2>/dev/null | sed 's/^/    /'
import importlib, sys
for mod in ("tensorrt", "onnxruntime", "torch"):
    try:
        m = importlib.import_module(mod)
    except Exception as e:
        print(f"{sys.executable}: {mod}: not importable ({type(e).__name__})")
        continue
    extra = ""
    if mod == "onnxruntime":
        extra = " providers " + ",".join(m.get_available_providers())
    if mod == "torch":
        extra = f" cuda {m.version.cuda} cudnn {m.backends.cudnn.version()}"
    print(f"{sys.executable}: {mod} {getattr(m, '__version__', '?')}{extra}")
PY
done

echo "== tests"
export FRAMEGATE_REQUIRE_GPU=1 RUST_BACKTRACE=1
# The gateway's test loads ONNX Runtime and the test photos from here.
export ORT_DYLIB_PATH="$bin/lib/libonnxruntime.so.1.31.1" FRAMEGATE_REPO_ROOT="$root"
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

# The gateway itself, started as an operator would, --preprocess cpu then
# cuda, each loaded by framegate-load (WebSocket, closed loop, 1920x1080
# JPEG frames) on this machine's cores; ONNX Runtime on the CPU runs the model.
erc=0
if [ -x "$bin/framegate" ] && [ -x "$bin/framegate-load" ]; then
    echo "== gateway end to end: --preprocess cpu vs cuda (WebSocket, closed loop, 1920x1080 JPEG)"
    e2e=$(mktemp -d /tmp/fg-e2e.XXXX)
    scratch+=("$e2e")
    key=fg_dev_gpucheck_0123456789abcdef
    # Alternated, two rounds: these machines are shared, compare within a round.
    round=0
    for pre in cpu cuda cpu cuda; do
        [ "$pre" = cpu ] && round=$((round + 1))
        RUST_BACKTRACE=0 FRAMEGATE_DEV_KEY=$key "$bin/framegate" serve --http-listen 127.0.0.1:18080 \
            --data-dir "$e2e/data-$pre-$round" --preprocess "$pre" >"$logs/e2e-serve-$pre-$round.log" 2>&1 &
        pid=$!
        ready=no
        for _ in $(seq 1 300); do
            if python3 -c 'import urllib.request,sys; sys.exit(urllib.request.urlopen("http://127.0.0.1:18080/readyz", timeout=1).status != 200)' 2>/dev/null; then
                ready=yes; break
            fi
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if [ "$ready" != yes ]; then
            echo "gateway --preprocess $pre did not become ready:"
            { grep -m1 '^Error' "$logs/e2e-serve-$pre-$round.log" || tail -3 "$logs/e2e-serve-$pre-$round.log"; } | cut -c1-400 | sed 's/^/    /'
            erc=1; status=1; kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; continue
        fi
        grep -E 'CUDA preprocessing ready|io_threads' "$logs/e2e-serve-$pre-$round.log" | head -2 | sed 's/\x1b\[[0-9;]*m//g; s/^/    /'
        timeout 60 "$bin/framegate-load" --target http://127.0.0.1:18080 --key "$key" --transport ws --mode closed \
            --sessions 16 --in-flight 2 --warmup 3 --duration 15 --synthetic 1920x1080 \
            --json "$logs/e2e-$pre-$round.json" --quiet >"$logs/e2e-load-$pre-$round.log" 2>&1 || { echo "framegate-load failed"; erc=1; status=1; }
        sed 's/^/    /' "$logs/e2e-load-$pre-$round.log" | tail -4
        python3 - "$logs/e2e-$pre-$round.json" "$pre (round $round)" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
st = r.get("stages_ms", {})
print("    %s: %.1f frames/s answered; server stage p50 ms: %s" % (sys.argv[2], r["achieved_fps"],
      ", ".join("%s %.2f" % (k, v["p50"]) for k, v in st.items())))
PY
        # CPU the gateway used, start-up and warm-up included (clock ticks).
        awk -v t="$(getconf CLK_TCK)" '{printf "    gateway CPU time %.1f s (user + system, whole run)\n", ($14 + $15) / t}' "/proc/$pid/stat"
        kill -TERM "$pid"; wait "$pid" 2>/dev/null
    done
fi

echo
echo "== summary: tests $passed passed / $failed failed; bench rc $rc; preprocessing bench rc $brc; end to end rc $erc"
# The table, last.
sed -n '/^Device:/,$p' "$logs/bench.log"
exit $status
