"""Preprocessing throughput: ``dlrm-dist preprocess`` vs TorchRec's ``BinaryCriteoUtils.tsv_to_npys``.

    python benchmarks/preprocess.py [--rows 2000000] [--input DAY_FILE] [--torchrec-rows 200000]
        [--workdir DIR] [--keep] --json OUT

One raw day (generated with ``dlrm-dist synth`` unless ``--input`` gives one)
is converted by ours (one worker, the whole file) and by TorchRec (the first
``--torchrec-rows`` lines: it holds a day as Python lists, ~1.6 KB of RSS per
row, and runs at tens of thousands of rows/s, so the whole file would take
long and many GB). Each run is its own child process, so its peak RSS
(``ru_maxrss``) is its own; times exclude interpreter start-up and imports
(TorchRec's import alone is ~5 s). Targets: ours >= 10x TorchRec's rows/s per
worker, ours' peak RSS < 1 GB. The two outputs are checked to hold the same
ids and labels on the lines both converted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
TARGET_SPEEDUP = 10.0
TARGET_RSS = 1 << 30


def _cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def child_main(kind: str, raw: Path, out: Path) -> None:
    """Run one conversion in this process and print its measurements as JSON."""
    if kind == "ours":
        from dlrm_dist.prep import preprocess

        argv = ["--dataset", "criteo_1tb", "--input", str(raw.parent), "--output", str(out),
                "--workers", "1", "--no-progress"]
        t0, c0 = time.perf_counter(), _cpu_seconds()
        assert preprocess.main(argv) == 0
    else:
        from torchrec.datasets.criteo import BinaryCriteoUtils

        out.mkdir(parents=True, exist_ok=True)
        t0, c0 = time.perf_counter(), _cpu_seconds()
        BinaryCriteoUtils.tsv_to_npys(str(raw), *(str(out / f"day_0_{k}.npy") for k in ("dense", "sparse", "labels")))
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu,  # imports excluded from both
                      "peak_rss_bytes": max(me.ru_maxrss, kids.ru_maxrss) * 1024}))


def run_child(kind: str, raw: Path, out: Path) -> Dict[str, float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, __file__, "--child", kind, "--input", str(raw), "--workdir", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_input(args: argparse.Namespace, work: Path) -> Path:
    if args.input:
        return args.input
    raw = work / "raw"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dlrm_dist.cli", "synth", "--format", "tsv", "--days", "1",
                    "--rows-per-day", str(args.rows), "--output", str(raw), "--num-embeddings", "40000000"],
                   check=True, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL)
    print(f"generated {args.rows:,} lines in {time.perf_counter() - t0:.0f} s")
    return raw / "day_0"


def write_prefix(src: Path, dst: Path, lines: int) -> int:
    dst.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(src, "rb") as f, open(dst, "wb") as g:
        for line in f:
            if n == lines:
                break
            g.write(line)
            n += 1
    return n


def same_ids_and_labels(ours: Path, theirs: Path, rows: int) -> bool:
    import numpy as np

    return all(np.array_equal(np.load(ours / f"day_0_{k}.npy", mmap_mode="r")[:rows],
                              np.load(theirs / f"day_0_{k}.npy", mmap_mode="r")) for k in ("sparse", "labels"))


def benchmark(args: argparse.Namespace, work: Path) -> dict:
    raw = make_input(args, work)
    if raw.name != "day_0" and not raw.name.startswith("day_0."):
        raise SystemExit(f"--input {raw}: name it day_0 (or day_0.gz) in its own folder")
    lines = sum(1 for _ in open(raw, "rb")) if raw.suffix != ".gz" else None
    prefix = work / "torchrec_in" / "day_0"
    torchrec_rows = write_prefix(raw, prefix, args.torchrec_rows)
    ours_in = work / "ours_in" / raw.name  # a folder holding only this day
    ours_in.parent.mkdir(parents=True, exist_ok=True)
    if not ours_in.exists():
        ours_in.symlink_to(raw.resolve())
    ours = run_child("ours", ours_in, work / "ours")
    import numpy as np

    rows = int(np.load(work / "ours" / "day_0_labels.npy", mmap_mode="r").shape[0])
    theirs = run_child("torchrec", prefix, work / "torchrec")
    ours["rows"], theirs["rows"] = rows, torchrec_rows
    for r in (ours, theirs):
        r["rows_per_s"] = r["rows"] / r["seconds"]
        r["rows_per_cpu_s"] = r["rows"] / r["cpu_seconds"]
    speedup = ours["rows_per_s"] / theirs["rows_per_s"]
    return {
        "benchmark": "preprocess", "command": " ".join([Path(sys.executable).name] + sys.argv),
        "input": str(raw), "input_bytes": raw.stat().st_size, "input_lines": lines,
        "ours": dict(ours, workers=1, what="dlrm-dist preprocess --workers 1, whole file"),
        "torchrec": dict(theirs, what="BinaryCriteoUtils.tsv_to_npys",
                         prefix_only=torchrec_rows < rows,
                         note=f"timed on the first {torchrec_rows:,} lines" if torchrec_rows < rows else "whole file"),
        "speedup_rows_per_s": speedup,
        "speedup_rows_per_cpu_s": ours["rows_per_cpu_s"] / theirs["rows_per_cpu_s"],
        "same_ids_and_labels": same_ids_and_labels(work / "ours", work / "torchrec", torchrec_rows),
        "targets": {"speedup": TARGET_SPEEDUP, "peak_rss_bytes": TARGET_RSS},
        "met": {"speedup": speedup >= TARGET_SPEEDUP, "peak_rss": ours["peak_rss_bytes"] < TARGET_RSS},
        "host": {"cpus": os.cpu_count(), "load_avg_1m_at_end": os.getloadavg()[0],
                 "python": platform.python_version(), "machine": platform.machine()},
    }


def print_report(r: dict) -> None:
    print(f"{'run':<10}{'rows':>12}{'seconds':>10}{'rows/s':>12}{'rows/cpu-s':>12}{'peak RSS':>12}")
    for name in ("ours", "torchrec"):
        x = r[name]
        print(f"{name:<10}{x['rows']:>12,}{x['seconds']:>10.1f}{x['rows_per_s']:>12,.0f}"
              f"{x['rows_per_cpu_s']:>12,.0f}{x['peak_rss_bytes'] / 2**20:>10,.0f}MB")
    print(f"torchrec: {r['torchrec']['note']}")
    print(f"speedup (rows/s per worker): {r['speedup_rows_per_s']:.1f}x (target {TARGET_SPEEDUP:.0f}x: "
          f"{'met' if r['met']['speedup'] else 'NOT met'}); per CPU-second {r['speedup_rows_per_cpu_s']:.1f}x")
    print(f"ours peak RSS {r['ours']['peak_rss_bytes'] / 2**20:.0f} MB (target < 1024 MB: "
          f"{'met' if r['met']['peak_rss'] else 'NOT met'}); same ids and labels: {r['same_ids_and_labels']}")


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=2_000_000, help="lines of the generated day")
    p.add_argument("--input", type=Path, help="a raw day file named day_0 (instead of generating one)")
    p.add_argument("--torchrec-rows", type=int, default=200_000, help="lines TorchRec converts (a prefix)")
    p.add_argument("--workdir", type=Path, help="where inputs and outputs go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--child", choices=["ours", "torchrec"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(args.child, args.input, args.workdir)
        return 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    try:
        result = benchmark(args, work)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print_report(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
