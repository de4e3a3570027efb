# Two commands matter: `make run` and `make test`. Both build .venv from scratch when needed.
# They install exact, hashed pins from the lock files (pip --require-hashes --no-deps: the
# lock is the whole set, so pip resolves nothing and cannot reach past it; `pip check` then
# proves the set complete), then the project itself without dependencies. `make lock`
# refreshes the locks from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# requirements.lock: runtime dependencies (what deploy/Dockerfile installs);
# requirements-dev.lock: runtime + the `test` extra (what .venv gets).
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
# The lock tool lives in a throwaway venv, never in .venv; pinned for reproducible output.
UV_VERSION := 0.13.8
UV_COMPILE := pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--upgrade --custom-compile-command "make lock"

.PHONY: run test lint typecheck unit bench lock clean system-deps js-deps

$(STAMP): pyproject.toml $(LOCK) $(DEV_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r $(DEV_LOCK)
	$(BIN)/python -m pip check
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/stateroom up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) system-deps js-deps
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/auth.py
	$(BIN)/python bench/arena.py

# Re-resolve every dependency to the newest release allowed by pyproject.toml and rewrite
# both lock files (for every platform, Python >= 3.11). Review the diff, run `make test`,
# commit pyproject.toml and both locks together.
lock:
	@tmp="$$(mktemp -d)" && trap 'rm -rf "$$tmp"' EXIT && \
	$(PYTHON) -m venv "$$tmp/venv" && \
	"$$tmp/venv/bin/python" -m pip install --quiet "uv==$(UV_VERSION)" && \
	"$$tmp/venv/bin/uv" $(UV_COMPILE) -o $(LOCK) pyproject.toml && \
	"$$tmp/venv/bin/uv" $(UV_COMPILE) --extra test -o $(DEV_LOCK) pyproject.toml && \
	echo "wrote $(LOCK) and $(DEV_LOCK)"

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

# The JavaScript SDK's npm packages (client/js: @msgpack/msgpack, ws; for the tests
# typescript and playwright-core), installed exactly from package-lock.json, again only
# when the lock file (or package.json) is newer than the stamp. Needs node >= 20 and npm;
# `make run` does not (browsers load the SDK and the vendored msgpack as committed).
JS_DIR := client/js
JS_STAMP := $(JS_DIR)/node_modules/.installed

$(JS_STAMP): $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "npm (with node >= 20) is required for the JavaScript SDK's tests: install Node.js 20 or later, then run make js-deps" >&2; exit 1; }
	cd $(JS_DIR) && npm ci --no-audit --no-fund
	touch $(JS_STAMP)

js-deps: $(JS_STAMP)

# The terminal-client tests drive `stateroom play` in tmux; the browser tests drive Debian's
# chromium (never a browser download). Install what is missing when we can (root with
# apt-get, as on CI); otherwise those tests skip and say how to install it.
SYSTEM_DEPS := tmux chromium
system-deps:
	@missing=""; for cmd in $(SYSTEM_DEPS); do command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$cmd"; done; \
	[ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	  || echo "not installed:$$missing (as root: apt-get install -y$$missing): the tests that need them will skip"; }
