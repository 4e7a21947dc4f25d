# Set-up and the two everyday commands. Only python3 (3.11+) with venv and pip are needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/smoke.toml

.PHONY: smoke test install-run install-test clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The main job on the embedded default: generated models, bundled tritonserver, smoke config.
smoke: install-run
	$(PY) -m engine --config $(CONFIG)

# Everything the tests need (the optional ONNX and TorchScript paths included), then the suite.
test: install-test
	$(PY) -m pytest

install-run: $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[server]'

install-test: $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[server,test,onnx,torch]'

clean:
	rm -rf $(VENV) results *.egg-info
