"""``python -m dlrm_dist.train`` / ``dlrm-dist train``: the whole recipe, top to bottom.

config -> DistEnv -> data (checked first: a wrong path fails in a second) ->
run dir -> model (tables on meta) -> fused embedding optimizer -> sharding plan
-> DistributedModelParallel -> dense optimizer + LR schedule -> [checkpoint
loaded] -> Trainer -> summary.json. One process when
started by hand; one rank of the job under torchrun or torchx
(``dist.ddp -m dlrm_dist.train``).
"""

from __future__ import annotations

import argparse
import atexit
import functools
import gc
import logging
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

from dlrm_dist.config import Config, load_config, to_yaml
from dlrm_dist.core.errors import UserError, report

if TYPE_CHECKING:
    from dlrm_dist.config import ShardingConfig
    from dlrm_dist.training.distributed import DistEnv

# The config is checked before anything heavy is imported, so a typo in it is
# reported in a fraction of a second instead of after TorchRec has loaded.

logger = logging.getLogger("dlrm_dist")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dlrm-dist train", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--run-dir", default=None, help="output folder (default runs/<config>-<time>)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.batch_size=512")
    return p.parse_args(argv)


def setup_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.WARNING,  # TorchRec's and FBGEMM's INFO chatter drowns ours
        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    logging.getLogger("dlrm_dist").setLevel(logging.INFO)
    # Its dry-run dense-size caveat is known and accepted (see sharding.build_planner).
    logging.getLogger("torchrec.distributed.planner.storage_reservations").setLevel(logging.ERROR)


def make_run_dir(arg: Optional[str], config_path: str, env: "DistEnv", resuming: bool = False) -> Path:
    import torch.distributed as dist

    from dlrm_dist.training.distributed import broadcast_object

    default = f"runs/{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(broadcast_object(arg or default, env))  # rank 0's clock decides
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # A rerun must not look finished; a resumed one appends to its metrics.
        for stale in ("summary.json",) + (() if resuming else ("metrics.jsonl",)):
            (run_dir / stale).unlink(missing_ok=True)
    dist.barrier()
    return run_dir


def check_memory(cfg: Config, env: "DistEnv") -> None:
    """One rank per host (local rank 0) compares the plan's host-memory need with
    what is free there; a shortfall on any host stops every rank with its message."""
    from dlrm_dist.planner.capacity import check_host_memory
    from dlrm_dist.training.distributed import collectively

    def check() -> None:
        if env.local_rank == 0:
            needed, available = check_host_memory(cfg, env.world_size, env.local_world_size, env.device.type)
            logger.info("host memory check on %s: %d rank(s) need %.2f GiB, %.2f GiB available",
                        socket.gethostname(), env.local_world_size, needed / 2**30, available / 2**30)

    collectively(check, env)


def build_sharded_model(cfg: Config, sharding_cfg: "ShardingConfig", env: "DistEnv", run_dir: Path):
    """Model on meta -> fused embedding optimizer -> plan -> DMP -> dense optimizer + LR."""
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


def run(cfg: Config, config_path: str, run_dir_arg: Optional[str]) -> dict:
    from dlrm_dist.training.distributed import init_distributed, teardown

    env = init_distributed(cfg.dist)
    setup_logging(env.rank)
    clean = False
    try:
        summary = _train(cfg, config_path, run_dir_arg, env)
        clean = True
        return summary
    finally:  # sinks are closed in _train; the process group always goes
        teardown(clean)


def _train(cfg: Config, config_path: str, run_dir_arg: Optional[str], env: "DistEnv") -> dict:
    from dlrm_dist.training import checkpoint as ckpt
    from dlrm_dist.data.build import build_data
    from dlrm_dist.data.loader import make_loader
    from dlrm_dist.training.distributed import collectively
    from dlrm_dist.training.metrics import MetricsSink
    from dlrm_dist.training.trainer import Trainer, TrainState, log_summary

    # The data first: a wrong data.path must fail in a second, not after planning a 100 GB model.
    data = collectively(lambda: build_data(cfg.data, cfg.train.batch_size, cfg.model.table_sizes(), env), env)
    run_dir = make_run_dir(run_dir_arg, config_path, env, resuming=bool(cfg.train.resume))
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

    sink = MetricsSink(run_dir, env, cfg.metrics, resumed_from=resume_from)
    try:
        loader = functools.partial(make_loader, device=env.device, num_workers=cfg.data.num_workers,
                                   prefetch_factor=cfg.data.prefetch_factor)
        trainer = Trainer(dmp, optimizer, lr_scheduler, env, cfg.train, cfg.metrics, sink, checkpointer, state,
                          loader)
        summary = trainer.fit(data)
        sink.write_json("summary.json", summary)
    finally:
        sink.close()
    if env.is_main:
        logger.info("%s", log_summary(summary))
        logger.info("run directory: %s", run_dir)
    return summary


def preflight(cfg: Config) -> None:
    """Checks that need no torch, done before importing it: the Criteo folder."""
    if cfg.data.source == "criteo":
        from dlrm_dist.data.npy_days import open_days

        open_days(Path(cfg.data.path))


def train_rank(cfg: Config, config_path: str, run_dir_arg: Optional[str]) -> int:
    """One rank's whole run; a user error is one line from rank 0 and exit code 2."""
    try:
        run(cfg, config_path, run_dir_arg)
    except UserError as e:
        return report("dlrm-dist train", e)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Exit code 0 when training finished, 2 on a user error (config, data, checkpoint,
    memory: one line on stderr, from rank 0), anything else a traceback."""
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)  # before torch is imported: fast
        preflight(cfg)
    except UserError as e:
        return report("dlrm-dist train", e)
    # Python's last garbage collection at exit walks TorchRec's whole object graph:
    # seconds per rank on a busy host, which delay the end of every run and, worse,
    # the exit of a failed rank that torchrun waits for before stopping the others.
    # The OS frees the memory anyway; frozen objects are skipped by that collection.
    atexit.register(gc.freeze)
    # torch elastic's @record writes a failing rank's traceback where torchrun / torchx
    # find it, so the job's failure names the rank that failed first.
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(train_rank)(cfg, args.config, args.run_dir)


if __name__ == "__main__":
    sys.exit(main())
