"""Time collectives over the backend training would pick: what ``dlrm-dist doctor
--collectives`` runs on a node, what benchmarks/comm.py sweeps, and what a hardware
profile (``dlrm-dist calibrate``) can measure the links with.

:func:`time_op` times one op inside an existing process group; :func:`measure` starts
its own group of local processes (spawned, so a parent that touched CUDA is safe),
joined exactly as training joins (``init_distributed``: same device choice, same
backend, same checks), and returns bandwidths.
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

OPS = ("all_reduce", "all_to_all")


def bus_factor(op: str, world: int) -> float:
    """NCCL-tests' bus-bandwidth factor: what each link carries per byte of the op."""
    return 2 * (world - 1) / world if op == "all_reduce" else (world - 1) / world


def _sync(device) -> None:  # noqa: ANN001
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_op(op: str, nbytes: int, world: int, device, iters: int, windows: int) -> List[float]:  # noqa: ANN001
    """Seconds per call of ``op`` (all_to_all | all_reduce) on ``nbytes`` per rank, for
    each of ``windows`` windows of ``iters`` calls (after one untimed warm-up window)."""
    import torch
    import torch.distributed as dist

    n = max(world, (nbytes // 4) // world * world)  # all_to_all_single splits evenly
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)

    def call() -> None:
        if op == "all_to_all":
            dist.all_to_all_single(dst, src)
        else:
            dist.all_reduce(src)

    per_call = []
    for w in range(windows + 1):
        dist.barrier()
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            call()
        _sync(device)
        if w:  # window 0 warms up
            per_call.append((time.perf_counter() - start) / iters)
    return per_call


def slowest_median(times: List[float], device) -> float:  # noqa: ANN001
    """The median of this rank's windows, maximised over ranks: a collective is as slow
    as its slowest rank."""
    import torch
    import torch.distributed as dist

    worst = torch.tensor([statistics.median(times)], dtype=torch.float64, device=device)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)


@dataclass(frozen=True)
class Measurement:
    op: str
    backend: str
    device: str
    world_size: int
    bytes_per_rank: int
    seconds: float

    @property
    def algbw_gb_per_s(self) -> float:
        return self.bytes_per_rank / self.seconds / 1e9

    @property
    def busbw_gb_per_s(self) -> float:
        return self.algbw_gb_per_s * bus_factor(self.op, self.world_size)

    def as_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "algbw_gb_per_s": self.algbw_gb_per_s, "busbw_gb_per_s": self.busbw_gb_per_s}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, device: str, nbytes: int, iters: int, windows: int,
          queue) -> None:  # noqa: ANN001
    """One spawned rank: join as training does, time each op, rank 0 reports."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from dlrm_dist.config import DistConfig
    from dlrm_dist.core.errors import UserError
    from dlrm_dist.training.distributed import init_distributed, teardown

    try:
        env = init_distributed(DistConfig(device=device, timeout_s=120.0))  # type: ignore[arg-type]
    except UserError as e:
        if rank == 0:
            queue.put({"error": str(e)})
        return
    rows = []
    for op in OPS:
        t = slowest_median(time_op(op, nbytes, world, env.device, iters, windows), env.device)
        rows.append(Measurement(op, env.backend, str(env.device), world, nbytes, t))
    if rank == 0:
        queue.put({"rows": rows})
    teardown()


def measure(world: int = 2, nbytes: int = 4 << 20, device: str = "auto", iters: int = 5,
            windows: int = 3, timeout_s: float = 300.0) -> List[Measurement]:
    """all_reduce and all_to_all of ``nbytes`` per rank over ``world`` local processes.
    Raises :class:`dlrm_dist.core.errors.UserError` when a rank cannot join (the same
    device check training runs) and RuntimeError when a rank dies."""
    import torch.multiprocessing as mp

    from dlrm_dist.core.errors import UserError

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, device, nbytes, iters, windows, queue), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    result: Optional[Dict[str, Any]] = None if queue.empty() else queue.get()
    if result and "error" in result:
        raise UserError(result["error"])
    if alive or result is None:
        codes = [p.exitcode for p in procs]
        raise RuntimeError(f"collectives over {world} local ranks failed (exit codes {codes}"
                           f"{', timed out' if alive else ''})")
    return result["rows"]
