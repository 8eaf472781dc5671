# Tensile: one venv (.venv) for the trainer, the infra program and the policy pack.
# Every target installs what it needs on a fresh machine; stamps make re-runs quick.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
CONSTRAINTS := requirements/constraints.txt

# DeepSpeed on this machine runs on the CPU accelerator with gloo.
export DS_ACCELERATOR ?= cpu

.PHONY: demo test test-full bench install install-infra install-browser preview validate scan clean

STACK ?= dev

install: $(VENV)/.stamp-training
install-infra: $(VENV)/.stamp-infra

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first (the local CPU wheel; anything else would pull a multi-GB CUDA build), then
# DeepSpeed with its shm op prebuilt so no process pays a ~40 s compile at start.
$(VENV)/.stamp-torch: requirements/torch.txt | $(BIN)/python
	$(PIP) install -c $(CONSTRAINTS) pip wheel setuptools
	$(PIP) install -c $(CONSTRAINTS) -r requirements/torch.txt
	DS_BUILD_SHM_COMM=1 $(PIP) install -c $(CONSTRAINTS) --no-build-isolation -r requirements/deepspeed.txt
	touch $@

$(VENV)/.stamp-training: $(VENV)/.stamp-torch training/pyproject.toml $(CONSTRAINTS)
	$(PIP) install -c $(CONSTRAINTS) -e 'training[dev,data,hf,cluster,report,tensorboard]'
	touch $@

# The .pth makes this checkout's infra/ and policies/ installed packages (as an editable install
# would): the `tensile` infra commands import infra.tools as a package, without touching sys.path.
$(VENV)/.stamp-infra: $(VENV)/.stamp-training infra/requirements.txt policies/requirements.txt $(CONSTRAINTS)
	$(PIP) install -c $(CONSTRAINTS) -r infra/requirements.txt -r policies/requirements.txt
	$(BIN)/python -c "import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()['purelib'], 'tensile-infra.pth').write_text('$(CURDIR)\n')"
	touch $@

# Headless Chromium from Debian's packages, for the report's browser test (tests/training/report):
# nothing downloads a browser of its own. Quick when it is there already; apt needs root (or sudo).
install-browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
	  else sudo apt-get update -q && sudo apt-get install -y -q chromium; fi; }
	@chromium --version

demo: $(VENV)/.stamp-training
	$(BIN)/tensile demo

test: $(VENV)/.stamp-training $(VENV)/.stamp-infra
	$(BIN)/python -m pytest -m "not full"

test-full: $(VENV)/.stamp-training $(VENV)/.stamp-infra
	$(BIN)/python -m pytest

preview: $(VENV)/.stamp-infra
	$(BIN)/python -m infra.tools.preview --stack $(STACK)

validate: $(VENV)/.stamp-infra
	$(BIN)/python -m infra.tools.validation --stack $(STACK) --out build/manifests/$(STACK)

scan: $(VENV)/.stamp-infra
	PYTHON=$(PYTHON) scripts/checkov-scan.sh

bench: $(VENV)/.stamp-training
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .venv-checkov build runs .pytest_cache
