"""What every benchmark records beside its figures, and where results go.

* ``machine_name``: a short name for ``benchmarks/results/<machine>/`` from the
  device and core count (``cpu-2core``, ``h100x8``), unless ``--machine`` says.
* ``environment``: versions (torch, fbgemm_gpu, torchrec), device, cores, load.
* ``write_json``: atomically, so a killed benchmark never leaves a half file.
* ``pyplot``: matplotlib with the Agg backend (no display on CI or clusters).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def device_kind() -> str:
    """"cuda" when a GPU is there, else "cpu": the same rule as dist.device=auto."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def machine_name(override: Optional[str] = None) -> str:
    if override:
        return override
    import torch

    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0).lower().replace("nvidia", "").strip().split()
        short = next((w for w in gpu if any(c.isdigit() for c in w)), gpu[0] if gpu else "gpu")
        return f"{short}x{torch.cuda.device_count()}"
    return f"cpu-{_cores()}core"


def _version(dist_name: str) -> Optional[str]:
    for name in (dist_name, f"{dist_name}-cpu", f"{dist_name}_cpu"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def environment() -> Dict[str, Any]:
    import torch

    env: Dict[str, Any] = {
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "fbgemm_gpu": _version("fbgemm_gpu") or _version("fbgemm-gpu"),
            "torchrec": _version("torchrec"),
        },
        "device": device_kind(),
        "cpu_cores": _cores(),
        "cpu_model": platform.processor() or platform.machine(),
        "load_average_1_5_15": list(os.getloadavg()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpus"] = torch.cuda.device_count()
    return env


def write_json(path: Path, payload: Dict[str, Any]) -> None:
    from dlrm_dist.core.files import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def relaunch_under_torchrun(script: str, nproc: int, argv: List[str]) -> int:
    """Run ``script argv`` as ``nproc`` local ranks under torchrun (rendezvous on a free
    port); the ranks find RANK in their environment and do the work."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(Path(script).resolve()), *argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def default_nproc() -> int:
    """Local ranks of a benchmark: every GPU on CUDA, 2 on CPU."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 2
