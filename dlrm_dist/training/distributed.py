"""Who am I in the job: rank, world size, device and process-group backend.

torchrun and torchx's ``dist.ddp`` export RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT. Without them the program is a
job of one: it still creates a (single-rank) process group, so TorchRec's
sharding and every collective run the same code path as on a cluster.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from dlrm_dist.config import DistConfig
from dlrm_dist.core.errors import UserError

T = TypeVar("T")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str
    timeout_s: float = 600.0  # the process group's: bounds every collective (dist.timeout_s)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // self.local_world_size)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_device(cfg: DistConfig, local_rank: int) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("dist.device=cuda but CUDA is not available on this host")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def pick_backend(cfg: DistConfig, device: torch.device) -> str:
    if cfg.backend != "auto":
        if cfg.backend == "nccl" and device.type != "cuda":
            raise RuntimeError("dist.backend=nccl needs dist.device=cuda")
        return cfg.backend
    return "nccl" if device.type == "cuda" else "gloo"


def cpu_threads(cfg: DistConfig, local_world_size: int) -> int:
    """Intra-op threads for this rank: ``dist.num_threads``, else OMP_NUM_THREADS,
    else an equal share of the cores this process may run on. Without it every rank
    starts one thread per core: 2 ranks on 2 cores run 4 busy threads, and each
    GEMM waits for a thread the other rank has descheduled."""
    if cfg.num_threads > 0:
        return cfg.num_threads
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world_size))


def init_distributed(cfg: DistConfig) -> DistEnv:
    """Join (or, alone, create) the default process group and pick the device."""
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if not launched:
        os.environ.update(
            RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
        )
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    device = pick_device(cfg, local_rank)
    backend = pick_backend(cfg, device)
    torch.set_num_threads(cpu_threads(cfg, local_world_size))
    if not dist.is_initialized():
        # Bounds every collective: a peer that stops answering fails the others after
        # this long (gloo: "Timed out waiting ... for recv/send"; nccl: the watchdog
        # aborts the communicator) instead of torch's default 30 minutes.
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=cfg.timeout_s))
    env = DistEnv(rank, world_size, local_rank, local_world_size, device, backend, cfg.timeout_s)
    logger.info("rank %d/%d on %s (%s, collectives time out after %g s), %d CPU threads", rank, world_size,
                device, backend, cfg.timeout_s, torch.get_num_threads())
    return env


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. a run directory name)."""
    box = [obj if env.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def first_error(message: str, env: DistEnv) -> str:
    """Every rank learns whether any rank hit a problem (``message`` non-empty), so
    all stop together instead of the others hanging in the next collective."""
    messages = [None] * env.world_size
    dist.all_gather_object(messages, message)
    return next((m for m in messages if m), "")


def collectively(fn: Callable[[], T], env: DistEnv) -> T:
    """``fn()`` on every rank; if it raised a :class:`UserError` on any rank, every
    rank raises one with the first such message, so all stop together and no rank
    is left waiting in a collective for one that quit."""
    result, message = None, ""
    try:
        result = fn()
    except UserError as e:
        message = str(e)
    message = first_error(message, env)
    if message:
        raise UserError(message)
    return result  # type: ignore[return-value]


def teardown(clean: bool = True) -> None:
    """Leave the process group: after a last barrier when the run ended well; at once
    after an error (the other ranks may be gone, a barrier would wait for them)."""
    if dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
