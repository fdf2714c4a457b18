# Two commands for a fresh machine: `make run` and `make test`.
# Every install comes from uv.lock (exact versions and hashes); `make lock` refreshes it.
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000
# uv uses the interpreter `make` was given and never downloads one
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never

.PHONY: run test lock lockcheck lint typecheck pytest docs bench clean chromium

$(UV):
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet 'uv==$(UV_VERSION)'

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --quiet --locked --extra dev
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/activation serve --host $(HOST) --port $(PORT)

test: lockcheck $(STAMP) lint typecheck pytest docs

# the newest versions pyproject.toml allows, written to uv.lock
lock: $(UV)
	$(UV) lock --upgrade

# pyproject.toml and uv.lock agree (fails, saying so, when a dependency changed without `make lock`)
lockcheck: $(UV)
	$(UV) lock --check --quiet

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) chromium
	$(BIN)/pytest

# The documentation site (mkdocs.yml, docs/) into site/, strict: a broken link or anchor, a page
# left out of the nav or a missing snippet fails it. Its examples run in pytest (tests/test_docs.py).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Not part of `make test`: about 6 minutes, local redis-server and wrk (apt-get install wrk).
bench: $(STAMP)
	$(BIN)/python -m bench.run

# Not part of `make test` (tests/test_soak.py runs a short one): the checker that hunts for doubles,
# for minutes; exits 1 on any violation. e.g. make soak SOAK_USERS=20000 SOAK_SECONDS=300
SOAK_USERS ?= 2000
SOAK_SECONDS ?= 60
SOAK_ARGS ?= --users $(SOAK_USERS) --seconds $(SOAK_SECONDS)
.PHONY: soak
soak: $(STAMP)
	$(BIN)/python -m tests.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache site

# The dashboard's browser test needs Debian's chromium: installed here when absent, as root under
# CI=true only; elsewhere the test skips and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$CI" = true ] && [ "$$(id -u)" = 0 ] && \
		apt-get update -q && apt-get install -y -q chromium; } || true
