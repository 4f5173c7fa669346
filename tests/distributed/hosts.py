"""Run a function as a job of several *hosts*: one torchrun agent per host, meeting
through c10d rendezvous on 127.0.0.1, so LOCAL_WORLD_SIZE < WORLD_SIZE.

``spawn.run_on_ranks`` makes every rank local (LOCAL_WORLD_SIZE == WORLD_SIZE);
a real multi-host job differs in what TorchRec's planner and the hand-built
plans see (hosts, ranks per host) and in how torchrun agents agree on ranks.
Two agents on one machine are a real two-host rendezvous for all of that:

    run_as_hosts("tests.distributed.test_sharding_parity:hosts_worker", ["..."], nnodes=2)

starts ``nnodes`` ``torchrun --nnodes N --nproc_per_node P --rdzv-backend c10d``
agents, each running ``python -m tests.distributed.hosts TARGET ARGS...`` on its
ranks, where ``TARGET`` is ``module:function`` called with ``ARGS`` (strings).
It returns the agents' outputs when all exit 0, and raises ``AssertionError``
with their last lines otherwise or after ``timeout_s`` (the agents are killed).
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

from tests.distributed.spawn import free_port

ROOT = Path(__file__).resolve().parents[2]
_TAIL = 40


def _tail(text: str) -> str:
    return "\n".join(text.rstrip().splitlines()[-_TAIL:])


def run_as_hosts(target: str, args: List[str], nnodes: int = 2, nproc_per_node: int = 1,
                 timeout_s: float = 300) -> List[str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}",
                f"--nproc_per_node={nproc_per_node}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=hosts-{port}"]
    with tempfile.TemporaryDirectory(prefix="hosts-") as logs:
        procs, files = [], []
        for node in range(nnodes):
            out = open(Path(logs) / f"agent{node}.log", "w+")
            files.append(out)
            procs.append(subprocess.Popen(
                [*torchrun, f"--node-rank={node}", "-m", "tests.distributed.hosts", target, *args],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + timeout_s
        try:
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                if any(p.poll() not in (None, 0) for p in procs):  # one failed: give the rest 10 s
                    deadline = min(deadline, time.monotonic() + 10)
                time.sleep(0.2)
        finally:
            timed_out = [i for i, p in enumerate(procs) if p.poll() is None]
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        outputs = []
        for f in files:
            f.seek(0)
            outputs.append(f.read())
            f.close()
    codes = [p.returncode for p in procs]
    if timed_out or any(codes):
        what = f"agents {timed_out} still running after {timeout_s:.0f} s" if timed_out else f"exit codes {codes}"
        raise AssertionError(f"{target} as {nnodes} hosts x {nproc_per_node}: {what}\n" + "\n".join(
            f"--- agent {i}:\n{_tail(o)}" for i, o in enumerate(outputs)))
    return outputs


def main(argv: List[str]) -> None:
    module, _, name = argv[0].partition(":")
    getattr(importlib.import_module(module), name)(*argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
