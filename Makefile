# Two commands set everything up: `make demo` and `make test`. Both create .venv on first use and
# re-install when requirements.lock or pyproject.toml changes. The venv gets exactly the versions in
# requirements.lock (the ones the suite and the demo were checked with); `make lock` moves them to the newest
# releases that pyproject.toml allows (docs/install.md says how an upgrade is checked).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
DEMO_OUT ?= demo_out
# Test processes (pytest-xdist; one file's tests stay in one process, so a module's fixtures are made once).
# TEST_WORKERS=0 runs the suite in this one process (a hung test's stack is then printed in full).
TEST_WORKERS ?= 2
PIP    := $(PY) -m pip --disable-pip-version-check

.PHONY: demo test test-fast lint bench java venv lock doctor clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r $(LOCK)
	$(PIP) install -q --no-deps -e .
	@touch $(STAMP)

lock: $(STAMP)
	$(PY) -m piptools compile --quiet --upgrade --extra dev --extra app --extra ray --extra torchcodec --strip-extras --allow-unsafe --no-emit-index-url \
	  --no-emit-find-links -o $(LOCK) pyproject.toml

doctor: $(STAMP)
	$(PY) -m vidcap doctor

java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "error: Java not found. METEOR and the PTB tokenizer (coco-caption) run on Java." >&2; \
	  echo "  Debian/Ubuntu: sudo apt-get install -y default-jre-headless" >&2; \
	  echo "  macOS: brew install openjdk    conda: conda install -c conda-forge openjdk" >&2; \
	  exit 1; }

demo: $(STAMP) java
	$(PY) -m vidcap demo --out $(DEMO_OUT)

test: $(STAMP) java
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || echo "note: the report's browser test will skip:" \
	  "install Debian's chromium and chromium-driver (sudo apt-get install -y chromium chromium-driver) to run it" >&2
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# The quick loop while editing: no Java, no multi-process runs, no browser, nothing marked slow.
test-fast: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not java and not ddp and not browser and not slow" -q

lint: $(STAMP)
	$(PY) -m ruff check vidcap tests benchmarks cli.py
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) benchmarks/bench_extract.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_decode.py
	$(PY) benchmarks/bench_caption.py
	$(PY) benchmarks/bench_tokenize.py
	$(PY) benchmarks/bench_rewards.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
