#!/usr/bin/env bash
# Builds, on a machine without a GPU, everything cuda-kernels/gpu-check.sh
# runs on a GPU machine: the test executables of framegate-cuda
# (`cargo test --no-run`), the gateway's CUDA-preprocessing test and bench
# (with the ONNX Runtime library they load) and the gpu-bench binary, in
# release mode, copied
# into cuda-kernels/.gpu-bin/ (git-ignored through .git/info/exclude, so it
# can travel with the device tool's `carry`).
#
#   cuda-kernels/build-gpu-bins.sh        # then: cuda-kernels/gpu-check.sh on the GPU machine
#
# Honours CARGO_TARGET_DIR. Needs only the Rust toolchain (no CUDA).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
out="$here/.gpu-bin"
cd "$root"

# Keep the folder out of git without touching .gitignore.
exclude="$(git rev-parse --git-common-dir 2>/dev/null || echo .git)/info/exclude"
if [ -f "$exclude" ] && ! grep -qx '/cuda-kernels/.gpu-bin/' "$exclude"; then
    echo '/cuda-kernels/.gpu-bin/' >>"$exclude"
fi

rm -rf "$out"
mkdir -p "$out/tests"

# Test executables: the JSON messages name each one.
cargo test --release -p framegate-cuda --no-run --message-format=json 2>/dev/null |
    grep -E '"profile":\{[^}]*"test":true' | grep -o '"executable":"[^"]*"' | sed 's/"executable":"//; s/"$//' >"$out/.list"
n=0
while read -r exe; do
    [ -n "$exe" ] || continue
    name=$(basename "$exe" | sed 's/-[0-9a-f]\{16\}$//')
    cp "$exe" "$out/tests/$name"
    n=$((n + 1))
done <"$out/.list"
rm -f "$out/.list"
[ "$n" -gt 0 ] || { echo "no test executables found" >&2; exit 1; }

# The gateway's GPU checks: its CUDA-preprocessing test (tests/ too) and the
# cpu-vs-cuda preprocessing bench, with the ONNX Runtime library they load.
# `built_executable NAME CARGO-ARGS...`: builds, prints the executable's path.
built_executable() {
    local name=$1 log="$out/.build.log" exe
    shift
    exe=$(cargo "$@" --no-run --message-format=json 2>"$log" |
        grep -o "\"executable\":\"[^\"]*$name[^\"]*\"" | sed 's/"executable":"//; s/"$//' | tail -1) || true
    [ -n "$exe" ] || { cat "$log" >&2; echo "$name did not build" >&2; exit 1; }
    rm -f "$log"
    echo "$exe"
}
cp "$(built_executable cuda_preprocess test --release -p framegate --test cuda_preprocess)" \
    "$out/tests/server_cuda_preprocess"
cp "$(built_executable preprocess_device bench -p framegate-bench --bench preprocess_device)" \
    "$out/preprocess-device-bench"
ort="${ORT_DYLIB_PATH:-${XDG_CACHE_HOME:-$HOME/.cache}/framegate/onnxruntime-1.31.1/libonnxruntime.so.1.31.1}"
[ -f "$ort" ] || { echo "no ONNX Runtime library at $ort: run scripts/install-onnxruntime.sh" >&2; exit 1; }
mkdir -p "$out/lib"
cp "$ort" "$out/lib/libonnxruntime.so.1.31.1"

cargo build --release -p framegate-cuda --bin gpu-bench
tdir=${CARGO_TARGET_DIR:-$root/target}
cp "$tdir/release/gpu-bench" "$out/"
# The gateway and the load harness, stripped and compressed, for the end to
# end run (FRAMEGATE_GPU_E2E=0 leaves them out).
if [ "${FRAMEGATE_GPU_E2E:-1}" != 0 ]; then
    cargo build --release -p framegate --bin framegate -p framegate-loadtest --bin framegate-load
    for b in framegate framegate-load; do
        strip -o "$out/$b" "$tdir/release/$b"
    done
fi
strip "$out"/gpu-bench "$out"/preprocess-device-bench "$out"/tests/* 2>/dev/null || true
# Files over 2 MB are compressed with xz (gpu-check.sh unpacks a copy), so
# binaries and the working tree fit the device tool's 64 MiB.
find "$out" -type f -size +2M -exec xz -9 -T0 -f {} +

{
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) from $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')"
    (cd "$out" && ls -l . lib/ tests/)
} >"$out/MANIFEST"
cat "$out/MANIFEST"
du -sh "$out"
