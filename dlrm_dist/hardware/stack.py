"""What is installed: torch's build, FBGEMM's variant, and whether they agree with each
other and with this host.

FBGEMM comes as two distributions that install the same ``fbgemm_gpu`` folder:
``fbgemm-gpu`` (CUDA) and ``fbgemm-gpu-cpu``. A virtualenv built on one kind of
host and reused on the other ends up with the wrong one, or both (the last one
installed overwrote the other's files), and a ``torch==X`` pin is satisfied by
``X+cpu``, so a venv first built on a CPU host keeps its CPU torch on a GPU host.
Nothing fails at install time; the job later trains on the CPU or cannot import
fbgemm. ``make install`` runs this module to stop there instead:

    python -m dlrm_dist.hardware.stack [--torch 2.14.1] [--fbgemm 1.9.0]

exit 0 when the stack is consistent, else one line per problem saying how to fix
it, exit 2. Allowed: torch's CUDA build with fbgemm-gpu-cpu on a host without a
driver (it runs CPU-only). Refused: fbgemm-gpu with a CPU torch, CUDA majors that
differ, both variants at once, and a GPU host with a CPU torch or fbgemm-gpu-cpu.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from dlrm_dist.core.errors import EXIT_USER_ERROR

FBGEMM_DISTS = {"fbgemm-gpu": "cuda", "fbgemm-gpu-cpu": "cpu"}
REINSTALL = "rm -rf .venv && make install"


@dataclass(frozen=True)
class Stack:
    """The installed versions and variants (facts; :func:`installed` reads them here)."""

    torch_version: str  # torch.__version__: 2.14.1, 2.14.1+cpu, 2.14.1+cu130
    torch_cuda: Optional[str]  # torch.version.cuda: "13.0"; None for a CPU-only build
    fbgemm: Dict[str, str] = field(default_factory=dict)  # installed distribution -> version
    fbgemm_variant: str = ""  # what fbgemm_gpu's own target file says: cpu | cuda | rocm
    torchrec: str = ""
    torchx: str = ""

    @property
    def fbgemm_cuda(self) -> Optional[str]:
        """The CUDA version fbgemm-gpu was built for when its version says (1.9.0+cu130 -> 13.0)."""
        version = self.fbgemm.get("fbgemm-gpu", "")
        tag = version.partition("+")[2]
        if tag.startswith("cu") and tag[2:].isdigit() and len(tag) >= 4:
            return f"{tag[2:-1]}.{tag[-1]}"
        return None

    @property
    def fbgemm_kind(self) -> str:
        """cuda | cpu | both | none, from the installed distributions."""
        kinds = {FBGEMM_DISTS[d] for d in self.fbgemm if d in FBGEMM_DISTS}
        return "both" if len(kinds) > 1 else (kinds.pop() if kinds else "none")

    def describe(self) -> str:
        build = f"CUDA {self.torch_cuda} build" if self.torch_cuda else "CPU build"
        fb = ", ".join(f"{d} {v}" for d, v in sorted(self.fbgemm.items())) or "no fbgemm"
        return f"torch {self.torch_version} ({build}), {fb}"


def _major(version: str) -> str:
    return version.split(".")[0]


def problems(stack: Stack, gpus_on_host: int, torch_pin: str = "", fbgemm_pin: str = "") -> List[str]:
    """Every way ``stack`` cannot run here, each with the command that fixes it.
    ``gpus_on_host``: GPUs the driver lists (nvidia-smi); pins from requirements/stack.txt."""
    out = []
    kind = stack.fbgemm_kind
    if kind == "none":
        out.append(f"fbgemm is not installed: {REINSTALL}")
    elif kind == "both":
        out.append("both fbgemm-gpu and fbgemm-gpu-cpu are installed (one overwrote the other's fbgemm_gpu "
                   "folder): .venv/bin/pip uninstall -y fbgemm-gpu fbgemm-gpu-cpu && make install")
    elif kind == "cuda" and not stack.torch_cuda:
        out.append(f"fbgemm-gpu (the CUDA build) with torch {stack.torch_version}, a CPU build: "
                   f"{REINSTALL} (a GPU host gets both CUDA builds, a CPU host fbgemm-gpu-cpu)")
    elif kind == "cuda" and stack.fbgemm_cuda and _major(stack.fbgemm_cuda) != _major(stack.torch_cuda or ""):
        out.append(f"fbgemm-gpu is built for CUDA {stack.fbgemm_cuda} but torch for CUDA {stack.torch_cuda}: "
                   f"install both from the same CUDA index ({REINSTALL})")
    elif stack.fbgemm_variant and stack.fbgemm_variant != kind:
        dist = next(iter(stack.fbgemm))
        out.append(f"{dist} is installed but its fbgemm_gpu folder holds the {stack.fbgemm_variant} build "
                   f"(overwritten by the other variant): .venv/bin/pip install --force-reinstall --no-deps "
                   f"{dist}=={stack.fbgemm[dist]}")
    if gpus_on_host and (not stack.torch_cuda or kind == "cpu"):
        what = f"torch {stack.torch_version} (CPU build)" if not stack.torch_cuda else "fbgemm-gpu-cpu"
        out.append(f"this host's driver lists {gpus_on_host} GPU(s) but the virtualenv has {what}, so jobs would "
                   f"train on the CPU: {REINSTALL} (a `torch==X` pin is satisfied by X+cpu, so pip alone keeps it)")
    if torch_pin and stack.torch_version.split("+")[0] != torch_pin:
        out.append(f"torch {stack.torch_version} but requirements/stack.txt pins {torch_pin}: {REINSTALL}")
    fb_version = next(iter(stack.fbgemm.values()), "") if kind in ("cpu", "cuda") else ""
    if fbgemm_pin and fb_version and fb_version.split("+")[0] != fbgemm_pin:
        out.append(f"fbgemm {fb_version} but requirements/stack.txt pins {fbgemm_pin} (ABI-locked to torch): "
                   f"{REINSTALL}")
    return out


def _dist_version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return ""


def fbgemm_variant() -> str:
    """The variant fbgemm_gpu's own build file names, read without importing it (the CUDA
    build links libnvidia-ml and cannot be imported on a host without the driver)."""
    spec = importlib.util.find_spec("fbgemm_gpu")
    if spec is None or not spec.submodule_search_locations:
        return ""
    target = Path(list(spec.submodule_search_locations)[0]) / "docs" / "target.default.json.py"
    try:
        return str(json.loads(target.read_text()).get("variant", ""))
    except (OSError, ValueError):
        return ""


def installed() -> Stack:
    """This interpreter's stack (imports torch; fbgemm only by its metadata)."""
    import torch

    fbgemm = {d: v for d in FBGEMM_DISTS if (v := _dist_version(d))}
    return Stack(torch.__version__, torch.version.cuda, fbgemm, fbgemm_variant(),
                 _dist_version("torchrec"), _dist_version("torchx"))


