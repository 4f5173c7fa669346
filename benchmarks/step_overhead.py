"""What our training loop adds to TorchRec's: ``Trainer.fit`` against a bare
``TrainPipelineSparseDist.progress`` loop, same model, same data, same steps.

    python benchmarks/step_overhead.py --json benchmarks/results/step_overhead.json
        [--nproc 1 2] [--steps 20] [--repeats 2] [--batch-size 8192] [--profile]
        [--config benchmarks/configs/kaggle_shape.yaml] [section.key=value ...]

For each world size it starts ``torchrun`` (gloo on CPU, nccl on GPUs); every
repeat builds a fresh sharded model twice and steps it ``--steps`` times, once
in a bare loop (``while True: pipeline.progress(batches)``) and once through
``Trainer.fit`` (progress bar, LR schedule, throughput, and a log event every
``--warmup-steps`` steps: 10x the default ``metrics.log_every`` of 50, so the
figure bounds the logging's cost from above). The first ``--warmup-steps``
steps (pipeline fill, TorchRec's model rewrite) are not timed. Both read the same
batches through ``make_loader`` with the config's ``data.num_workers`` (the
random source's batches are ready-made: the loader costs next to nothing).
Time per step is measured between the log events of step ``--warmup-steps`` and
of the last step (the same instants in the bare loop); the overhead is
``trainer / bare - 1``, the median over repeats (alternating, so a load change
on a shared machine hits both). On a loaded machine that difference is noise
(steps vary by tens of percent); ``trainer_own_ms_per_step`` is robust to it:
the time ``Trainer.fit`` spends per step outside ``pipeline.progress`` (LR
schedule, throughput, progress bar, the log events), and ``trainer_own_fraction``
its share of the step. ``--profile`` also writes torch.profiler's
table of one ``Trainer.fit`` on rank 0 beside the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, environment, write_json  # noqa: E402
sys.path.insert(0, str(ROOT))


def _build(cfg, env, run_dir: Path):
    """A fresh run, built by the recipe training uses (``build_run``)."""
    import torch

    from dlrm_dist.training.recipe import build_run

    run = build_run(cfg, env, run_dir)
    torch.manual_seed(0)
    return run


def bare_seconds(cfg, env, run_dir: Path, warmup: int) -> float:
    """Seconds per step of a bare TrainPipelineSparseDist loop, after ``warmup`` steps."""
    import itertools

    import torch.distributed as dist
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

    run = _build(cfg, env, run_dir)
    pipeline = TrainPipelineSparseDist(run.model, run.optimizer, env.device, execute_all_batches=True)
    run.data.train.set_epoch(0)
    batches = itertools.islice(iter(run.loader(run.data.train)), cfg.train.max_steps)
    run.model.train()
    dist.barrier()
    done = []  # wall time after each step, as the trainer's log events are stamped
    while True:
        try:
            pipeline.progress(batches)
        except StopIteration:
            break
        done.append(time.time())
    return (done[-1] - done[warmup - 1]) / (len(done) - warmup)


def trainer_seconds(cfg, env, run_dir: Path, warmup: int,
                    profile: Optional[Path] = None) -> Tuple[float, float]:
    """Seconds per step of ``Trainer.fit`` after ``warmup`` steps (between its log events
    at step ``warmup`` = ``metrics.log_every`` and the last step), and of those the
    seconds outside ``pipeline.progress``: the loop's own work."""
    import contextlib

    import torch
    import torch.distributed as dist

    from dlrm_dist.training.metrics import MetricsSink

    run = _build(cfg, env, run_dir)
    sink = MetricsSink(run.run_dir, env, cfg.metrics)
    trainer = run.trainer(sink)
    # time inside pipeline.progress, so the loop's own time per step can be told apart
    # from the step's even on a loaded machine (a wrapper on this instance only)
    inside: List[float] = []
    progress = trainer.pipeline.progress

    def timed_progress(batches):
        start = time.perf_counter()
        try:
            return progress(batches)
        finally:
            inside.append(time.perf_counter() - start)

    trainer.pipeline.progress = timed_progress  # type: ignore[method-assign]
    dist.barrier()
    prof = torch.profiler.profile() if profile else contextlib.nullcontext()
    with prof:
        summary = trainer.fit(run.data)
    sink.close()
    if profile and env.is_main:
        profile.write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
    if not env.is_main:
        return 0.0, 0.0  # rank 0 reports; ranks step in lockstep (collectives every step)
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    t = {e["step"]: e["time"] for e in events if e["event"] == "train"}
    last = summary["steps"]
    per_step = (t[last] - t[warmup]) / (last - warmup)
    return per_step, per_step - sum(inside[warmup:last]) / (last - warmup)


