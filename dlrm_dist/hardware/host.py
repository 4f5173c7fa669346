"""Facts read off this host: the GPUs its driver sees, the memory the process may use,
``/dev/shm``, the open-files limit.

Torch-free, so ``dlrm-dist doctor`` and the launch-time checks can read them before
(or without) importing torch. Each reader comes in two halves: a parser fed the text
the system printed or the file held (what the tests pass, real strings and files),
and a thin function that reads it here.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import psutil

EXPECT_GPUS_ENV = "DLRM_DIST_EXPECT_GPUS"
"""GPUs per node the launcher was asked for (launchers/dlrm.py:train ``--gpu``)."""

NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total",
                    "--format=csv,noheader,nounits"]

MIN_DRIVER = {11: 450, 12: 525, 13: 580}
"""Oldest NVIDIA driver series (Linux) each CUDA major runs on, minor-version compatibility
included (NVIDIA's CUDA toolkit release notes): torch's CUDA 13.0 builds need R580+."""

V1_UNLIMITED = 2**62
"""cgroup v1 writes "no limit" as a page-rounded 2**63 - 1; anything above this is none."""


# ---- GPUs the driver sees -------------------------------------------------- #


@dataclass(frozen=True)
class DriverGpus:
    """What ``nvidia-smi`` reported: GPU names (index order), driver version; or why nothing."""

    names: List[str] = field(default_factory=list)
    driver: str = ""
    memory_mib: List[int] = field(default_factory=list)
    error: str = ""

    @property
    def count(self) -> int:
        return len(self.names)


def parse_nvidia_smi(text: str) -> DriverGpus:
    """Parse ``nvidia-smi --query-gpu=index,name,driver_version,memory.total
    --format=csv,noheader,nounits`` (one GPU a line: ``0, NVIDIA H100 80GB HBM3, 580.65.06, 81559``)."""
    names, mem, driver = [], [], ""
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        names.append(parts[1])
        driver = parts[2]
        mem.append(int(parts[3]) if parts[3].isdigit() else 0)
    return DriverGpus(names, driver, mem)


def driver_gpus(timeout_s: float = 20.0) -> DriverGpus:
    """The GPUs this host's NVIDIA driver sees (and this process may use: nvidia-smi
    honours the cgroup's device list); empty with the reason when there is no driver."""
    if shutil.which("nvidia-smi") is None:
        return DriverGpus(error="nvidia-smi not found (no NVIDIA driver)")
    try:
        proc = subprocess.run(NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        return DriverGpus(error=f"nvidia-smi failed: {e}")
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return DriverGpus(error=f"nvidia-smi: {last[0]}")
    return parse_nvidia_smi(proc.stdout)


def min_driver(cuda_version: str) -> Optional[int]:
    """Oldest driver series for a CUDA version string such as "13.0"; None if unknown."""
    major = cuda_version.split(".")[0]
    return MIN_DRIVER.get(int(major)) if major.isdigit() else None


def driver_too_old(driver_version: str, torch_cuda: Optional[str]) -> Optional[int]:
    """The driver series torch's CUDA needs when ``driver_version`` is older, else None."""
    need = min_driver(torch_cuda) if torch_cuda else None
    major = driver_version.split(".")[0]
    return need if need and major.isdigit() and int(major) < need else None


def launcher_gpus(environ: Dict[str, str]) -> int:
    """GPUs per node the launcher was asked for (DLRM_DIST_EXPECT_GPUS), 0 when it did not say."""
    told = environ.get(EXPECT_GPUS_ENV, "").strip()
    return int(told) if told.isdigit() else 0


def expected_gpus(environ: Dict[str, str], driver: Optional[DriverGpus]) -> Tuple[int, str]:
    """(GPUs this node should use, why): the launcher's ``--gpu`` when it set
    DLRM_DIST_EXPECT_GPUS, else what the driver lists; (0, "") when nothing expects one."""
    told = str(launcher_gpus(environ))
    if int(told) > 0:
        return int(told), f"the launcher asked for {told} GPU(s) per node ({EXPECT_GPUS_ENV}={told})"
    if driver is not None and driver.count:
        return driver.count, (f"nvidia-smi lists {driver.count} GPU(s) ({driver.names[0]}, "
                              f"driver {driver.driver})")
    return 0, ""


# ---- the memory this process may use --------------------------------------- #


@dataclass(frozen=True)
class CgroupMemory:
    """The memory cgroup this process is charged to: its limit and working set (bytes)."""

    version: int
    path: str  # the cgroup, as /proc/self/cgroup names it
    limit_file: str
    limit: Optional[int]  # None: no limit
    usage: int = 0
    inactive_file: int = 0

    @property
    def available(self) -> Optional[int]:
        """The limit less the working set (usage less reclaimable page cache, what
        the kubelet and the OOM killer count); None when there is no limit."""
        if self.limit is None:
            return None
        return max(0, self.limit - max(0, self.usage - self.inactive_file))


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat_field(path: Path, names: Tuple[str, ...]) -> int:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    stats = dict(line.split(None, 1) for line in lines if " " in line)
    return next((int(stats[n]) for n in names if n in stats), 0)


def cgroup_memory(proc_self_cgroup: str, root: Path = Path("/sys/fs/cgroup")) -> Optional[CgroupMemory]:
    """The memory cgroup level, this process's or an ancestor's, with the least room left.

    ``proc_self_cgroup`` is the text of /proc/self/cgroup; ``root`` where the
    hierarchy is mounted. v2 (``0::/path``): ``memory.max`` ("max" = none),
    ``memory.current``, ``memory.stat`` inactive_file. v1 (``N:memory:/path`` under
    ``root/memory``): ``memory.limit_in_bytes``, ``memory.usage_in_bytes``. Hand-
    written: psutil reports the machine's RAM, not the cgroup's. None when no
    memory cgroup is found here."""
    entries = [line.split(":", 2) for line in proc_self_cgroup.strip().splitlines() if line.count(":") >= 2]
    v1 = next((e[2] for e in entries if "memory" in e[1].split(",")), None)
    if v1 is not None and (root / "memory").is_dir():
        version, base, files = 1, root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")
        rel, inactive = v1, ("total_inactive_file", "inactive_file")
    else:
        v2 = next((e[2] for e in entries if e[0] == "0" and e[1] == ""), None)
        if v2 is None:
            return None
        version, base, files = 2, root, ("memory.max", "memory.current")
        rel, inactive = v2, ("inactive_file",)
    best: Optional[CgroupMemory] = None
    rel_parts = [p for p in rel.strip("/").split("/") if p]
    # In a container (cgroup namespace) the own cgroup is mounted at the root itself.
    for depth in range(len(rel_parts), -1, -1):
        d = base.joinpath(*rel_parts[:depth])
        limit = _read_int(d / files[0])
        if limit is None and not (d / files[0]).exists():
            continue
        found = CgroupMemory(version, "/" + "/".join(rel_parts[:depth]), str(d / files[0]),
                             limit if limit is not None and limit < V1_UNLIMITED else None,
                             _read_int(d / files[1]) or 0, _stat_field(d / "memory.stat", inactive))
        # The level with the least room left binds (a parent may be full of siblings).
        if best is None or (found.available is not None and (best.available is None
                                                             or found.available < best.available)):
            best = found
    return best


def this_cgroup_memory() -> Optional[CgroupMemory]:
    try:
        return cgroup_memory(Path("/proc/self/cgroup").read_text())
    except OSError:
        return None


def available_memory(ram_available: int, cgroup: Optional[CgroupMemory]) -> Tuple[int, str]:
    """(bytes this process can still allocate, where that figure comes from): the
    machine's available RAM, or the cgroup's room under its limit when smaller."""
    ram = f"host RAM available (psutil), {ram_available / 2**30:.2f} GiB"
    if cgroup is None or cgroup.available is None:
        return ram_available, ram + " (no cgroup memory limit)"
    if cgroup.available < ram_available:
        return cgroup.available, (f"cgroup v{cgroup.version} limit {cgroup.limit_file} = "
                                  f"{cgroup.limit / 2**30:.2f} GiB, {cgroup.available / 2**30:.2f} GiB "
                                  f"of it free")
    return ram_available, ram + f" (below the cgroup limit {cgroup.limit_file})"


def this_available_memory() -> Tuple[int, str]:
    return available_memory(psutil.virtual_memory().available, this_cgroup_memory())


# ---- other limits a job runs into ------------------------------------------ #


def shm_bytes(path: str = "/dev/shm") -> Optional[int]:
    """Size of the shared-memory filesystem DataLoader workers and NCCL use (a
    container's default 64 MB breaks both); None when it is missing."""
    try:
        return shutil.disk_usage(path).total
    except OSError:
        return None


def open_files_limit() -> Tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE: DataLoader workers pass tensors as file descriptors."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def writable(path: str) -> Tuple[bool, str]:
    """Can this process create a file in ``path`` (created if missing)? Tried for real:
    permissions alone miss read-only mounts and full quotas."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".dlrm-dist-doctor-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        return False, f"{e.strerror or e}"
    free = shutil.disk_usage(p).free
    return True, f"{free / 2**30:.1f} GiB free"
