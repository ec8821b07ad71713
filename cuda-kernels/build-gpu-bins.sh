#!/usr/bin/env bash
# Builds, on a machine without a GPU, everything cuda-kernels/gpu-check.sh
# runs on a GPU machine: the test executables of framegate-cuda
# (`cargo test --no-run`) and the gpu-bench binary, in release mode, copied
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

cargo build --release -p framegate-cuda --bin gpu-bench
tdir=${CARGO_TARGET_DIR:-$root/target}
cp "$tdir/release/gpu-bench" "$out/"
strip "$out"/gpu-bench "$out"/tests/* 2>/dev/null || true

{
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) from $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet -- cuda-kernels 2>/dev/null || echo '+dirty')"
    (cd "$out" && ls -l gpu-bench tests/)
} >"$out/MANIFEST"
cat "$out/MANIFEST"
du -sh "$out"
