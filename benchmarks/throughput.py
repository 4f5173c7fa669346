"""Training throughput per rank: the real trainer under torchrun, figures from its run directory.

    python benchmarks/throughput.py [--nproc 2] [--config benchmarks/configs/kaggle_shape.yaml]
        [--steps 60] [--warmup-steps 10] [--json OUT] [section.key=value ...]

Runs ``python -m dlrm_dist.train`` over ``--nproc`` ranks (gloo on CPU, nccl on
GPUs) and reads ``metrics.jsonl``: the steady-state rate is taken between the
log event at ``--warmup-steps`` and the last one, so start-up (planning,
sharding, the first batches) is not counted. Prints samples/s globally and per
rank and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def steady_rate(events: list, warmup_steps: int, global_batch: int) -> float:
    """Samples/s between the first train event at or after warmup and the last one."""
    train = [e for e in events if e["event"] == "train" and e["step"] >= warmup_steps]
    if len(train) < 2:
        raise SystemExit("throughput: too few log events; raise --steps or lower metrics.log_every")
    first, last = train[0], train[-1]
    return (last["step"] - first["step"]) * global_batch / (last["time"] - first["time"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "benchmarks/configs/kaggle_shape.yaml"))
    p.add_argument("--nproc", type=int, default=2, help="ranks on this host")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
            "-m", "dlrm_dist.train", "--config", args.config, "--run-dir", str(run_dir),
            f"train.max_steps={args.steps}", "metrics.progress_bar=false", *args.overrides,
        ]
        print("running:", " ".join(cmd), flush=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        summary = json.loads((run_dir / "summary.json").read_text())
        events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        config = (run_dir / "config.yaml").read_text()

    rate = steady_rate(events, args.warmup_steps, summary["global_batch_size"])
    result = {
        "config": os.path.relpath(args.config, ROOT),
        "overrides": args.overrides,
        "world_size": summary["world_size"],
        "batch_size_per_rank": summary["global_batch_size"] // summary["world_size"],
        "steps": summary["steps"],
        "steady_samples_per_s": rate,
        "steady_samples_per_s_per_rank": rate / summary["world_size"],
        "whole_run_samples_per_s_per_rank": summary["samples_per_s_per_rank"],
        "peak_rss_bytes": summary["peak_rss_bytes"],
        "cpu_count": os.cpu_count(),
        "resolved_config": config,
    }
    print(f"\nthroughput ({result['world_size']} ranks, batch {result['batch_size_per_rank']} per rank):")
    print(f"  steady state : {rate:10.0f} samples/s  = {rate / summary['world_size']:.0f} per rank")
    print(f"  whole run    : {summary['train_samples_per_s']:10.0f} samples/s  = {summary['samples_per_s_per_rank']:.0f} per rank")
    print(f"  peak RSS     : {summary['peak_rss_bytes'] / 2**20:10.0f} MiB per rank (max)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"  written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
