#!/usr/bin/env bash
# Installs the ONNX Runtime shared library framegate loads at run time.
#
# It comes from the PyPI wheel onnxruntime==1.31.1 (fetched with pip, checked
# against pinned SHA-256 sums) and is unpacked to
#   ${XDG_CACHE_HOME:-$HOME/.cache}/framegate/onnxruntime-1.31.1/libonnxruntime.so.1.31.1
# which is where `framegate serve` looks when neither `onnxruntime.dylib` nor
# ORT_DYLIB_PATH is set. Idempotent: does nothing when already installed.
# Prints the library's path on its last line.
set -euo pipefail

VERSION=1.31.1
WHEEL=onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl
WHEEL_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
LIB=libonnxruntime.so.1.31.1
LIB_SHA256=fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3

DEST="${XDG_CACHE_HOME:-$HOME/.cache}/framegate/onnxruntime-$VERSION"
TARGET="$DEST/$LIB"

sha() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$TARGET" && "$(sha "$TARGET")" == "$LIB_SHA256" ]]; then
    echo "$TARGET"
    exit 0
fi

if [[ "$(uname -m)" != "x86_64" ]]; then
    echo "install-onnxruntime: only x86_64 Linux is pinned here; on $(uname -m) install onnxruntime==$VERSION" >&2
    echo "with pip and set ORT_DYLIB_PATH to its onnxruntime/capi/$LIB" >&2
    exit 1
fi

PY=""
for cand in python3 python; do
    if command -v "$cand" >/dev/null && "$cand" -m pip --version >/dev/null 2>&1; then PY=$cand; break; fi
done
if [[ -z "$PY" ]]; then
    echo "install-onnxruntime: needs python3 with pip (Debian: apt-get install -y python3-pip)" >&2
    exit 1
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
echo "install-onnxruntime: fetching onnxruntime==$VERSION from PyPI ..." >&2
# The wheel is pinned by platform and hash, whatever Python runs pip.
printf 'onnxruntime==%s --hash=sha256:%s\n' "$VERSION" "$WHEEL_SHA256" >"$TMP/req.txt"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_28_x86_64 \
    --require-hashes -r "$TMP/req.txt" -d "$TMP" >&2
[[ "$(sha "$TMP/$WHEEL")" == "$WHEEL_SHA256" ]] || { echo "install-onnxruntime: wheel checksum mismatch" >&2; exit 1; }

"$PY" - "$TMP/$WHEEL" "$TMP/$LIB" "$LIB" <<'PY'
import sys, zipfile
wheel, out, lib = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, open(out, "wb") as f:
    f.write(z.read("onnxruntime/capi/" + lib))
PY
[[ "$(sha "$TMP/$LIB")" == "$LIB_SHA256" ]] || { echo "install-onnxruntime: library checksum mismatch" >&2; exit 1; }
mkdir -p "$DEST"
install -m 0644 "$TMP/$LIB" "$TARGET.part"
mv "$TARGET.part" "$TARGET"
echo "install-onnxruntime: installed $TARGET" >&2
echo "$TARGET"
