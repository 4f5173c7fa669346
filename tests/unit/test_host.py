"""Host facts (dlrm_dist/hardware/host.py) read from real files laid out as the kernel
lays them out, and from this host's own cgroup; the host-memory check reads the limit
the process actually has (issue 15, section 1)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from dlrm_dist.hardware import host
from tests.conftest import run_cmd

GiB = 2**30


def _files(base: Path, files: dict) -> None:
    base.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (base / name).write_text(text)


def test_cgroup_v2_limit_of_a_slurm_step(tmp_path: Path) -> None:
    """v2: memory.max of the job's cgroup, the working set is memory.current less inactive_file."""
    job = tmp_path / "system.slice/slurmstepd.scope/job_42"
    _files(tmp_path, {"cgroup.controllers": "cpu memory\n"})
    _files(tmp_path / "system.slice", {"memory.max": "max\n", "memory.current": "1\n"})
    _files(job, {"memory.max": f"{50 * GiB}\n", "memory.current": f"{12 * GiB}\n",
                 "memory.stat": f"anon 1\nfile 2\ninactive_file {2 * GiB}\nactive_file 3\n"})
    _files(job / "step_0", {"memory.max": "max\n", "memory.current": "0\n"})
    cg = host.cgroup_memory("0::/system.slice/slurmstepd.scope/job_42/step_0\n", tmp_path)
    assert (cg.version, cg.limit, cg.path) == (2, 50 * GiB, "/system.slice/slurmstepd.scope/job_42")
    assert cg.available == 40 * GiB  # 50 - (12 - 2)
    avail, source = host.available_memory(100 * GiB, cg)
    assert avail == 40 * GiB and "memory.max = 50.00 GiB" in source and "job_42" in source
    # a machine with less free RAM than the cgroup's room: the RAM is the limit
    avail, source = host.available_memory(30 * GiB, cg)
    assert avail == 30 * GiB and source.startswith("host RAM available")


def test_cgroup_v2_in_a_container_and_v1_unlimited(tmp_path: Path) -> None:
    """A pod (cgroup namespace: its own cgroup is the mount's root), and v1's 'no limit'."""
    _files(tmp_path / "pod", {"cgroup.controllers": "memory\n", "memory.max": f"{9 * GiB}\n",
                              "memory.current": f"{GiB}\n"})
    assert host.cgroup_memory("0::/\n", tmp_path / "pod").available == 8 * GiB
    v1 = tmp_path / "v1"
    _files(v1 / "memory/user.slice", {"memory.limit_in_bytes": "9223372036854771712\n",
                                      "memory.usage_in_bytes": "5\n"})
    _files(v1 / "memory", {"memory.limit_in_bytes": "9223372036854771712\n"})
    cg = host.cgroup_memory("4:memory:/user.slice\n0::/\n", v1)
    assert cg.version == 1 and cg.limit is None and cg.available is None
    assert host.available_memory(7 * GiB, cg) == (7 * GiB, "host RAM available (psutil), 7.00 GiB "
                                                           "(no cgroup memory limit)")


def test_this_hosts_facts_read_without_error() -> None:
    avail, source = host.this_available_memory()
    assert avail > 0 and source
    assert host.open_files_limit()[0] > 0
    gpus = host.driver_gpus()
    assert gpus.count > 0 or gpus.error  # a listing, or why there is none


def _own_memory_cgroup() -> Path:
    """This process's v1 memory cgroup folder, if this host has one we can make children in."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    return Path("/nonexistent")


@pytest.mark.skipif(not os.access(_own_memory_cgroup(), os.W_OK), reason="needs a writable v1 memory cgroup (root)")
def test_host_memory_check_reads_the_cgroup_limit_it_runs_under(tmp_path: Path) -> None:
    """A real process in a real cgroup capped at 3 GiB: the check's available memory is
    under the cap (not the machine's RAM) and its message names the limit file."""
    cgroup = _own_memory_cgroup() / f"dlrm-test-{os.getpid()}"
    cgroup.mkdir()
    try:
        (cgroup / "memory.limit_in_bytes").write_text(str(3 * GiB))
        code = ("import sys\nfrom dlrm_dist.config import load_config\n"
                "from dlrm_dist.core.errors import CapacityError\n"
                "from dlrm_dist.planner.host_check import check_host_memory\n"
                "cfg = load_config('configs/smoke.yaml')\n"
                "needed, avail, source = check_host_memory(cfg, 1, 1, 'cpu')\nprint(avail, source)\n"
                "try:\n    check_host_memory(cfg, 64, 64, 'cpu')\n"
                "except CapacityError as e:\n    print(e)\n")
        script = f"echo $$ > {cgroup}/cgroup.procs && exec {sys.executable} -c \"$0\""
        proc = run_cmd(["bash", "-c", script, code], timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        first, second = proc.stdout.strip().splitlines()[-2:]
        avail = int(first.split()[0])
        assert 0 < avail < 3 * GiB and "memory.limit_in_bytes = 3.00 GiB" in first
        assert "not enough host memory" in second and str(cgroup / "memory.limit_in_bytes") in second
    finally:
        cgroup.rmdir()


def test_a_full_parent_binds_before_a_roomier_child(tmp_path: Path) -> None:
    """Slurm's job cgroup (64 GiB, 60 used by other steps) leaves less than the step's own 32 GiB."""
    _files(tmp_path, {"cgroup.controllers": "memory\n"})
    _files(tmp_path / "job", {"memory.max": f"{64 * GiB}\n", "memory.current": f"{60 * GiB}\n"})
    _files(tmp_path / "job/step", {"memory.max": f"{32 * GiB}\n", "memory.current": f"{GiB}\n"})
    cg = host.cgroup_memory("0::/job/step\n", tmp_path)
    assert (cg.path, cg.available) == ("/job", 4 * GiB)