def child(args: argparse.Namespace) -> None:
    """One rank (under torchrun): alternate bare and trainer runs; rank 0 writes JSON."""
    from dlrm_dist.config import load_config
    from dlrm_dist.training.distributed import init_distributed, teardown

    cfg = load_config(args.config, args.overrides)
    env = init_distributed(cfg.dist)
    runs: Dict[str, List[float]] = {"bare": [], "trainer": [], "trainer_own": []}
    warmup = cfg.metrics.log_every
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            runs["bare"].append(bare_seconds(cfg, env, Path(tmp) / f"bare{i}", warmup))
            run_dir = Path(tmp) / f"trainer{i}"
            run_dir.mkdir()
            per_step, own = trainer_seconds(cfg, env, run_dir, warmup)
            runs["trainer"].append(per_step)
            runs["trainer_own"].append(own)
        if args.profile:
            run_dir = Path(tmp) / "profiled"
            run_dir.mkdir()
            trainer_seconds(cfg, env, run_dir, warmup, Path(args.child_out).with_suffix(".profile.txt"))
    if env.is_main:
        Path(args.child_out).write_text(json.dumps(runs))
    teardown(True)


def run_world(args: argparse.Namespace, nproc: int, out: Path) -> Dict[str, Any]:
    steps = args.steps + args.warmup_steps
    overrides = [f"train.batch_size={args.batch_size}", f"train.max_steps={steps}", "train.eval_every=0",
                 f"metrics.log_every={args.warmup_steps}",
                 f"data.train_samples={steps * args.batch_size * nproc}",
                 f"data.val_samples={args.batch_size * nproc}", f"data.test_samples={args.batch_size * nproc}",
                 "dist.check_host_memory=false", *args.overrides]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           __file__, "--child-out", str(out), "--config", args.config, "--repeats", str(args.repeats),
           "--warmup-steps", str(args.warmup_steps),
           *(["--profile"] if args.profile else []), *overrides]
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    runs = json.loads(out.read_text())
    ratios = [t / b for b, t in zip(runs["bare"], runs["trainer"])]
    row = {
        "world_size": nproc, "batch_size_per_rank": args.batch_size, "steps_timed": args.steps,
        "warmup_steps": args.warmup_steps,
        "bare_ms_per_step": [1000 * s for s in runs["bare"]],
        "trainer_ms_per_step": [1000 * s for s in runs["trainer"]],
        "overhead_ms_per_step": 1000 * statistics.median(t - b for b, t in zip(runs["bare"], runs["trainer"])),
        "overhead_fraction": statistics.median(ratios) - 1,
        "trainer_own_ms_per_step": [1000 * s for s in runs["trainer_own"]],
        "trainer_own_fraction": statistics.median(o / t for o, t in zip(runs["trainer_own"], runs["trainer"])),
    }
    profile = out.with_suffix(".profile.txt")
    if profile.exists():
        row["profile_table"] = profile.read_text()
    print(json.dumps({k: v for k, v in row.items() if k != "profile_table"}), flush=True)
    return row


def plot(result: Dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["runs"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(len(rows))
    for dx, key, label, color in ((-0.2, "bare_ms_per_step", "bare TrainPipelineSparseDist loop", "tab:gray"),
                                  (0.2, "trainer_ms_per_step", "Trainer.fit", "tab:blue")):
        ax.bar([i + dx for i in x], [statistics.median(r[key]) for r in rows], width=0.4, label=label, color=color)
    for i, r in zip(x, rows):
        ax.annotate(f"{100 * r['overhead_fraction']:+.1f}% (own work {100 * r['trainer_own_fraction']:.2f}%)",
                    (i + 0.2, statistics.median(r["trainer_ms_per_step"])), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), [f"{r['world_size']} rank(s)" for r in rows])
    ax.set_ylabel(f"ms per step (batch {rows[0]['batch_size_per_rank']} per rank)")
    ax.set_title(f"Trainer overhead, load {result['load_average_start'][0]:.1f} on {result['cpu_cores']} CPUs")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "benchmarks/configs/kaggle_shape.yaml"))
    p.add_argument("--json", help="write the results here (a .png plot beside it)")
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="world sizes to measure")
    p.add_argument("--steps", type=int, default=20, help="timed steps, after the warm-up")
    p.add_argument("--warmup-steps", type=int, default=5,
                   help="untimed first steps (pipeline fill, model rewrite); also metrics.log_every")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--profile", action="store_true", help="also profile one Trainer.fit (rank 0)")
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    args.warmup_steps = getattr(args, "warmup_steps", 5)
    if args.child_out:
        child(args)
        return 0
    if not args.json:
        p.error("--json is required")
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_world(args, n, Path(tmp) / f"world{n}.json") for n in args.nproc]
    result = {
        "config": os.path.relpath(args.config, ROOT), "overrides": args.overrides, "runs": runs, **environment(),
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "command": " ".join(["python", "benchmarks/step_overhead.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    out = Path(args.json)
    write_json(out, result)
    plot(result, out.with_suffix(".png"))
    print(f"written {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
