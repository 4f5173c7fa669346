# Two commands do all the set-up on a fresh clone:
#   make train   installs into .venv, then trains on synthetic data over 2 CPU ranks via torchx
#   make test    installs into .venv, then runs the test suite (what CI runs: .ci/run)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
include requirements/stack.txt
# fbgemm-gpu is the CUDA build; a host without an NVIDIA driver gets the CPU build.
FBGEMM := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo fbgemm-gpu || echo fbgemm-gpu-cpu)
OTHER_FBGEMM := $(if $(filter fbgemm-gpu,$(FBGEMM)),fbgemm-gpu-cpu,fbgemm-gpu)
STAMP := $(VENV)/.installed-$(FBGEMM)
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install train test bench clean

# After every install (and before train / test): torch's build and FBGEMM's variant agree
# with each other and with this host, or it stops with the command that repairs the venv
# (a `torch==X` pin is satisfied by X+cpu: a venv built on a CPU host keeps its CPU torch
# on a GPU host). See dlrm_dist/hardware/stack.py.
install: $(STAMP)
	$(PY) -m dlrm_dist.hardware.stack --torch $(TORCH_VERSION) --fbgemm $(FBGEMM_VERSION)

# A venv built on the other kind of host has the other fbgemm variant; both share one
# folder, so both go before this host's is installed.
$(STAMP): setup.py requirements/stack.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if $(PY) -m pip show -q $(OTHER_FBGEMM) >/dev/null 2>&1; then \
	    $(PY) -m pip uninstall -y -q fbgemm-gpu fbgemm-gpu-cpu; rm -f $(VENV)/.installed-*; fi
	$(PY) -m pip install -q torch==$(TORCH_VERSION) $(FBGEMM)==$(FBGEMM_VERSION)
	$(PY) -m pip install -q --no-deps torchrec==$(TORCHREC_VERSION)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The main job: DLRM on the synthetic teacher, 2 ranks on this machine, through torchx.
train: install
	torchx run -s local_cwd dist.ddp -j 1x2 -m dlrm_dist.train -- --config configs/smoke.yaml --run-dir runs/smoke

test: install
	$(PY) -m pytest -q -rs tests

bench: install  # results and plots in benchmarks/results/<machine>/
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/comm.py
	$(PY) benchmarks/embedding.py

clean:
	rm -rf $(VENV) runs build *.egg-info
