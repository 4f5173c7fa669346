"""Training throughput per rank and how far it is from this machine's ceiling.

    python benchmarks/throughput.py [--config benchmarks/configs/kaggle_shape.yaml]
        [--batch-sizes 512,1024,2048,4096,8192] [--nprocs 1,2]
        [--sharding-types table_wise,column_wise,row_wise,data_parallel]
        [--pipelines base,sparse_dist,semi_sync] [--base-batch 2048]
        [--window-steps 5] [--windows 5] [--warmup-steps 5]
        [--machine NAME] [--json OUT] [--no-plots] [section.key=value ...]

Each case is one torchrun job of ``benchmarks/throughput_rank.py`` (the real
trainer: plan, DMP, fused optimizer, train pipeline), gloo on CPU and nccl on
GPUs, picked by ``dist.device=auto`` exactly as in training. The sweep:

* batch per rank x world size (``--batch-sizes`` x ``--nprocs``), planner's plan,
  ``train.pipeline=sparse_dist``;
* at ``--base-batch`` on the largest world size: each sharding type pinned for
  every table (``--sharding-types``) and each train pipeline (``--pipelines``;
  semi_sync needs CUDA and is listed under ``skipped`` on CPU).

Per case: samples/s per rank (per GPU on CUDA) over ``--windows`` timed windows
of ``--window-steps`` steps after ``--warmup-steps``: median, min, max, stdev;
each rank's ceilings measured in the same process right after training
(``benchmarks/ceiling.py``) and the achieved fraction of each
(``fraction_of_gemm_ceiling``, ``fraction_of_memory_ceiling``,
``fraction_of_combined_ceiling``); the plan per table; threads; peak RSS.
The JSON also records versions, device, optimizer and data source. It and
three PNG plots go to ``benchmarks/results/<machine>/``.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ceiling import spread  # noqa: E402
from common import RESULTS, ROOT, device_kind, environment, machine_name, pyplot, write_json  # noqa: E402

PIPELINES = ("base", "sparse_dist", "semi_sync")
CEILING_KEYS = ("gemm_ceiling_samples_per_s", "memory_ceiling_samples_per_s", "combined_ceiling_samples_per_s")


@dataclass(frozen=True)
class Case:
    nproc: int
    batch_size: int
    pipeline: str = "sparse_dist"
    sharding_type: str = ""  # "" lets the planner choose per table

    @property
    def name(self) -> str:
        return (f"{self.nproc}x{self.batch_size}-{self.pipeline}"
                + (f"-{self.sharding_type}" if self.sharding_type else ""))

    def overrides(self) -> List[str]:
        out = [f"train.batch_size={self.batch_size}", f"train.pipeline={self.pipeline}"]
        if self.sharding_type:
            out.append(f"sharding.sharding_types=[{self.sharding_type}]")
        return out


def build_cases(args: argparse.Namespace) -> List[Case]:
    """Batch x world size, then sharding types and pipelines at the base point."""
    cases = [Case(n, b) for n in args.nprocs for b in args.batch_sizes]
    top = max(args.nprocs)
    cases += [Case(top, args.base_batch, sharding_type=t) for t in args.sharding_types]
    cases += [Case(top, args.base_batch, pipeline=p) for p in args.pipelines]
    return list(dict.fromkeys(cases))  # de-duplicated, in order


def window_rates(events: List[Dict[str, Any]], warmup_steps: int, global_batch: int, world: int,
                 clock: str = "time") -> List[float]:
    """Per-rank samples/s of each window between consecutive train log events after
    warm-up, by the wall clock (``time``) or by rank 0's CPU-seconds (``cpu_s``)."""
    train = [e for e in events if e["event"] == "train" and e["step"] >= warmup_steps]
    return [(b["step"] - a["step"]) * global_batch / (b[clock] - a[clock]) / world
            for a, b in zip(train, train[1:])]


