"""Handles to the two-node Slurm cluster of ``launchers/local_slurm.sh`` (see conftest.py).

The cluster needs root (network namespaces, daemons) and the Debian packages
slurm-wlm, munge, slurmdbd and mariadb-server (``.ci/run`` installs them when
root). Elsewhere the tests skip and say why. A cluster that is already up (a
developer's ``local_slurm.sh up``) is used as it is and left up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launchers" / "local_slurm.sh"
STATE = Path(os.environ.get("DLRM_SLURM_STATE", "/run/dlrm-slurm"))
NODES = ["dlrm-n1", "dlrm-n2"]
NODE_IPS = {"dlrm-n1": "10.213.77.11", "dlrm-n2": "10.213.77.12"}  # launchers/local_slurm.sh: $NET.11, $NET.12
TOOLS = ["slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch", "sacct", "nsenter", "unshare", "ip",
         "tc"]

# A TCP receiver: listens on port 0 of the given address, prints the port, then after one
# sender hung up prints {"bytes", "seconds"} counted from its first byte to its last.
_RECEIVER = """
import json, socket, sys, time
srv = socket.create_server((sys.argv[1], 0)); print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept(); n, t0 = 0, None
while True:
    chunk = conn.recv(1 << 20)
    if not chunk: break
    t0 = t0 or time.monotonic(); n += len(chunk)
print(json.dumps({"bytes": n, "seconds": time.monotonic() - t0}), flush=True)
"""
# A TCP sender: sends zeros to (host, port) for the given seconds, then closes.
_SENDER = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2]))); buf = bytes(1 << 16)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end: s.sendall(buf)
s.close()
"""


def in_node(node: str, argv: List[str]) -> List[str]:
    """``argv`` run in ``node``'s network namespace (nsenter, as local_slurm.sh starts slurmd)."""
    return ["nsenter", f"--net=/run/netns/{node}", "--", *argv]


def transfer_mbit(src: str, dst: str, seconds: float = 3.0) -> float:
    """Mbit/s of one TCP stream from node ``src`` to node ``dst`` over the cluster's bridge,
    as the receiver counts it (a plain socket transfer: iperf3 is not needed)."""
    recv = subprocess.Popen(in_node(dst, [sys.executable, "-c", _RECEIVER, NODE_IPS[dst]]),
                            stdout=subprocess.PIPE, text=True)
    try:
        port = recv.stdout.readline().strip()
        subprocess.run(in_node(src, [sys.executable, "-c", _SENDER, NODE_IPS[dst], port, str(seconds)]),
                       check=True, timeout=seconds + 60)
        got = json.loads(recv.stdout.readline())
    finally:
        if recv.poll() is None:
            recv.kill()
        recv.wait()
    return got["bytes"] * 8 / got["seconds"] / 1e6


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
