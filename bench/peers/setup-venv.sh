#!/usr/bin/env bash
# Creates (once) .cache/peers-venv with bench/peers/requirements.txt and
# prints its python. Idempotent: a stamp holds the requirements' hash.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$REPO/.cache/peers-venv"
REQ="$REPO/bench/peers/requirements.txt"
STAMP="$VENV/.requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    echo "$VENV/bin/python"; exit 0
fi
BASE_PY="${FRAMEGATE_PYTHON:-python3}"
"$BASE_PY" -m venv "$VENV" >&2
"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
"$VENV/bin/python" -m pip install --quiet -r "$REQ" >&2
echo "$want" > "$STAMP"
echo "$VENV/bin/python"
