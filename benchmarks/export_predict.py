"""Export and predict for the Kaggle-shaped model: export time, file size, peak RSS,
predict samples/s (model file and torch.export program), per embedding dtype.

    python benchmarks/export_predict.py [--config benchmarks/configs/kaggle_shape.yaml]
        [--nproc 2] [--steps 10] [--val-rows 65536] [--batch-size 2048]
        [--dtypes fp32,fp16,int8] [--threads N] [--json OUT] [--keep DIR]

Writes a random npy folder with the config's table sizes (2 training days, a
last day of 2 x ``--val-rows``), trains ``--steps`` steps on ``--nproc`` ranks
with a checkpoint at the end, then for each dtype runs ``dlrm-dist export`` in
a fresh process (its time, its peak RSS against its RSS after imports, the file
size; then the torch.export program, timed apart) and ``predict`` on the
validation half (the second of two passes, so page cache is warm). The data
are random, so AUCs are ~0.5 and not reported; the AUC change of fp16 / int8
on learnable data is in tests/distributed/test_export.py. Record ``uptime``
with the figures: on a shared machine they move with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_random_days(folder: Path, train_rows: int, last_rows: int, table_sizes: list) -> None:
    """Three npy days in the preprocess layout (dense already log1p-transformed)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for day, rows in enumerate((train_rows, train_rows, last_rows)):
        np.save(folder / f"day_{day}_dense.npy", np.log1p(rng.integers(0, 1000, (rows, 13))).astype(np.float32))
        np.save(folder / f"day_{day}_sparse.npy", (rng.random((rows, 26)) * np.array(table_sizes)).astype(np.int32))
        np.save(folder / f"day_{day}_labels.npy", rng.integers(0, 2, (rows, 1)).astype(np.int32))


def load() -> str:
    return "load average %.2f, %.2f, %.2f" % os.getloadavg()


def child_export(step: str, output: str, dtype: str, program: str) -> None:
    """Run in a fresh process so its peak RSS is the export's own: RSS after the
    imports, peak after writing the model file; then the program, timed apart."""
    import psutil

    from dlrm_dist.serving.export import export
    from dlrm_dist.serving.program import export_program, load_model_file, program_example

    baseline = psutil.Process().memory_info().rss
    report = export(Path(step), Path(output), dtype)
    report["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report["rss_after_imports_bytes"] = baseline
    exported = load_model_file(Path(output))
    start = time.perf_counter()
    export_program(exported.model, program_example(64, exported.cfg.model.table_sizes()), Path(program))
    report["program_s"] = time.perf_counter() - start
    report["program_bytes"] = Path(program).stat().st_size
    print("REPORT " + json.dumps(report))


def program_samples_per_s(path: Path, model_file: Path, data: Path, batch_size: int) -> float:
    import fbgemm_gpu  # noqa: F401  (the program's fbgemm operators)
    import torch

    from dlrm_dist.data.criteo import CriteoDataset, split_parts
    from dlrm_dist.data.npy_days import open_days
    from dlrm_dist.serving.program import load_model_file, serving_inputs

    cfg = load_model_file(model_file).cfg
    module = torch.export.load(str(path)).module()
    reader = CriteoDataset(split_parts(open_days(data))["val"], batch_size, 0, 1, cfg.model.table_sizes())
    rows = int(reader.starts[-1])
    batches = [serving_inputs(b.dense_features, b.sparse_features)
               for b in (reader.to_batch(*reader.read(lo, min(lo + batch_size, rows))) for lo in range(0, rows, batch_size))]
    with torch.no_grad():
        module(*batches[0])  # warm-up
        start = time.perf_counter()
        for b in batches:
            module(*b)
    return rows / (time.perf_counter() - start)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-export":
        child_export(*sys.argv[2:6])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "benchmarks/configs/kaggle_shape.yaml"))
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--val-rows", type=int, default=65536)
    p.add_argument("--batch-size", type=int, default=2048, help="predict batch size")
    p.add_argument("--dtypes", default="fp32,fp16,int8")
    p.add_argument("--json", default=None)
    p.add_argument("--keep", default=None, help="work in this folder and keep it")
    p.add_argument("--threads", type=int, default=0, help="torch threads for predict (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from dlrm_dist.config import load_config
    from dlrm_dist.serving.predict import predict
    from dlrm_dist.serving.program import load_model_file

    cfg = load_config(args.config)
    work = Path(args.keep or tempfile.mkdtemp(prefix="export-bench-"))
    data, run_dir = work / "npy", work / "run"
    train_rows = args.steps * cfg.train.batch_size * args.nproc // 2
    write_random_days(data, train_rows, 2 * args.val_rows, cfg.model.table_sizes())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
                    "-m", "dlrm_dist.train", "--config", args.config, "--run-dir", str(run_dir),
                    "data.source=criteo", f"data.path={data}", f"train.max_steps={args.steps}",
                    "train.checkpoint_at_end=true", "metrics.progress_bar=false"],
                   check=True, cwd=ROOT, env=env)
    step = run_dir / "checkpoints" / (run_dir / "checkpoints/latest").read_text().strip()
    ckpt_bytes = sum(f.stat().st_size for f in step.iterdir())
    results = {"config": args.config, "tables": len(cfg.model.table_sizes()), "rows_per_table": sorted(set(cfg.model.table_sizes())),
               "embedding_dim": cfg.model.embedding_dim, "nproc": args.nproc,
               "checkpoint_bytes": ckpt_bytes, "val_rows": args.val_rows, "batch_size": args.batch_size,
               "cpu_count": os.cpu_count(), "threads": args.threads or "default", "load_before": load(), "cases": []}
    for dtype in args.dtypes.split(","):
        out, program = work / f"model-{dtype}.pt", work / f"model-{dtype}.pt2"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child-export", str(step), str(out), dtype, str(program)],
                              check=True, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        report = json.loads(proc.stdout.split("REPORT ", 1)[1])
        exported = load_model_file(out)
        predict(exported, data, "val", args.batch_size)  # first pass: page cache, lazy init
        rate = predict(exported, data, "val", args.batch_size)["samples_per_s"]
        case = {"dtype": dtype, "export_wall_s_with_imports": wall, "export_read_s": report["load_s"],
                "export_write_s": report["save_s"], "program_s": report["program_s"], "file_bytes": report["bytes"],
                "program_bytes": report["program_bytes"], "export_peak_rss_bytes": report["peak_rss_bytes"],
                "export_rss_after_imports_bytes": report["rss_after_imports_bytes"],
                "predict_samples_per_s": rate,
                "program_samples_per_s": program_samples_per_s(program, out, data, args.batch_size),
                "load": load()}
        print(json.dumps(case), flush=True)
        results["cases"].append(case)
    results["load_after"] = load()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
