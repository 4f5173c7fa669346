"""``dlrm-dist doctor`` on this node, for real (issue 15, section 3): exit 0 when a job
has what it needs, 1 otherwise, one verdict per fact."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cmd


def doctor(*args: str):
    return run_cmd([sys.executable, "-m", "dlrm_dist.cli", "doctor", *args], timeout=600)


def _checks(path: Path) -> dict:
    report = json.loads(path.read_text())
    return report["ready"], {c["name"]: c for c in report["checks"]}


def test_this_node_is_ready_and_measures_collectives(tmp_path: Path):
    out = tmp_path / "doctor.json"
    proc = doctor("--dir", str(tmp_path / "ckpt"), "--collectives", "--collective-mb", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.rstrip().endswith("checks)") and "\nready (" in proc.stdout
    ready, checks = _checks(out)
    assert ready
    for name in ("torch", "fbgemm", "torchrec", "torchx", "stack", "gpus", "host RAM", "memory limit",
                 "/dev/shm", "open files", f"writable {tmp_path / 'ckpt'}", "all_reduce", "all_to_all"):
        assert name in checks and checks[name]["verdict"] != "FAIL", (name, checks.get(name))
    assert checks["torch"]["detail"].startswith(torch.__version__)
    assert (tmp_path / "ckpt").is_dir()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    for op in ("all_reduce", "all_to_all"):
        detail = checks[op]["detail"]
        assert detail.startswith(f"{backend} on ") and "2 ranks, 1 MiB" in detail
        assert float(detail.split(": ")[1].split(" GB/s")[0]) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch can use CUDA on this host")
def test_gpus_expected_but_unusable_and_a_read_only_dir_fail(tmp_path: Path):
    out = tmp_path / "doctor.json"
    proc = doctor("--expect-gpus", "8", "--dir", "/proc/dlrm-doctor-cannot-write", "--json", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    failed = next(ln for ln in proc.stdout.splitlines() if ln.startswith("not ready: "))
    # (memory limit may fail too: 8 CUDA ranks need 20 GiB on this 24 GB box, whatever else runs)
    assert {"gpus", "writable /proc/dlrm-doctor-cannot-write"} <= set(failed[11:].split(" (")[0].split(", "))
    ready, checks = _checks(out)
    assert not ready and checks["gpus"]["verdict"] == "FAIL"
    assert "the launcher asked for 8 GPU(s)" in checks["gpus"]["detail"]
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    assert build in checks["gpus"]["detail"]
    # a node of 8 CUDA ranks needs 8 x 2.5 GiB before any table: this 24 GB box may or may not have it
    assert "8 CUDA rank(s) need >= 20.0 GiB" in checks["memory limit"]["detail"]


def test_cli_lists_doctor():
    proc = run_cmd([sys.executable, "-m", "dlrm_dist.cli", "--help"], timeout=60)
    assert proc.returncode == 0 and "  doctor " in proc.stdout


# A GPU node's facts, as nvidia-smi prints them and torch reports them (this machine has no GPU).
SMI = "".join(f"{i}, NVIDIA H100 80GB HBM3, {{driver}}, 81559\n" for i in range(8))


def _gpu_lines(driver_version: str, torch_sees: int, expect: int = 0):
    from dlrm_dist.hardware import host
    from dlrm_dist.hardware.doctor import gpu_lines
    from dlrm_dist.training.distributed import TorchCuda

    driver = host.parse_nvidia_smi(SMI.format(driver=driver_version))
    env = {host.EXPECT_GPUS_ENV: str(expect)} if expect else {}
    expected, why = host.expected_gpus(env, driver)
    tc = TorchCuda("2.14.1", "13.0", available=torch_sees > 0, device_count=torch_sees)
    return {c.name: (c.verdict, c.detail) for c in gpu_lines(expected, why, tc, driver, "2.30.7", expect)}


def test_gpu_node_verdicts_from_its_facts():
    ready = _gpu_lines("580.65.06", torch_sees=8)
    assert [v for v, _ in ready.values()] == ["ok", "ok", "ok"]
    assert ready["gpus"][1] == ("driver lists 8 x NVIDIA H100 80GB HBM3; "
                                "torch 2.14.1 (built for CUDA 13.0) sees 8 GPU(s)")
    assert ready["nccl"] == ("ok", "2.30.7")
    old = _gpu_lines("535.104.05", torch_sees=0)
    assert old["gpus"][0] == "FAIL" and "too old for CUDA 13.0 (needs R580+)" in old["gpus"][1]
    assert old["driver/cuda"] == ("FAIL", "driver 535.104.05, torch built for CUDA 13.0: "
                                          "too old, CUDA 13.0 needs R580+")
    hidden = _gpu_lines("580.65.06", torch_sees=4)
    assert hidden["gpus"][0] == "warn"  # CUDA_VISIBLE_DEVICES may mean it
    short = _gpu_lines("580.65.06", torch_sees=4, expect=8)
    assert short["gpus"][0] == "FAIL" and "asked for 8 GPU(s)" in short["gpus"][1] and "sees 4" in short["gpus"][1]
