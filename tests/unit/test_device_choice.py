"""dist.device: no silent fall-back to the CPU when GPUs are expected (issue 15, section 2).

This machine is a real case: torch is a CUDA 13.0 build and there is no driver, so
torch cannot use CUDA. With the launcher's ``--gpu`` (DLRM_DIST_EXPECT_GPUS) or a
driver that lists GPUs, dist.device=auto must stop before planning; with nothing
expecting a GPU it picks CPU ranks over gloo, as every CPU test of the suite needs.
"""

from __future__ import annotations

import shutil
import sys

import pytest
import torch

from dlrm_dist.hardware.host import parse_nvidia_smi
from dlrm_dist.training.distributed import TorchCuda, cuda_problem
from tests.conftest import run_cmd

NO_CUDA_HERE = not torch.cuda.is_available()
needs_no_cuda = pytest.mark.skipif(not NO_CUDA_HERE, reason="torch can use CUDA on this host")
# What nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader,nounits prints
# on an 8 x H100 node with an R535 driver (too old for CUDA 13) and with an R580 one.
SMI_535 = "".join(f"{i}, NVIDIA H100 80GB HBM3, 535.104.05, 81559\n" for i in range(8))
SMI_580 = SMI_535.replace("535.104.05", "580.65.06")
TORCH_CU130_NO_DRIVER = TorchCuda("2.14.1+cu130", "13.0", available=False, device_count=0)


def _train(*overrides: str, env: dict) -> "subprocess.CompletedProcess":  # noqa: F821
    return run_cmd([sys.executable, "-m", "dlrm_dist.train", "--config", "configs/smoke.yaml", "--run-dir",
                    "runs/test-device-choice", *overrides], timeout=300, env=env)


@needs_no_cuda
def test_launcher_asked_for_gpus_and_torch_cannot_use_them_stops_with_one_line():
    proc = _train(env={"DLRM_DIST_EXPECT_GPUS": "8"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = lines[0]
    assert line.startswith("dlrm-dist train: error: dist.device=auto: GPUs expected")
    assert "DLRM_DIST_EXPECT_GPUS=8" in line and torch.__version__ in line
    assert (f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build") in line
    assert "dist.device=cpu" in line


@needs_no_cuda
def test_device_cuda_without_cuda_is_a_user_error_not_a_traceback():
    proc = _train("dist.device=cuda", env={})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert "dist.device=cuda: CUDA requested but torch" in line


@needs_no_cuda
@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a driver is installed: GPUs are expected")
@pytest.mark.parametrize("device,expect_gpus", [("auto", ""), ("cpu", "8")])
def test_cpu_ranks_when_nothing_expects_a_gpu_or_cpu_is_asked(device, expect_gpus):
    """auto with no driver and no --gpu, or dist.device=cpu even under --gpu: gloo on the CPU."""
    code = ("from dlrm_dist.config import DistConfig\n"
            "from dlrm_dist.training.distributed import init_distributed, teardown\n"
            f"env = init_distributed(DistConfig(device={device!r}))\n"
            "print(env.device, env.backend)\nteardown()\n")
    env = {"DLRM_DIST_EXPECT_GPUS": expect_gpus}
    proc = run_cmd([sys.executable, "-c", code], timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["cpu", "gloo"]


def test_old_driver_is_named_with_the_cuda_it_cannot_run():
    driver = parse_nvidia_smi(SMI_535)
    message = cuda_problem("auto", 0, TORCH_CU130_NO_DRIVER, 8, "nvidia-smi lists 8 GPU(s)", driver)
    assert "GPUs expected (nvidia-smi lists 8 GPU(s))" in message
    assert "torch 2.14.1+cu130 (built for CUDA 13.0) cannot use CUDA" in message
    assert "driver 535.104.05 is too old for CUDA 13.0 (needs R580+)" in message


def test_cpu_torch_on_a_gpu_host_is_named():
    cpu_torch = TorchCuda("2.14.1+cpu", None, available=False, device_count=0)
    message = cuda_problem("auto", 0, cpu_torch, 8, "nvidia-smi lists 8 GPU(s)", parse_nvidia_smi(SMI_580))
    assert "a CPU-only build" in message and "install the CUDA build of torch" in message


def test_which_rank_may_start():
    eight = TorchCuda("2.14.1", "13.0", available=True, device_count=8)
    assert cuda_problem("auto", 7, eight, 8, "") is None
    assert cuda_problem("cuda", 0, eight, 0, "") is None
    assert "local rank 8 has no GPU of its own" in cuda_problem("auto", 8, eight, 8, "")
    # nothing expects a GPU: auto means CPU; cpu is always allowed; cuda never without CUDA
    assert cuda_problem("auto", 0, TORCH_CU130_NO_DRIVER, 0, "") is None
    assert cuda_problem("cpu", 0, TORCH_CU130_NO_DRIVER, 8, "the launcher asked for 8") is None
    assert cuda_problem("cuda", 0, TORCH_CU130_NO_DRIVER, 0, "").startswith("dist.device=cuda: CUDA requested")


@needs_no_cuda
def test_first_rank_of_another_host_says_it_too():
    """Rank 2 = local rank 0 of a second host meets the problem before any process group: the
    entry point reports from rank 0 only, so this host's first rank prints its own line."""
    proc = run_cmd([sys.executable, "-m", "dlrm_dist.train", "--config", "configs/smoke.yaml"], timeout=300,
                   env={"DLRM_DIST_EXPECT_GPUS": "8", "RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0",
                        "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("dlrm-dist train: error: ") and ": dist.device=auto: GPUs expected" in line


@needs_no_cuda
def test_collectives_ranks_run_the_same_device_check():
    """doctor --collectives joins its ranks as training does: dist.device=cuda here is refused."""
    from dlrm_dist.core.errors import UserError
    from dlrm_dist.hardware.collectives import measure

    with pytest.raises(UserError, match="dist.device=cuda: CUDA requested"):
        measure(world=2, nbytes=1 << 16, device="cuda", timeout_s=120)
