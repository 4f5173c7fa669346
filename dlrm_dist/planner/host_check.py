"""The host-memory check training runs at start-up (``dist.check_host_memory``).

Before a rank allocates its tables, local rank 0 of each host asks the capacity
model (:mod:`dlrm_dist.planner.capacity`, the same planner run as ``dlrm-dist
plan``) what this host's ranks will hold, and compares it with the memory this
process may use: a shortfall stops the job with one line now, not the OOM killer
an hour in.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from dlrm_dist.config import Config
from dlrm_dist.core.errors import CapacityError
from dlrm_dist.core.units import GiB
from dlrm_dist.planner.capacity import meta_model, rank_memory, run_planner, table_stats
from dlrm_dist.training.sharding import detect_capacity


def host_memory_by_rank(cfg: Config, world_size: int, local_world_size: int, compute_device: str) -> List[int]:
    """Host bytes each rank's process will hold. When the planner finds no plan
    (it will not fit anyway), tables are split evenly so the check can still say
    by how much."""
    model = meta_model(cfg.model, cfg.optim.embedding)
    hbm, ddr = detect_capacity(cfg.sharding, compute_device, local_world_size)
    run = run_planner(cfg, model, world_size, local_world_size, compute_device, hbm, ddr)
    ranks = rank_memory(cfg, model, run, world_size, compute_device)
    if run.error is not None and compute_device == "cpu":
        stats = table_stats(model, cfg.optim.embedding)
        for r in ranks:
            r.host["embedding weights"] = stats.weight_bytes // world_size
            r.host["embedding optimizer"] = stats.optimizer_bytes // world_size
    return [r.host_total for r in ranks]


def host_memory_per_rank(cfg: Config, world_size: int, local_world_size: int, compute_device: str) -> int:
    """Bytes the fullest rank's process will hold on its host."""
    return max(host_memory_by_rank(cfg, world_size, local_world_size, compute_device))


def check_host_memory(
    cfg: Config, world_size: int, local_world_size: int, compute_device: str,
    available_bytes: Optional[int] = None,
) -> Tuple[int, int, str]:
    """Raise before allocating when this host cannot hold its ranks; else (needed,
    available bytes, where "available" comes from).

    Needed is the fullest host's ranks (contiguous blocks of ``local_world_size``
    ranks) under the plan TorchRec's planner makes for this world size. Available
    is what this process may still allocate: the machine's free RAM, or less when
    its cgroup (Slurm's ``--mem``, a pod's memory limit) caps it, since that limit
    is what the OOM killer enforces (:func:`dlrm_dist.hardware.host.available_memory`)."""
    from dlrm_dist.hardware.host import this_available_memory

    per_rank = host_memory_by_rank(cfg, world_size, local_world_size, compute_device)
    hosts = [per_rank[i:i + local_world_size] for i in range(0, world_size, local_world_size)]
    needed = max(sum(h) for h in hosts)
    if available_bytes is None:
        available, source = this_available_memory()
    else:
        available, source = available_bytes, "given"
    if needed <= available:
        return needed, available, source
    raise CapacityError(
        f"not enough host memory: {local_world_size} rank(s) on this host need "
        f"{needed / GiB:.2f} GiB ({max(per_rank) / GiB:.2f} GiB for the fullest rank) but "
        f"{available / GiB:.2f} GiB is available ({source}). Lower model.num_embeddings / "
        f"num_embeddings_per_feature or model.embedding_dim, use "
        f"optim.embedding.name=rowwise_adagrad (or sgd), lower train.batch_size, run "
        f"fewer ranks per host or more hosts, or ask the scheduler for more memory (--memMB); "
        f"`dlrm-dist plan` shows where memory goes. dist.check_host_memory=false skips this check."
    )
