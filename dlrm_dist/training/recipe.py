"""The run, assembled in one place: what training and every benchmark build.

    build_run(cfg, env, run_dir) -> Run

data (checked first: a wrong data.path fails in a second) -> run directory ->
[resume point, its sharding types pinned] -> host-memory check -> model (tables
on meta) -> fused embedding optimizer -> sharding plan -> DistributedModelParallel
-> dense optimizer + LR schedule -> [checkpoint loaded] -> checkpointer -> loader.

``python -m dlrm_dist.train`` wraps it with a metrics sink and ``Trainer.fit``;
``benchmarks/throughput_rank.py`` and ``benchmarks/step_overhead.py`` call the
same function and change only what they measure (their sink, their loop), so a
benchmark runs what training runs: the same plan, the same optimizers, the same
loader with ``data.num_workers`` workers.
"""

from __future__ import annotations

import functools
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from dlrm_dist.config import Config, DataConfig, ShardingConfig, to_yaml
from dlrm_dist.core.units import GiB

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torchrec.distributed.types import ShardingPlan

    from dlrm_dist.data.contract import DataSplits
    from dlrm_dist.training.checkpoint import Checkpointer
    from dlrm_dist.training.distributed import DistEnv
    from dlrm_dist.training.metrics import MetricsSink
    from dlrm_dist.training.trainer import Loader, Trainer, TrainState

logger = logging.getLogger("dlrm_dist")


@dataclass
class Run:
    """Everything one rank trains with; ``trainer(sink)`` puts it to work."""

    cfg: Config
    env: "DistEnv"
    run_dir: Path
    data: "DataSplits"
    model: "nn.Module"  # DistributedModelParallel
    plan: "ShardingPlan"
    optimizer: "torch.optim.Optimizer"
    lr_scheduler: "torch.optim.lr_scheduler.LRScheduler"
    state: "TrainState"
    checkpointer: Optional["Checkpointer"]
    loader: "Loader"
    resumed_from: Optional[Path] = None
    """The checkpoint this run resumed from (its metrics sink sets earlier attempts' later events aside)."""

    def trainer(self, sink: "MetricsSink") -> "Trainer":
        from dlrm_dist.training.trainer import Trainer

        return Trainer(self.model, self.optimizer, self.lr_scheduler, self.env, self.cfg.train, self.cfg.metrics,
                       sink, self.loader, self.checkpointer, self.state)


def setup_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.WARNING,  # TorchRec's and FBGEMM's INFO chatter drowns ours
        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    logging.getLogger("dlrm_dist").setLevel(logging.INFO)
    # Its dry-run dense-size caveat is known and accepted (see training.sharding.build_planner).
    logging.getLogger("torchrec.distributed.planner.storage_reservations").setLevel(logging.ERROR)


def build_loader(data_cfg: DataConfig, env: "DistEnv") -> "Loader":
    """A split -> its batches for one pass: ``data.num_workers`` DataLoader workers,
    ``data.prefetch_factor`` batches each, finished on ``env.device``."""
    from dlrm_dist.data.loader import make_loader

    return functools.partial(make_loader, device=env.device, num_workers=data_cfg.num_workers,
                             prefetch_factor=data_cfg.prefetch_factor)


def make_run_dir(run_dir: Union[str, Path, None], config_path: str, env: "DistEnv", resuming: bool = False) -> Path:
    """The run directory, rank 0's choice (default ``runs/<config>-<time>``); a rerun
    must not look finished, and a fresh run starts a fresh metrics.jsonl."""
    import torch.distributed as dist

    from dlrm_dist.training.distributed import broadcast_object

    default = f"runs/{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    chosen = Path(broadcast_object(str(run_dir) if run_dir else default, env))  # rank 0's clock decides
    if env.is_main:
        chosen.mkdir(parents=True, exist_ok=True)
        for stale in ("summary.json",) + (() if resuming else ("metrics.jsonl",)):
            (chosen / stale).unlink(missing_ok=True)
    dist.barrier()
    return chosen


def check_memory(cfg: Config, env: "DistEnv") -> None:
    """One rank per host (local rank 0) compares the plan's host-memory need with
    what is free there; a shortfall on any host stops every rank with its message."""
    from dlrm_dist.planner.host_check import check_host_memory
    from dlrm_dist.training.distributed import collectively

    def check() -> None:
        if env.local_rank == 0:
            needed, available, source = check_host_memory(cfg, env.world_size, env.local_world_size, env.device.type)
            logger.info("host memory check on %s: %d rank(s) need %.2f GiB, %.2f GiB available (%s)",
                        socket.gethostname(), env.local_world_size, needed / GiB, available / GiB, source)

    collectively(check, env)


