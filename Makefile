# Set-up and the two everyday commands. Only python3 (3.11+) with venv and pip are needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/smoke.toml

.PHONY: smoke test lint bench soak perf-analyzer install-run install-test browser clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The main job on the embedded default: generated models, bundled tritonserver, smoke config.
smoke: install-run
	$(PY) -m engine --config $(CONFIG)

# Everything the tests need (the optional ONNX, TorchScript and Ray paths included), the lint (ruff), then the suite.
test: install-test browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# The lint alone (ruff; its settings are in pyproject.toml).
lint: install-test
	$(VENV)/bin/ruff check .

# The engine's own benchmarks (tools/bench/): under 15 minutes on a quiet machine; writes
# BENCHMARKS.md and benchmarks.json. FOOTPRINT_MINUTES=20 for the footprint's full-length figure.
FOOTPRINT_MINUTES ?= 6
bench: install-run perf-analyzer
	$(PY) tools/bench/run_all.py --footprint-minutes $(FOOTPRINT_MINUTES)

# perf_analyzer (the tritonclient 2.51.0 wheel's binary, which tools/bench/perf_analyzer_env.py
# installs into .venv-pa) needs Debian's libb64-0d: installed here where apt and root allow; where
# not, the benchmark says so and measures the engine's rows alone.
perf-analyzer:
	@[ -e /usr/lib/x86_64-linux-gnu/libb64.so.0d ] || [ -e /usr/lib/aarch64-linux-gnu/libb64.so.0d ] || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q libb64-0d >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null 2>&1 && \
		    DEBIAN_FRONTEND=noninteractive apt-get install -y -q libb64-0d >/dev/null 2>&1; }; }; } || \
		echo "libb64-0d not installed: the perf_analyzer rows of make bench will be skipped"

# A real soak (tools/soak/real.py): the smoke models at full load for SOAK_MINUTES (2 hours), the
# footprint of every engine process and of the run; writes its section of BENCHMARKS.md and soak.json.
SOAK_MINUTES ?= 120
soak: install-run
	$(PY) tools/soak/real.py --minutes $(SOAK_MINUTES)

# Headless Chromium renders report.html in the tests; where it cannot be installed (no apt, no
# root) that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null 2>&1 && \
		    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
		echo "chromium not installed: the browser check of report.html will skip"

install-run: $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[server]'

install-test: $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[server,test,onnx,torch,ray]'

clean:
	rm -rf $(VENV) .venv-pa results *.egg-info
