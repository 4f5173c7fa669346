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
import sys
from datetime import timedelta
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import torch
import torch.distributed as dist

from dlrm_dist.config import DistConfig
from dlrm_dist.core.errors import UserError
from dlrm_dist.hardware.host import (EXPECT_GPUS_ENV, DriverGpus, driver_gpus, driver_too_old, expected_gpus,
                                     min_driver)

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


@dataclass(frozen=True)
class TorchCuda:
    """What the installed torch can do with CUDA on this host."""

    version: str  # torch.__version__
    cuda: Optional[str]  # torch.version.cuda: "13.0", or None for a CPU-only build
    available: bool
    device_count: int

    @classmethod
    def here(cls) -> "TorchCuda":
        available = torch.cuda.is_available()
        return cls(torch.__version__, torch.version.cuda, available, torch.cuda.device_count() if available else 0)

    def describe(self) -> str:
        build = f"built for CUDA {self.cuda}" if self.cuda else "a CPU-only build"
        sees = f"sees {self.device_count} GPU(s)" if self.available else "cannot use CUDA"
        return f"torch {self.version} ({build}) {sees}"


def cuda_problem(device: str, local_rank: int, torch_cuda: TorchCuda, expected: int, why: str,
                 driver: Optional[DriverGpus] = None) -> Optional[str]:
    """Why this rank must not start with ``dist.device=device``, or None.

    ``expected``/``why``: GPUs this node should use and who says so (the launcher's
    ``--gpu``, the driver's list: :func:`dlrm_dist.hardware.host.expected_gpus`).
    ``auto`` falls back to the CPU only when nothing expects a GPU: a driver too old
    for torch's CUDA, or a job granted none, must not quietly train on gloo."""
    if device == "cpu":
        return None
    if torch_cuda.available and local_rank < torch_cuda.device_count:
        return None
    if torch_cuda.available:
        return (f"dist.device={device}: local rank {local_rank} has no GPU of its own: {torch_cuda.describe()}; "
                f"run one rank per GPU (-j NODESx{torch_cuda.device_count}, --gpu {torch_cuda.device_count})")
    if device == "auto" and not expected:
        return None
    wanted = f"GPUs expected ({why})" if expected else "CUDA requested"
    hint = driver_hint(torch_cuda.cuda, driver)
    return (f"dist.device={device}: {wanted} but {torch_cuda.describe()}{hint}. `dlrm-dist doctor` checks "
            f"this node; set dist.device=cpu to train on the CPU on purpose")


def driver_hint(torch_cuda_version: Optional[str], driver: Optional[DriverGpus]) -> str:
    """What most likely stands between torch and the GPUs, as the tail of a sentence."""
    if not torch_cuda_version:
        return "; install the CUDA build of torch (make install on this host)"
    need = min_driver(torch_cuda_version)
    if driver is not None and driver.driver:
        if driver_too_old(driver.driver, torch_cuda_version):
            return f"; driver {driver.driver} is too old for CUDA {torch_cuda_version} (needs R{need}+)"
        return f"; driver {driver.driver}"
    found = driver.error if driver is not None and driver.error else "no NVIDIA driver found"
    return f"; {found} (CUDA {torch_cuda_version} needs driver R{need}+)" if need else f"; {found}"


def pick_device(cfg: DistConfig, local_rank: int) -> torch.device:
    """``dist.device``: cpu as asked; cuda or auto on this rank's GPU, or a
    :class:`UserError` (one line, before any planning) when GPUs are expected and
    torch cannot use them. The driver is asked only when torch sees no GPU."""
    torch_cuda = TorchCuda.here()
    expected, why, driver = 0, "", None
    if cfg.device != "cpu" and not torch_cuda.available:
        driver = driver_gpus()
        expected, why = expected_gpus(dict(os.environ), driver)
    problem = cuda_problem(cfg.device, local_rank, torch_cuda, expected, why, driver)
    if problem:
        raise UserError(problem)
    if cfg.device == "cpu":
        return torch.device("cpu")
    if not torch_cuda.available:
        logger.info("dist.device=%s: CPU (%s; no GPU expected: %s, %s unset)", cfg.device, torch_cuda.describe(),
                    driver.error if driver and driver.error else "the driver lists none", EXPECT_GPUS_ENV)
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def pick_backend(cfg: DistConfig, device: torch.device) -> str:
    if cfg.backend != "auto":
        if cfg.backend == "nccl" and device.type != "cuda":
            raise UserError(f"dist.backend=nccl needs a CUDA device, but this rank runs on {device}")
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
    try:
        device = pick_device(cfg, local_rank)
        backend = pick_backend(cfg, device)
    except UserError as e:
        _say_on_every_host(e)
        raise
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


def _say_on_every_host(error: UserError) -> None:
    """A device problem is a host's own, met before the process group exists: the
    entry point reports it from rank 0 only, so the first rank of every other host
    says it too (else a bad second host fails without a word)."""
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("RANK", "0") != "0":
        print(f"dlrm-dist train: error: {socket.gethostname()}: {error}", file=sys.stderr, flush=True)


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