def build_sharded_model(cfg: Config, sharding_cfg: ShardingConfig, env: "DistEnv", run_dir: Path):
    """Model on meta -> fused embedding optimizer -> plan -> DMP -> dense optimizer + LR.
    The plan is written to ``run_dir/plan.txt`` (rank 0)."""
    import torch

    from dlrm_dist.model import build_model
    from dlrm_dist.training.optim import apply_embedding_optimizer, build_lr_scheduler, build_optimizer
    from dlrm_dist.training.sharding import build_plan, describe_plan, input_pooling_factors, shard_model

    torch.manual_seed(cfg.train.seed)  # same dense init everywhere; DDP broadcasts rank 0's too
    model = build_model(cfg.model, env.device)
    apply_embedding_optimizer(model, cfg.optim.embedding)
    plan = build_plan(model, sharding_cfg, env, cfg.train.batch_size, input_pooling_factors(cfg.data))
    if env.is_main:
        described = describe_plan(plan)
        (run_dir / "plan.txt").write_text(described)
        logger.info("sharding plan:\n%s", described.split("\n\n")[0])
    dmp = shard_model(model, plan, env)
    optimizer = build_optimizer(dmp, cfg.optim.dense, cfg.optim.embedding)
    return dmp, plan, optimizer, build_lr_scheduler(optimizer, cfg.optim.schedule)


def build_run(cfg: Config, env: "DistEnv", run_dir: Union[str, Path, None], config_path: str = "run") -> Run:
    """The whole recipe for one rank (see the module docstring for the order).

    ``run_dir`` None: ``runs/<config_path's stem>-<time>``. A ``train.resume`` point
    is found and loaded here, with the sharding types it was saved with."""
    from dlrm_dist.data.build import build_data
    from dlrm_dist.training import checkpoint as ckpt
    from dlrm_dist.training.distributed import collectively
    from dlrm_dist.training.trainer import TrainState

    # The data first: a wrong data.path must fail in a second, not after planning a 100 GB model.
    data = collectively(lambda: build_data(cfg.data, cfg.train.batch_size, cfg.model.table_sizes(), env), env)
    run_dir = make_run_dir(run_dir, config_path, env, resuming=bool(cfg.train.resume))
    ckpt_dir = Path(cfg.train.checkpoint_dir) if cfg.train.checkpoint_dir else run_dir / "checkpoints"
    resume_from = ckpt.find_resume(cfg.train.resume, ckpt_dir, env)
    sharding_cfg = cfg.sharding
    if resume_from is not None:  # same sharding types as saved: see dlrm_dist.training.checkpoint
        sharding_cfg = ckpt.pin_sharding_types(cfg.sharding, ckpt.read_meta(resume_from)["sharding_types"],
                                               str(resume_from / ckpt.META))
    if env.is_main:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    if cfg.dist.check_host_memory:  # stop now, not when the OOM killer strikes an hour in
        check_memory(cfg, env)

    dmp, plan, optimizer, lr_scheduler = build_sharded_model(cfg, sharding_cfg, env, run_dir)
    state = TrainState()
    if resume_from is not None:
        meta = ckpt.load_checkpoint(resume_from, dmp, optimizer, lr_scheduler, env, verify=False)  # find_resume did
        state = TrainState(meta["step"], meta["epoch"])
        ckpt.warn_if_changed(meta, cfg, env)
        logger.info("resumed from %s at step %d", resume_from, state.step)
    checkpointer = None
    if cfg.train.checkpoint_every or cfg.train.checkpoint_at_end:
        checkpointer = ckpt.Checkpointer(ckpt_dir, cfg.train.keep_checkpoints, env, ckpt.run_facts(cfg, plan, env),
                                         to_yaml(cfg))
    return Run(cfg, env, run_dir, data, dmp, plan, optimizer, lr_scheduler, state, checkpointer,
               build_loader(cfg.data, env), resume_from)


def fit(run: Run, sink: "MetricsSink") -> Any:
    """Train ``run`` to the end with ``sink``; the summary is written to summary.json."""
    summary = run.trainer(sink).fit(run.data)
    sink.write_json("summary.json", summary)
    return summary
