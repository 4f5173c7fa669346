"""Input pipeline: our Criteo loader against TorchRec's ``InMemoryBinaryCriteoIterDataPipe``.

    python benchmarks/loader.py --data DIR --batch-size 8192 --json benchmarks/results/loader.json
        [--workers 2] [--device cuda|meta] [--table-sizes criteo_1tb] [--seconds 3] [--make-data DAYS ROWS]

Both read the training days (0 .. D-2) of the same npy folder, with the same
table sizes (TorchRec's ``hashes``). Cases:

* ``one_hot``: ``data.source=criteo`` batches, one process.
* ``one_hot_shuffle_rows``: ours with ``data.shuffle_rows``; TorchRec with
  ``shuffle_training_set`` (its own row shuffle, done once while loading into RAM).
* ``multi_hot_dcnv2``: the MLPerf DCNv2 pooling factors (214 ids per sample);
  TorchRec has no multi-hot expansion for npy days: null.
* ``one_hot_workers_N`` / ``multi_hot_dcnv2_workers_N``: ours through
  ``make_loader`` with N DataLoader worker processes (what training does with
  ``data.num_workers=N``); the rate is what the training process receives.

``device_finish`` (with ``--workers N``): a GPU job's loader, ``make_loader(split,
device, N)`` then ``RawBatch.to(device)`` as TorchRec's pipeline calls it, with 0
and N workers: CPU ms per batch *of the training process* (``time.process_time``,
which leaves the workers' out) and wall ms, after each pass's first batch; the
pass's start (forking the workers, the first batch) apart, per pass. ``--device`` defaults to cuda where
there is one, else meta: the finish's host side (the KJT's constants, launching
the kernels) without the kernels, which is what the training process pays.

How to read it: ``ours_samples_per_s`` is a CPU job's host cost (batches
finished on the host: ids hashed, multi-hot expanded, KJT built).
``ours_host_for_gpu_samples_per_s`` is a GPU job's host cost: the same rows
read, hashing and expansion left to ``RawBatch.to(cuda)`` after the copy;
``device_finish_ms_on_cpu`` is that finishing step run here on the CPU (on a GPU
it is a dozen kernels). TorchRec's pipe loads every day into RAM and hashes it
once before the first batch (not timed); ours memory-maps days that can be
larger than RAM. ``ms_per_batch`` is ours (host-finished).

``--make-data DAYS ROWS`` first writes DAYS synthetic raw days of ROWS rows with
``dlrm-dist synth --format tsv`` and converts them with ``dlrm-dist preprocess``
into ``--data`` (ids up to 40M, so most features need hashing into the Terabyte
tables, as with real data preprocessed with ``--max-ind-range 40000000``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, environment, write_json  # noqa: E402
sys.path.insert(0, str(ROOT))

TABLE_CONFIGS = {"criteo_1tb": "configs/criteo_1tb.yaml", "criteo_kaggle": "configs/criteo_kaggle.yaml"}
DCNV2_CONFIG = "configs/mlperf_dcnv2.yaml"


def make_data(folder: Path, days: int, rows: int) -> None:
    """Synthetic raw TSV days -> npy days, with the project's own CLI."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        for cmd in (["synth", "--format", "tsv", "--days", str(days), "--rows-per-day", str(rows),
                     "--output", tmp, "--num-embeddings", "40000000"],
                    ["preprocess", "--dataset", "criteo_1tb", "--input", tmp, "--output", str(folder),
                     "--no-progress"]):
            subprocess.run([sys.executable, "-m", "dlrm_dist.cli", *cmd], check=True, cwd=ROOT, env=env)


def rate(make_iter: Callable[[], Iterable[Any]], batch_size: int, seconds: float,
         consume: Callable[[Any], Any] = lambda b: b) -> float:
    """Samples/s over whole passes after one warm-up pass (page cache, worker start-up
    is counted: a training epoch pays it too)."""
    for b in make_iter():
        consume(b)
    batches, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for b in make_iter():
            consume(b)
            batches += 1
    return batches * batch_size / (time.perf_counter() - start)


