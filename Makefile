# framegate — the two commands of the quick start, and a few helpers.
#
#   make run    # build and run the gateway on its embedded defaults
#   make test   # install what the tests need, run every test
#
# Everything the commands need (ONNX Runtime from PyPI, a Python venv for the
# reference tests, flatc) is installed by the scripts they call.

CARGO ?= cargo
ARGS ?=

.PHONY: run test setup build lint fmt

run: setup
	$(CARGO) run --release -p framegate -- serve $(ARGS)

setup:
	@scripts/install-onnxruntime.sh >/dev/null

build:
	$(CARGO) build --release -p framegate

test:
	scripts/test.sh $(ARGS)

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all
