#!/usr/bin/env bash
# Create (once) the Python environment used by framegate's reference tools and
# tests: $REPO/.cache/venv with pinned numpy, onnxruntime, onnx and Pillow,
# and MLServer (a real KServe v2 inference server for the Triton backend's
# tests; its own dependencies are left to pip, which checks them against the
# pins here),
# flatbuffers, websockets and aioquic for the third-party protocol clients.
#
# Usage:
#   scripts/python-env.sh            # set up if needed; last line = venv python
#   PY=$(scripts/python-env.sh | tail -n 1)
#   "$PY" tools/reference/nanodet_ref.py --model ... img.jpg
#
# Idempotent: a stamp file holds the hash of the requirement list; when it
# matches, the script does nothing but print the interpreter path (well under
# a second).  Change a pin below and the next run re-installs into the same
# venv.  Set FRAMEGATE_PYTHON to choose the base interpreter for a new venv
# (default: the first of python3, python3.12, python3.11 that runs).
# All pins have wheels for CPython 3.11 and 3.12 on manylinux x86_64.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.cache/venv"
STAMP="$VENV/.framegate-requirements.sha256"

REQUIREMENTS="numpy==2.4.6
onnxruntime==1.31.1
onnx==1.23.2
pillow==13.0.0
nvidia-cuda-nvrtc-cu12==12.8.93
mlserver==1.7.1
flatbuffers==25.12.19
websockets==17.4
aioquic==1.7.2"

want_hash() {
    printf '%s\n' "$REQUIREMENTS" | sha256sum | cut -d' ' -f1
}

# Fast path: venv exists and the stamp matches the requirement list.
if [[ -x "$VENV/bin/python" && -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$(want_hash)" ]]; then
    echo "$VENV/bin/python"
    exit 0
fi

if [[ -n "${FRAMEGATE_PYTHON:-}" ]]; then
    BASE_PY="$FRAMEGATE_PYTHON"
else
    BASE_PY=""
    for cand in python3 python3.12 python3.11; do
        # pyenv shims exist for versions that are not active: check it runs.
        if "$cand" -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1; then
            BASE_PY="$cand"; break
        fi
    done
    [[ -n "$BASE_PY" ]] || { echo "python-env.sh: no python >= 3.11 found" >&2; exit 1; }
fi

echo "python-env.sh: setting up $VENV with $BASE_PY" >&2
if [[ ! -x "$VENV/bin/python" ]]; then
    mkdir -p "$REPO/.cache"
    "$BASE_PY" -m venv "$VENV" >&2
fi
rm -f "$STAMP"
REQ_FILE="$VENV/requirements.txt"
printf '%s\n' "$REQUIREMENTS" > "$REQ_FILE"
"$VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip >&2
"$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQ_FILE" >&2
"$VENV/bin/python" -c 'import numpy, onnxruntime, onnx, PIL, mlserver, flatbuffers, websockets, aioquic' >&2
want_hash > "$STAMP"
echo "$VENV/bin/python"
