# busi-web: `make run` serves the app, `make test` runs the test suite. Both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
THREADS ?= 16

.PHONY: run init test quick chromium slapd orthanc postgresql redis lint bench-explain bench-train bench-serve bench-quality bench-mias bench-ood bench-memory bench-outline bench-sites clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-install only when the project's metadata changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -e '.[test]'
	@touch $@

init: $(VENV)/.installed
	$(BIN)/busi-web init

run: init
	HOST=$(HOST) PORT=$(PORT) THREADS=$(THREADS) $(BIN)/busi-web serve --host $(HOST) --port $(PORT) --threads $(THREADS)

# Browser tests drive Debian's chromium; Playwright never downloads a browser of its own.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Directory-login tests start Debian's slapd on 127.0.0.1 with a throwaway directory (the package's own
# instance is never started: policy-rc.d or no init system in CI; the tests run their own).
slapd:
	@command -v slapd >/dev/null 2>&1 || [ -x /usr/sbin/slapd ] || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq slapd >/dev/null; }

# PACS tests start Debian's Orthanc with its DICOMweb plugin on 127.0.0.1 (the package's own service stays off).
orthanc:
	@{ command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; } && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null; }

# Scale-out tests start Debian's PostgreSQL (a throwaway cluster) and redis-server on 127.0.0.1 themselves.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

test: $(VENV)/.installed-test chromium slapd orthanc postgresql redis
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# The quick loop while working: everything but the slow and the browser tests.
quick: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check busi_web plugins tests benchmarks examples wsgi.py

bench-explain: $(VENV)/.installed-test
	$(BIN)/python benchmarks/explain.py
bench-train: $(VENV)/.installed-test
	$(BIN)/python benchmarks/train.py
bench-serve: $(VENV)/.installed-test
	$(BIN)/python benchmarks/serve.py
bench-quality: $(VENV)/.installed-test
	$(BIN)/python benchmarks/quality.py
bench-mias: $(VENV)/.installed-test
	$(BIN)/python benchmarks/mias.py
bench-ood: $(VENV)/.installed-test
	$(BIN)/python benchmarks/ood_calibration.py
bench-memory: $(VENV)/.installed-test
	$(BIN)/python benchmarks/memory.py
bench-outline: $(VENV)/.installed-test
	$(BIN)/python benchmarks/outline.py
bench-sites: $(VENV)/.installed-test
	$(BIN)/python benchmarks/sites.py

clean:
	rm -rf $(VENV) .pytest_cache
