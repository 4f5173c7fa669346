"""One rank of one throughput case (run by ``benchmarks/throughput.py`` under torchrun).

    torchrun --nproc_per_node=N benchmarks/throughput_rank.py --config C --run-dir D
        --window-steps W --windows K --warmup-steps S [section.key=value ...]

It trains what ``dlrm_dist.train`` trains, built by the same ``build_run``
(plan, DMP, fused optimizer, the loader with ``data.num_workers`` workers, the
configured train pipeline, ``Trainer.fit``) for S + K*W steps,
logging every W steps: the log's all-reduce lines the ranks up, so the time
between two log events is one timed window. Then, in the same process and
with the same threads, every rank measures its ceilings (``ceiling.measure``)
at the same moment, and writes ``rank{r}.json`` into the run directory; rank 0
also writes ``plan.json`` (sharding type, kernel and ranks per table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import psutil
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))  # ceiling.py beside this file

import ceiling  # noqa: E402

from dlrm_dist.config import load_config  # noqa: E402
from dlrm_dist.training.distributed import init_distributed  # noqa: E402
from dlrm_dist.training.metrics import MetricsSink, peak_rss_bytes  # noqa: E402
from dlrm_dist.training.recipe import build_run, setup_logging  # noqa: E402


class CpuClockSink(MetricsSink):
    """Train events also carry this process's CPU-seconds (``cpu_s``), so a window's
    rate can be expressed per CPU-second too: robust on a machine others share. It
    also counts the processes this rank has started (its DataLoader workers) at each
    log event: the record shows what fed the step."""

    loader_workers = 0

    def event(self, kind, step, values):  # noqa: ANN001, ANN201
        if kind == "train":
            values = {**values, "cpu_s": time.process_time()}
            self.loader_workers = max(self.loader_workers, len(psutil.Process().children()))
        super().event(kind, step, values)


def plan_table(plan) -> dict:  # noqa: ANN001 - a torchrec ShardingPlan
    """{table: {sharding_type, compute_kernel, ranks}} for the JSON record."""
    return {
        name: {"sharding_type": ps.sharding_type, "compute_kernel": ps.compute_kernel, "ranks": ps.ranks}
        for module_plan in plan.plan.values()
        for name, ps in module_plan.items()
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--window-steps", type=int, required=True)
    p.add_argument("--windows", type=int, required=True)
    p.add_argument("--warmup-steps", type=int, required=True)
    p.add_argument("--ceiling-seconds", type=float, default=1.0, help="min timing per ceiling figure")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    steps = args.warmup_steps + args.windows * args.window_steps
    base = load_config(args.config, args.overrides)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    samples = base.train.batch_size * world
    cfg = load_config(args.config, args.overrides + [
        f"train.max_steps={steps}", f"metrics.log_every={args.window_steps}", "metrics.progress_bar=false",
        f"data.train_samples={steps * samples}", f"data.val_samples={samples}", f"data.test_samples={samples}",
        "train.eval_every=0", "train.checkpoint_every=0", "train.checkpoint_at_end=false",
        "dist.check_host_memory=false",  # measured, not guarded: as before the shared recipe
    ])
    if args.warmup_steps % args.window_steps:
        raise SystemExit("throughput_rank: --warmup-steps must be a multiple of --window-steps")

    env = init_distributed(cfg.dist)
    setup_logging(env.rank)
    run = build_run(cfg, env, args.run_dir, args.config)
    run_dir, plan = run.run_dir, run.plan
    sink = CpuClockSink(run_dir, env, cfg.metrics)
    wall, cpu = time.perf_counter(), time.process_time()
    summary = run.trainer(sink).fit(run.data)
    # CPU-seconds this rank got per second of training (all its threads): below its
    # thread count means it waited - on peers, on communication, or for a core the
    # machine's other work held.
    cpu_per_wall = (time.process_time() - cpu) / (time.perf_counter() - wall)
    sink.close()
    rss = peak_rss_bytes()
    del run  # free the tables before timing the ceilings

    dist.barrier()  # all ranks measure together, sharing the machine as in training
    ceil = ceiling.measure(cfg.model, cfg.optim, cfg.data.multi_hot_sizes, cfg.train.batch_size,
                           env.device, min_run_time=args.ceiling_seconds)
    record = {"rank": env.rank, "ceiling": ceil.to_dict(), "peak_rss_bytes": rss, "cpu_per_wall_s": cpu_per_wall,
              "threads": torch.get_num_threads(), "steps": summary["steps"],
              "data_num_workers": cfg.data.num_workers, "loader_workers_seen": sink.loader_workers}
    (run_dir / f"rank{env.rank}.json").write_text(json.dumps(record, indent=2) + "\n")
    if env.is_main:
        (run_dir / "plan.json").write_text(json.dumps(plan_table(plan), indent=2) + "\n")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