def profile_one_hot(split, batch_size: int, seconds: float, out: Path) -> None:
    """Where a one-hot batch of a CPU job spends its host time: cProfile's top functions
    by own time, written to ``out`` (the floor the README and the issue discuss)."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    samples_per_s = rate(lambda: split, batch_size, seconds)
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(20)
    out.write_text(f"one-hot, CPU job, batch {batch_size}: {samples_per_s:,.0f} samples/s under cProfile\n"
                   + text.getvalue())
    print(f"profile written to {out}")


def our_split(data: Path, batch_size: int, tables: List[int], multi_hot: Optional[List[int]] = None,
              shuffle_rows: bool = False, finish_on_device: bool = False):
    import torch

    from dlrm_dist.config import DataConfig
    from dlrm_dist.data.criteo import build_criteo_splits
    from dlrm_dist.training.distributed import DistEnv

    cfg = DataConfig(source="criteo", path=str(data), multi_hot_sizes=multi_hot, shuffle_rows=shuffle_rows)
    split = build_criteo_splits(cfg, batch_size, batch_size, tables,
                                DistEnv(0, 1, 0, 1, torch.device("cpu"), "gloo")).train
    split.deliver = "raw_ids" if finish_on_device else "batch"
    return split


def torchrec_pipe(data: Path, batch_size: int, tables: List[int], shuffle: bool = False):
    from torchrec.datasets.criteo import InMemoryBinaryCriteoIterDataPipe

    days = sorted(int(p.name.split("_")[1]) for p in data.glob("day_*_dense.npy"))[:-1]
    paths = {k: [str(data / f"day_{d}_{k}.npy") for d in days] for k in ("dense", "sparse", "labels")}
    return InMemoryBinaryCriteoIterDataPipe(
        "train", paths["dense"], paths["sparse"], paths["labels"], batch_size=batch_size, rank=0,
        world_size=1, drop_last=True, shuffle_training_set=shuffle, hashes=tables)


def training_process_cost(split, device, workers: int, seconds: float) -> Dict[str, float]:
    """Per batch, in this (the training) process, on the device-finish path: the loader
    hands over ``RawBatch``es of ids as stored and ``.to(device)`` finishes them. CPU
    time of this process only (workers' is their own) and wall time, over whole passes
    after a warm-up pass. A pass's start (forking the workers, up to its first batch)
    is reported apart, per pass: an epoch pays it once, not per batch."""
    import torch

    from dlrm_dist.data.loader import make_loader

    def one_pass() -> Dict[str, float]:
        n, t = 0, {"cpu": time.process_time(), "wall": time.perf_counter()}
        for raw in make_loader(split, device, workers):
            if n == 0:  # the start: the loader's set-up and its first batch
                t.update(start_cpu=time.process_time() - t["cpu"], start_wall=time.perf_counter() - t["wall"],
                         cpu=time.process_time(), wall=time.perf_counter())
            raw.to(device, non_blocking=True)
            n += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        return {**t, "batches": n - 1, "cpu": time.process_time() - t["cpu"],
                "wall": time.perf_counter() - t["wall"]}

    one_pass()
    passes, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        passes.append(one_pass())
    total = lambda k: sum(p[k] for p in passes)  # noqa: E731
    return {"training_process_cpu_ms_per_batch": 1000 * total("cpu") / total("batches"),
            "training_process_wall_ms_per_batch": 1000 * total("wall") / total("batches"),
            "start_cpu_ms_per_pass": 1000 * total("start_cpu") / len(passes),
            "start_wall_ms_per_pass": 1000 * total("start_wall") / len(passes),
            "batches_per_pass": passes[0]["batches"] + 1, "passes": len(passes)}


def device_finish_cases(args: argparse.Namespace, tables: List[int], dcnv2: List[int]) -> List[Dict[str, Any]]:
    """The GPU job's loader with 0 and ``--workers`` workers: what each costs the training process."""
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "meta"))
    rows = []
    for name, multi_hot in (("one_hot", None), ("multi_hot_dcnv2", dcnv2)):
        for workers in (0, args.workers):
            split = our_split(Path(args.data), args.batch_size, tables, multi_hot, finish_on_device=True)
            row = {"name": name, "device": str(device), "workers": workers,
                   **training_process_cost(split, device, workers, args.seconds)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def run_cases(args: argparse.Namespace, tables: List[int], dcnv2: List[int]) -> List[Dict[str, Any]]:
    import torch

    from dlrm_dist.data.loader import make_loader

    bs, sec, data = args.batch_size, args.seconds, Path(args.data)
    cpu = torch.device("cpu")
    cases = []

    def case(name: str, ours_split, theirs=None, workers: int = 0) -> None:
        if workers:
            ours = rate(lambda: make_loader(ours_split, cpu, workers), bs, sec)
        else:
            ours = rate(lambda: ours_split, bs, sec)
        row: Dict[str, Any] = {"name": name, "ours_samples_per_s": ours,
                               "torchrec_samples_per_s": rate(lambda: theirs, bs, sec) if theirs else None,
                               "ms_per_batch": 1000 * bs / ours}
        if not workers:
            raw = our_split(data, bs, tables, ours_split.spec.multi_hot_sizes, ours_split.shuffle_rows, True)
            row["ours_host_for_gpu_samples_per_s"] = rate(lambda: raw, bs, sec)
            first = next(iter(raw))
            t0 = time.perf_counter()
            for _ in range(5):
                first.to(cpu)
            row["device_finish_ms_on_cpu"] = (time.perf_counter() - t0) / 5 * 1000
        cases.append(row)
        print(json.dumps(row), flush=True)

    case("one_hot", our_split(data, bs, tables), torchrec_pipe(data, bs, tables))
    case("one_hot_shuffle_rows", our_split(data, bs, tables, shuffle_rows=True),
         torchrec_pipe(data, bs, tables, shuffle=True))
    case("multi_hot_dcnv2", our_split(data, bs, tables, dcnv2))
    if args.workers:
        case(f"one_hot_workers_{args.workers}", our_split(data, bs, tables), workers=args.workers)
        case(f"multi_hot_dcnv2_workers_{args.workers}", our_split(data, bs, tables, dcnv2), workers=args.workers)
    return cases


def plot(result: Dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = result["cases"]
    names = [c["name"] for c in cases]
    y = range(len(cases))
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(cases) + 1.5))
    h = 0.27
    bars = [("ours (host-finished)", "ours_samples_per_s", "tab:blue", -h),
            ("ours, host part of a GPU job", "ours_host_for_gpu_samples_per_s", "tab:cyan", 0),
            ("TorchRec InMemoryBinaryCriteoIterDataPipe", "torchrec_samples_per_s", "tab:orange", h)]
    for label, key, color, dy in bars:
        vals = [(c.get(key) or 0) / 1e6 for c in cases]
        ax.barh([i + dy for i in y], vals, height=h, label=label, color=color)
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel("million samples/s (higher is better)")
    ax.set_title(f"Criteo npy loader, batch {result['batch_size']}, {result['table_sizes']} tables, "
                 f"load {result['load_average_start'][0]:.1f}")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder of day_{i}_{dense,sparse,labels}.npy")
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--json", required=True, help="write the results here (a .png plot beside it)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the workers cases (0: none)")
    p.add_argument("--device", choices=["cuda", "meta"], default=None,
                   help="device of the device-finish cases (default: cuda if present, else meta)")
    p.add_argument("--table-sizes", choices=sorted(TABLE_CONFIGS), default="criteo_1tb")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per loader (after a warm-up pass)")
    p.add_argument("--make-data", nargs=2, type=int, metavar=("DAYS", "ROWS"),
                   help="first write DAYS synthetic days of ROWS rows into --data")
    p.add_argument("--profile", type=Path, help="also write a cProfile table of the one-hot CPU case here")
    args = p.parse_args(argv)

    from dlrm_dist.config import load_config

    if args.make_data:
        make_data(Path(args.data), *args.make_data)
    tables = load_config(str(ROOT / TABLE_CONFIGS[args.table_sizes]), []).model.table_sizes()
    dcnv2 = load_config(str(ROOT / DCNV2_CONFIG), []).data.multi_hot_sizes
    load_start = os.getloadavg()
    cases = run_cases(args, tables, dcnv2)
    device_finish = device_finish_cases(args, tables, dcnv2) if args.workers else []
    if args.profile:
        profile_one_hot(our_split(Path(args.data), args.batch_size, tables), args.batch_size, args.seconds,
                        args.profile)
    result = {
        "data": str(args.data), "batch_size": args.batch_size, "table_sizes": args.table_sizes,
        "workers": args.workers, "cases": cases, "device_finish": device_finish, **environment(),
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "command": " ".join(["python", "benchmarks/loader.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    out = Path(args.json)
    write_json(out, result)
    plot(result, out.with_suffix(".png"))
    print(f"written {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