def run_case(case: Case, args: argparse.Namespace, tmp: Path) -> Dict[str, Any]:
    run_dir = tmp / case.name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={case.nproc}",
           str(ROOT / "benchmarks/throughput_rank.py"), "--config", args.config, "--run-dir", str(run_dir),
           "--window-steps", str(args.window_steps), "--windows", str(args.windows),
           "--warmup-steps", str(args.warmup_steps), "--ceiling-seconds", str(args.ceiling_seconds),
           *args.overrides, *case.overrides()]
    print(f"[{case.name}] {' '.join(cmd)}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {(proc.stdout + proc.stderr)[-3000:]}")
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ranks = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in range(case.nproc)]
    rates = window_rates(events, args.warmup_steps, case.batch_size * case.nproc, case.nproc)
    per_rank = spread(rates)
    ceil = {k: statistics.median(r["ceiling"][k] for r in ranks) if ranks[0]["ceiling"][k] is not None else None
            for k in ranks[0]["ceiling"]}
    cpu = {}
    if ceil["gemm_cpu_seconds_per_step"]:  # CPU only: the same fraction in CPU-seconds
        cpu_rates = spread(window_rates(events, args.warmup_steps, case.batch_size * case.nproc, case.nproc, "cpu_s"))
        cpu = {"samples_per_cpu_s_rank0": cpu_rates,
               "fraction_of_gemm_ceiling_cpu_time":
                   cpu_rates["median"] * ranks[0]["ceiling"]["gemm_cpu_seconds_per_step"] / case.batch_size}
    return {
        "name": case.name, **asdict(case), "world_size": case.nproc, "batch_size_per_rank": case.batch_size,
        "global_batch_size": case.batch_size * case.nproc,
        "samples_per_s_per_rank": per_rank,
        "samples_per_s": per_rank["median"] * case.nproc,
        "ceiling": ceil,
        "ceiling_per_rank": [r["ceiling"] for r in ranks],
        "fraction_of_gemm_ceiling": per_rank["median"] / ceil["gemm_ceiling_samples_per_s"],
        "fraction_of_memory_ceiling": per_rank["median"] / ceil["memory_ceiling_samples_per_s"],
        "fraction_of_combined_ceiling": per_rank["median"] / ceil["combined_ceiling_samples_per_s"],
        **cpu,
        "plan": json.loads((run_dir / "plan.json").read_text()),
        "threads_per_rank": [r["threads"] for r in ranks],
        "cpu_per_wall_s_per_rank": [r["cpu_per_wall_s"] for r in ranks],
        "loader_workers_per_rank": [r["loader_workers_seen"] for r in ranks],
        "peak_rss_bytes_per_rank": [r["peak_rss_bytes"] for r in ranks],
        "wall_s": time.perf_counter() - start,
    }


def describe_setup(args: argparse.Namespace) -> Dict[str, Any]:
    """The model, optimizers and data the cases share (from the resolved config)."""
    from dlrm_dist.config import load_config

    cfg = load_config(args.config, args.overrides)
    return {
        "config": os.path.relpath(args.config, ROOT),
        "overrides": args.overrides,
        "model": asdict(cfg.model),
        "optimizer": {"embedding": asdict(cfg.optim.embedding), "dense": asdict(cfg.optim.dense)},
        "data_source": cfg.data.source,
        "window_steps": args.window_steps, "windows": args.windows, "warmup_steps": args.warmup_steps,
    }


def print_case(r: Dict[str, Any]) -> None:
    s = r["samples_per_s_per_rank"]
    print(f"[{r['name']}] {s['median']:9.0f} samples/s per rank (min {s['min']:.0f}, max {s['max']:.0f})"
          f"  gemm ceiling {r['ceiling']['gemm_ceiling_samples_per_s']:9.0f} -> "
          f"{r['fraction_of_gemm_ceiling']:.0%}   memory ceiling "
          f"{r['ceiling']['memory_ceiling_samples_per_s']:9.0f} -> {r['fraction_of_memory_ceiling']:.1%}   "
          f"CPU-s per s: {', '.join(f'{x:.2f}' for x in r['cpu_per_wall_s_per_rank'])}"
          + (f"   in CPU time: {r['fraction_of_gemm_ceiling_cpu_time']:.0%} of the GEMM ceiling"
             if "fraction_of_gemm_ceiling_cpu_time" in r else ""), flush=True)


