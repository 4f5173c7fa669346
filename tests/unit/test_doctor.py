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
