"""Handles to the two-node Slurm cluster of ``launchers/local_slurm.sh`` (see conftest.py).

The cluster needs root (network namespaces, daemons) and the Debian packages
slurm-wlm, munge, slurmdbd and mariadb-server (``.ci/run`` installs them when
root). Elsewhere the tests skip and say why. A cluster that is already up (a
developer's ``local_slurm.sh up``) is used as it is and left up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launchers" / "local_slurm.sh"
STATE = Path(os.environ.get("DLRM_SLURM_STATE", "/run/dlrm-slurm"))
NODES = ["dlrm-n1", "dlrm-n2"]
TOOLS = ["slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch", "sacct", "nsenter", "unshare", "ip"]


def why_not() -> str:
    if os.name != "posix" or os.geteuid() != 0:
        return "the local Slurm cluster needs root (network namespaces, daemons)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return (f"missing {' '.join(missing)}: apt-get install -y slurm-wlm munge slurmdbd mariadb-server "
                "(.ci/run does it when root)")
    return ""


class Cluster:
    """Handles to the running cluster: its environment, and ways to hurt it."""

    def __init__(self, env: Dict[str, str]):
        self.env = env

    def run(self, args: List[str], timeout: float = 600, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout)

    def node_pids(self, node: str) -> List[int]:
        """Every process in ``node``'s network namespace (slurmd, job steps, ranks)."""
        want = os.stat(f"/run/netns/{node}").st_ino
        pids = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if os.stat(p / "ns" / "net").st_ino == want:
                        pids.append(int(p.name))
                except OSError:
                    pass
        return pids

    def rank_pids(self, node: str) -> List[int]:
        """The training ranks on ``node``: torchrun starts them as ``python -u -m dlrm_dist.train``."""
        found = []
        for pid in self.node_pids(node):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[1:4] == [b"-u", b"-m", b"dlrm_dist.train"]:
                found.append(pid)
        return found

    def up(self) -> None:
        proc = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
