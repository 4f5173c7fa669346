"""The install check (``make install`` runs ``python -m dlrm_dist.hardware.stack``):
torch's build and FBGEMM's variant agree with each other and with the host (issue 15,
section 3). This venv is one real case (torch's CUDA 13.0 build with fbgemm-gpu-cpu on a
host without a driver: accepted); the others are the facts such venvs report."""

from __future__ import annotations

import sys

import pytest

from dlrm_dist.hardware.stack import Stack, installed, problems
from tests.conftest import ROOT, run_cmd


def _pins() -> dict:
    lines = (ROOT / "requirements/stack.txt").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


CU130 = dict(torch_version="2.14.1", torch_cuda="13.0")
CPU = dict(torch_version="2.14.1+cpu", torch_cuda=None)


def test_this_venv_passes_the_check_make_install_runs():
    pins = _pins()
    proc = run_cmd([sys.executable, "-m", "dlrm_dist.hardware.stack", "--torch", pins["TORCH_VERSION"],
                    "--fbgemm", pins["FBGEMM_VERSION"]], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("install check: torch ") and proc.stdout.rstrip().endswith("consistent")
    stack = installed()
    assert stack.fbgemm_kind in ("cpu", "cuda") and stack.fbgemm_variant == stack.fbgemm_kind


def test_wrong_pin_stops_make_install_with_how_to_fix():
    proc = run_cmd([sys.executable, "-m", "dlrm_dist.hardware.stack", "--torch", "2.13.0"], timeout=120)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "requirements/stack.txt pins 2.13.0" in line and "make install" in line


@pytest.mark.parametrize("stack,gpus", [
    (Stack(**CU130, fbgemm={"fbgemm-gpu-cpu": "1.9.0"}, fbgemm_variant="cpu"), 0),  # this machine
    (Stack(**CPU, fbgemm={"fbgemm-gpu-cpu": "1.9.0"}, fbgemm_variant="cpu"), 0),
    (Stack(**CU130, fbgemm={"fbgemm-gpu": "1.9.0"}, fbgemm_variant="cuda"), 8),
    (Stack(**CU130, fbgemm={"fbgemm-gpu": "1.9.0+cu130"}, fbgemm_variant="cuda"), 8),
], ids=["cuda-torch-cpu-fbgemm-no-driver", "cpu-host", "gpu-host", "gpu-host-cu130-index"])
def test_consistent_stacks(stack, gpus):
    assert problems(stack, gpus, "2.14.1", "1.9.0") == []


@pytest.mark.parametrize("stack,gpus,says", [
    (Stack(**CPU, fbgemm={"fbgemm-gpu": "1.9.0"}, fbgemm_variant="cuda"), 0, "fbgemm-gpu (the CUDA build) with torch"),
    (Stack(torch_version="2.14.1+cu126", torch_cuda="12.6", fbgemm={"fbgemm-gpu": "1.9.0+cu130"},
           fbgemm_variant="cuda"), 8, "built for CUDA 13.0 but torch for CUDA 12.6"),
    (Stack(**CU130, fbgemm={"fbgemm-gpu": "1.9.0", "fbgemm-gpu-cpu": "1.9.0"}), 0, "both fbgemm-gpu and"),
    (Stack(**CU130, fbgemm={"fbgemm-gpu-cpu": "1.9.0"}, fbgemm_variant="cpu"), 8, "has fbgemm-gpu-cpu"),
    (Stack(**CPU, fbgemm={"fbgemm-gpu-cpu": "1.9.0"}, fbgemm_variant="cpu"), 8, "(CPU build), so jobs would"),
    (Stack(**CU130, fbgemm={"fbgemm-gpu": "1.9.0"}, fbgemm_variant="cpu"), 8, "holds the cpu build"),
    (Stack(**CU130, fbgemm={"fbgemm-gpu-cpu": "1.8.0"}, fbgemm_variant="cpu"), 0, "fbgemm 1.8.0 but"),
    (Stack(**CU130), 0, "fbgemm is not installed"),
], ids=["cuda-fbgemm-cpu-torch", "cuda-major-mismatch", "both-variants", "gpu-host-cpu-fbgemm",
        "gpu-host-cpu-torch", "overwritten-folder", "fbgemm-pin", "no-fbgemm"])
def test_inconsistent_stacks_are_refused_saying_how(stack, gpus, says):
    found = problems(stack, gpus, "2.14.1", "1.9.0")
    assert len(found) == 1 and says in found[0], found
    assert "make install" in found[0] or "pip install --force-reinstall" in found[0]