def load_problem(stack: Stack, gpus_on_host: int) -> Optional[str]:
    """Import fbgemm_gpu for real where it must load (the CPU variant anywhere, the CUDA
    one where a driver is): an ABI mismatch with torch shows only here. None: it loads."""
    if stack.fbgemm_kind not in ("cpu", "cuda") or (stack.fbgemm_kind == "cuda" and not gpus_on_host):
        return None
    try:
        import fbgemm_gpu  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any load failure is the answer
        last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        return f"fbgemm_gpu does not load with torch {stack.torch_version}: {last}: {REINSTALL}"
    return None


def main(argv: Optional[List[str]] = None) -> int:
    from dlrm_dist.hardware.host import driver_gpus

    p = argparse.ArgumentParser(prog="python -m dlrm_dist.hardware.stack", description=__doc__.split("\n")[0])
    p.add_argument("--torch", default="", help="the pinned torch version (requirements/stack.txt)")
    p.add_argument("--fbgemm", default="", help="the pinned fbgemm version")
    args = p.parse_args(argv)
    stack, gpus = installed(), driver_gpus()
    found = problems(stack, gpus.count, args.torch, args.fbgemm)
    found += [p for p in [None if found else load_problem(stack, gpus.count)] if p]
    for problem in found:
        print(f"install check: {problem}", file=sys.stderr)
    if found:
        return EXIT_USER_ERROR
    host = f"{gpus.count} GPU(s), driver {gpus.driver}" if gpus.count else "no GPU"
    print(f"install check: {stack.describe()} on a host with {host}: consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
