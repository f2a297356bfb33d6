# The front door. `make run` and `make test` work on a fresh machine: they create .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test test-browser lint fmt bench clean venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Serve on http://127.0.0.1:8000 (embedded PostgreSQL unless JOURNEYS_DATABASE_URL is set).
run: $(STAMP)
	$(BIN)/journeys serve

## The whole suite against real PostgreSQL (embedded, or JOURNEYS_TEST_DATABASE_URL).
## pytest exits 5 when it collected no test: that is a broken suite, never a pass.
test: $(STAMP)
	@$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not browser" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests: failing" >&2; exit 1; fi; \
	exit $$rc

BROWSER_DEPS := tests/browser/node_modules/.installed-stamp

$(BROWSER_DEPS): tests/browser/package.json tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## Browser tests (tests/browser): Debian's headless Chromium (installed when missing) loads local
## pages with journeys.js and Segment's analytics-next (npm) against a real server.
## Screenshots go to tests/browser/artifacts/.
test-browser: $(STAMP) $(BROWSER_DEPS)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	@JOURNEYS_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -m browser tests/browser $(PYTEST_ARGS); \
	rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-browser: pytest collected no tests: failing" >&2; exit 1; fi; \
	exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check app tests
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format app tests

## Ingest benchmark (installs wrk from Debian's packages when missing).
bench: $(STAMP)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/journeys bench ingest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
