"""``dlrm-dist doctor``: is this node ready for a job? What an infrastructure engineer
runs on a new node (or in a job's first step) before booking it for training.

    dlrm-dist doctor [--dir /ckpt --dir /data ...] [--collectives] [--expect-gpus N] [--json OUT]

One line per fact with a verdict: ``ok``, ``warn`` (works, but slower or fragile),
``FAIL`` (a job would not start or would die). Exit code 0 when nothing FAILs, 1
otherwise. The facts: torch / FBGEMM / TorchRec / torchx versions and variants and
whether they agree (dlrm_dist.hardware.stack); GPUs the driver lists vs those torch
can use, driver and CUDA versions, NCCL; host RAM and the memory limit this process
has (cgroup); /dev/shm; the open-files limit; whether each ``--dir`` is writable;
with ``--collectives``, all_reduce and all_to_all over local ranks on the backend
training would pick, with their bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import psutil

from dlrm_dist.hardware import host
from dlrm_dist.hardware.stack import installed, load_problem, problems

if TYPE_CHECKING:
    from dlrm_dist.training.distributed import TorchCuda

OK, WARN, FAIL = "ok", "warn", "FAIL"
MIN_SHM_BYTES = 1 << 30
"""DataLoader workers hand batches over in /dev/shm and NCCL puts its intra-node buffers
there: a container's default 64 MB fails both ("unable to write to file </torch_...>",
NCCL "Error while creating shared memory segment")."""
MIN_OPEN_FILES = 4096
"""DataLoader workers share tensors as file descriptors (torch's default strategy):
1024 runs out with a few workers and prefetching ("Too many open files")."""
PINS = Path(__file__).resolve().parents[2] / "requirements" / "stack.txt"


@dataclass
class Check:
    name: str
    verdict: str
    detail: str


def _pins() -> dict:
    """requirements/stack.txt of a checkout (absent from an installed wheel: no pin check)."""
    if not PINS.exists():
        return {}
    return dict(line.split("=", 1) for line in PINS.read_text().splitlines() if "=" in line and line[:1] != "#")


def stack_checks(gpus_on_host: int) -> List[Check]:
    """Versions and variants, then one verdict on whether they agree with each other and this host."""
    stack, pins = installed(), _pins()
    build = f"CUDA {stack.torch_cuda} build" if stack.torch_cuda else "CPU build"
    fbgemm = ", ".join(f"{d} {v}" for d, v in sorted(stack.fbgemm.items())) or "not installed"
    out = [Check("torch", OK, f"{stack.torch_version} ({build})"),
           Check("fbgemm", OK, f"{fbgemm} (variant {stack.fbgemm_variant or '?'})"),
           Check("torchrec", OK if stack.torchrec else FAIL, stack.torchrec or "not installed"),
           Check("torchx", OK if stack.torchx else WARN, stack.torchx or "not installed (launching needs it)")]
    found = problems(stack, gpus_on_host, pins.get("TORCH_VERSION", ""), pins.get("FBGEMM_VERSION", ""))
    found = found or [p for p in [load_problem(stack, gpus_on_host)] if p]
    out.append(Check("stack", FAIL if found else OK, "; ".join(found) or "torch and fbgemm agree with each "
                     "other" + (" and requirements/stack.txt" if pins else "") + " and this host"))
    return out


def _expect_env(expect: Optional[int]) -> dict:
    """The environment, with ``--expect-gpus`` standing in for the launcher's variable."""
    return dict(os.environ, **({host.EXPECT_GPUS_ENV: str(expect)} if expect is not None else {}))


def gpu_checks(expect: Optional[int]) -> List[Check]:
    """The facts of this node, judged by :func:`gpu_lines`."""
    import torch

    from dlrm_dist.training.distributed import TorchCuda

    driver, tc = host.driver_gpus(), TorchCuda.here()
    expected, why = host.expected_gpus(_expect_env(expect), driver)
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if tc.cuda and (driver.count or tc.available) else ""
    return gpu_lines(expected, why, tc, driver, nccl, host.launcher_gpus(_expect_env(expect)))


def gpu_lines(expected: int, why: str, tc: "TorchCuda", driver: host.DriverGpus, nccl: str,
              granted: int = 0) -> List[Check]:
    """The driver's GPUs against torch's (the check training runs), driver vs CUDA, NCCL.
    ``granted``: GPUs the launcher (or --expect-gpus) says the job has: torch must see
    them all; fewer than the driver lists is only a warning (CUDA_VISIBLE_DEVICES).
    Fed the facts (a GPU node's can be given as values on a CPU machine)."""
    from dlrm_dist.training.distributed import cuda_problem

    problem = cuda_problem("auto", 0, tc, expected, why, driver)
    listed = f"{driver.count} x {driver.names[0]}" if driver.count else driver.error or "none"
    if problem:
        out = [Check("gpus", FAIL, problem)]
    elif tc.available and granted > tc.device_count:
        out = [Check("gpus", FAIL, f"{why}, but {tc.describe()} (CUDA_VISIBLE_DEVICES, or the job's grant)")]
    elif tc.available and driver.count and tc.device_count != driver.count:
        out = [Check("gpus", WARN, f"driver lists {listed}; {tc.describe()} (CUDA_VISIBLE_DEVICES hides some)")]
    elif tc.available:
        out = [Check("gpus", OK, f"driver lists {listed}; {tc.describe()}")]
    else:
        out = [Check("gpus", OK, f"CPU node ({listed}; no GPU expected): jobs run CPU ranks over gloo; "
                                 f"{tc.describe()}")]
    if driver.count or tc.available:
        need = host.driver_too_old(driver.driver, tc.cuda)
        out.append(Check("driver/cuda", FAIL if need else OK,
                         f"driver {driver.driver or '?'}, torch built for CUDA {tc.cuda or 'none (CPU build)'}"
                         + (f": too old, CUDA {tc.cuda} needs R{need}+" if need else "")))
        out.append(Check("nccl", OK if nccl else FAIL, nccl or "none: torch is a CPU build"))
    return out


def memory_checks(gpus: int) -> List[Check]:
    """RAM and the limit this process has, against the floor of a node's ranks before any table."""
    from dlrm_dist.planner.capacity import CPU_PROCESS_BYTES, CUDA_PROCESS_HOST_BYTES

    vm, cg = psutil.virtual_memory(), host.this_cgroup_memory()
    available, _ = host.available_memory(vm.available, cg)
    floor = gpus * CUDA_PROCESS_HOST_BYTES if gpus else 2 * CPU_PROCESS_BYTES
    limit = (f"cgroup v{cg.version} {cg.limit_file}: {cg.limit / 2**30:.2f} GiB" if cg and cg.limit is not None
             else "no cgroup memory limit")
    who = f"{gpus} CUDA rank(s)" if gpus else "2 CPU ranks"
    return [Check("host RAM", OK, f"{vm.total / 2**30:.1f} GiB, {vm.available / 2**30:.1f} GiB available"),
            Check("memory limit", OK if available >= floor else FAIL,
                  f"{limit}; {available / 2**30:.2f} GiB usable now; {who} need >= {floor / 2**30:.1f} GiB "
                  f"before their tables (`dlrm-dist plan` for a job)")]


def limit_checks() -> List[Check]:
    shm, (soft, hard) = host.shm_bytes(), host.open_files_limit()
    shm_ok = shm is not None and shm >= MIN_SHM_BYTES
    shm_text = "missing" if shm is None else f"{shm / 2**30:.2f} GiB"
    return [Check("/dev/shm", OK if shm_ok else FAIL, shm_text + ("" if shm_ok else
                  " (DataLoader workers and NCCL need >= 1 GiB: docker --shm-size, a Memory emptyDir on k8s)")),
            Check("open files", OK if soft >= MIN_OPEN_FILES else WARN, f"soft {soft}, hard {hard}" + (
                "" if soft >= MIN_OPEN_FILES else f" (< {MIN_OPEN_FILES}: `ulimit -n {min(hard, 65536)}`)"))]


def dir_checks(dirs: List[str]) -> List[Check]:
    out = []
    for d in dirs:
        ok, detail = host.writable(d)
        out.append(Check(f"writable {d}", OK if ok else FAIL, detail))
    return out


def collective_checks(nbytes: int) -> List[Check]:
    """all_reduce and all_to_all over 2 local ranks, joined as training joins (one per GPU:
    a node with a single GPU has no peer to measure against)."""
    from dlrm_dist.core.errors import UserError
    from dlrm_dist.hardware.collectives import measure
    from dlrm_dist.training.distributed import TorchCuda

    tc = TorchCuda.here()
    if tc.available and tc.device_count < 2:
        return [Check("collectives", OK, f"{tc.describe()}: no second GPU to measure against")]

    try:
        rows = measure(world=2, nbytes=nbytes)
    except (UserError, RuntimeError) as e:
        return [Check("collectives", FAIL, str(e))]
    return [Check(m.op, OK, f"{m.backend} on {m.device}, {m.world_size} ranks, {m.bytes_per_rank / 2**20:g} MiB: "
                  f"{m.algbw_gb_per_s:.2f} GB/s (bus {m.busbw_gb_per_s:.2f} GB/s), {m.seconds * 1e3:.2f} ms")
            for m in rows]


def run_checks(args: argparse.Namespace) -> List[Check]:
    driver_count = host.driver_gpus().count
    checks = stack_checks(driver_count)
    checks += gpu_checks(args.expect_gpus)
    expected, _ = host.expected_gpus(_expect_env(args.expect_gpus), None)
    checks += memory_checks(expected or driver_count)
    checks += limit_checks() + dir_checks(args.dir)
    if args.collectives:
        checks += collective_checks(args.collective_mb << 20)
    return checks


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dlrm-dist doctor", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", action="append", default=[], help="a directory jobs write (checkpoints, runs, data), created if missing: "
                   "must be writable; repeat for several")
    p.add_argument("--collectives", action="store_true", help="time all_reduce and all_to_all over 2 local ranks")
    p.add_argument("--collective-mb", type=int, default=4, help="MiB per rank for --collectives (default 4)")
    p.add_argument("--expect-gpus", type=int, default=None,
                   help=f"GPUs this node must give jobs (default: {host.EXPECT_GPUS_ENV}, else what nvidia-smi lists)")
    p.add_argument("--json", default=None, help="also write the checks as JSON to this file")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    checks = run_checks(args)
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.verdict:<4}  {c.name:<{width}}  {c.detail}")
    failed = [c.name for c in checks if c.verdict == FAIL]
    print(f"\n{'not ready: ' + ', '.join(failed) if failed else 'ready'} ({len(checks)} checks)")
    if args.json:
        Path(args.json).write_text(json.dumps({"ready": not failed, "checks": [asdict(c) for c in checks]}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
