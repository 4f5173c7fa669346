"""``python -m dlrm_dist.train`` / ``dlrm-dist train``: one rank of the job.

config (checked before torch is imported) -> DistEnv -> ``build_run`` (data,
run dir, plan, DistributedModelParallel, optimizers, checkpoint, loader: see
``dlrm_dist.training.recipe``) -> ``Trainer.fit`` -> summary.json. One process
when started by hand; one rank of the job under torchrun or torchx
(``dist.ddp -m dlrm_dist.train``).
"""

from __future__ import annotations

import argparse
import atexit
import gc
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

from dlrm_dist.config import Config, load_config
from dlrm_dist.core.errors import UserError, report

if TYPE_CHECKING:
    from dlrm_dist.training.distributed import DistEnv

# The config is checked before anything heavy is imported, so a typo in it is
# reported in a fraction of a second instead of after TorchRec has loaded.

logger = logging.getLogger("dlrm_dist")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dlrm-dist train", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True,
                   help="YAML config: a path, or a shipped name (smoke, criteo_kaggle, criteo_1tb, mlperf_dcnv2)")
    p.add_argument("--run-dir", default=None, help="output folder (default runs/<config>-<time>)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.batch_size=512")
    return p.parse_args(argv)


def run(cfg: Config, config_path: str, run_dir_arg: Optional[str]) -> dict:
    from dlrm_dist.training.distributed import init_distributed, teardown
    from dlrm_dist.training.recipe import setup_logging

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
    from dlrm_dist.training.metrics import MetricsSink
    from dlrm_dist.training.recipe import build_run, fit
    from dlrm_dist.training.trainer import log_summary

    run = build_run(cfg, env, run_dir_arg, config_path)
    sink = MetricsSink(run.run_dir, env, cfg.metrics, resumed_from=run.resumed_from)
    try:
        summary = fit(run, sink)
    finally:
        sink.close()
    if env.is_main:
        logger.info("%s", log_summary(summary))
        logger.info("run directory: %s", run.run_dir)
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