def plot(result: Dict[str, Any], out_dir: Path) -> List[str]:
    """samples/s vs batch per world size; fraction of ceilings; sharding / pipeline bars."""
    plt = pyplot()
    cases = result["cases"]
    sweep = [c for c in cases if c["pipeline"] == "sparse_dist" and not c["sharding_type"]]
    worlds = sorted({c["world_size"] for c in sweep})
    written = []

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for w in worlds:
        cs = sorted((c for c in sweep if c["world_size"] == w), key=lambda c: c["batch_size_per_rank"])
        x = [c["batch_size_per_rank"] for c in cs]
        med = [c["samples_per_s_per_rank"]["median"] for c in cs]
        err = [[m - c["samples_per_s_per_rank"]["min"] for m, c in zip(med, cs)],
               [c["samples_per_s_per_rank"]["max"] - m for m, c in zip(med, cs)]]
        line = ax.errorbar(x, med, yerr=err, marker="o", capsize=3, label=f"{w} rank(s): achieved")
        ax.plot(x, [c["ceiling"]["gemm_ceiling_samples_per_s"] for c in cs], "--",
                color=line[0].get_color(), label=f"{w} rank(s): GEMM ceiling")
        ax2.plot(x, [c["samples_per_s"] for c in cs], marker="o", label=f"{w} rank(s)")
    for a, title in ((ax, "per rank (median, min-max of windows)"), (ax2, "whole job")):
        a.set_xscale("log", base=2)
        a.set_xlabel("batch size per rank")
        a.set_ylabel("samples/s")
        a.set_title(title)
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(f"throughput, {result['machine']}")
    fig.tight_layout()
    written.append(_save(fig, out_dir / "throughput_vs_batch.png", plt))

    fig, ax = plt.subplots(figsize=(6, 4))
    for w in worlds:
        cs = sorted((c for c in sweep if c["world_size"] == w), key=lambda c: c["batch_size_per_rank"])
        x = [c["batch_size_per_rank"] for c in cs]
        for key, style in (("fraction_of_gemm_ceiling", "o-"), ("fraction_of_memory_ceiling", "s:"),
                           ("fraction_of_combined_ceiling", "^--")):
            ax.plot(x, [c[key] for c in cs], style, label=f"{w} rank(s): {key.split('_of_')[1].replace('_', ' ')}")
    ax.axhline(0.8, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, max(1.05, ax.get_ylim()[1]))
    ax.set_xlabel("batch size per rank")
    ax.set_ylabel("achieved / ceiling")
    ax.set_title(f"fraction of the in-process ceilings, {result['machine']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(_save(fig, out_dir / "throughput_fraction.png", plt))

    variants = [c for c in cases if c["sharding_type"] or c["pipeline"] != "sparse_dist"
                or (c["batch_size_per_rank"] == result["base_batch"] and c["world_size"] == max(worlds))]
    if variants:
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = [(c["sharding_type"] or "planner") + " / " + c["pipeline"] for c in variants]
        ax.bar(labels, [c["samples_per_s_per_rank"]["median"] for c in variants], color="tab:blue")
        ax.plot(labels, [c["ceiling"]["gemm_ceiling_samples_per_s"] for c in variants], "k_", ms=30,
                label="GEMM ceiling")
        ax.set_ylabel("samples/s per rank")
        ax.set_title(f"sharding type / pipeline at batch {result['base_batch']}, {max(worlds)} ranks")
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out_dir / "throughput_variants.png", plt))
    return written


def _save(fig, path: Path, plt) -> str:  # noqa: ANN001
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    names = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "benchmarks/configs/kaggle_shape.yaml"))
    p.add_argument("--batch-sizes", type=ints, default=[512, 1024, 2048, 4096, 8192])
    p.add_argument("--nprocs", type=ints, default=None, help="world sizes (default 1,2 on CPU; 1,#GPUs on CUDA)")
    p.add_argument("--sharding-types", type=names, default=["table_wise", "column_wise", "row_wise", "data_parallel"])
    p.add_argument("--pipelines", type=names, default=list(PIPELINES))
    p.add_argument("--base-batch", type=int, default=2048)
    p.add_argument("--window-steps", type=int, default=5)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--ceiling-seconds", type=float, default=1.0, help="min timing of each ceiling figure")
    p.add_argument("--machine", default=None, help="results folder name (default from device and cores)")
    p.add_argument("--json", default=None, help="default benchmarks/results/<machine>/throughput.json")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("overrides", nargs="*", help="section.key=value for every case")
    args = p.parse_args(argv)
    if args.nprocs is None:
        import torch

        args.nprocs = [1, torch.cuda.device_count()] if torch.cuda.is_available() else [1, 2]
        args.nprocs = sorted(set(args.nprocs))
    if args.windows < 5:
        p.error("--windows must be at least 5 (median and spread need them)")
    if args.warmup_steps % args.window_steps:
        p.error("--warmup-steps must be a multiple of --window-steps")
    bad = [x for x in args.pipelines if x not in PIPELINES]
    if bad:
        p.error(f"--pipelines: unknown {bad}; choose from {', '.join(PIPELINES)}")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    machine = machine_name(args.machine)
    out_json = Path(args.json) if args.json else RESULTS / machine / "throughput.json"
    result: Dict[str, Any] = {"machine": machine, **environment(), **describe_setup(args),
                              "base_batch": args.base_batch, "cases": [], "skipped": [], "failed": []}
    with tempfile.TemporaryDirectory(prefix="dlrm-throughput-") as tmp:
        for case in build_cases(args):
            if case.pipeline == "semi_sync" and device_kind() != "cuda":
                result["skipped"].append({"name": case.name, "reason": "TrainPipelineSemiSync needs CUDA streams"})
                print(f"[{case.name}] skipped: TrainPipelineSemiSync needs CUDA", flush=True)
                continue
            try:
                r = run_case(case, args, Path(tmp))
            except RuntimeError as e:
                result["failed"].append({"name": case.name, "error": str(e)})
                print(f"[{case.name}] FAILED: {str(e)[-1500:]}", flush=True)
                continue
            result["cases"].append(r)
            print_case(r)
    result["load_average_at_end"] = list(os.getloadavg())
    out_json.parent.mkdir(parents=True, exist_ok=True)
    if not args.no_plots and result["cases"]:
        result["plots"] = [os.path.relpath(p, out_json.parent) for p in plot(result, out_json.parent)]
    write_json(out_json, result)
    print(f"written to {out_json}")
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
