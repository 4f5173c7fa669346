"""``dlrm-dist predict``: click probabilities of an exported model for an npy folder.

    dlrm-dist predict --model model.pt --data DIR [--split val|test]
                      [--output preds.npy] [--batch-size N]

DIR is a folder of ``day_{i}_{dense,sparse,labels}.npy`` (``dlrm-dist
preprocess``). The split is training's (``dlrm_dist.data.criteo.split_parts``:
the last day's first half validates, the second half tests) and rows become
batches through the training loader's own code (ids hashed into their tables,
multi-hot expanded), so a row is scored exactly as evaluation saw it.

Unlike distributed evaluation, which drops the tail that does not fill a batch
on every rank, predict scores every row of the split: ``preds.npy`` holds one
float32 probability per row, in row order. AUC and logloss (the definitions of
``dlrm_dist.training.metrics.EvalMetrics``, exact AUROC unless the config bins it) are
printed; the batch size defaults to the run's evaluation batch size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from dlrm_dist.data.criteo import CriteoDataset, split_parts
from dlrm_dist.data.npy_days import open_days
from dlrm_dist.core.errors import entry_point
from dlrm_dist.core.files import atomic_path
from dlrm_dist.training.metrics import EvalMetrics
from dlrm_dist.serving.program import ExportedModel, load_model_file


def predict(exported: ExportedModel, data: Path, split: str, batch_size: int = 0) -> Dict[str, Any]:
    """{"probs": (N,) float32, "auc", "logloss", "rows", "samples_per_s"} for one split."""
    cfg = exported.cfg
    parts = split_parts(open_days(Path(data)))[split]
    bs = batch_size or cfg.data.eval_batch_size or cfg.train.batch_size
    reader = CriteoDataset(parts, bs, rank=0, world_size=1, table_sizes=cfg.model.table_sizes(),
                           multi_hot_sizes=cfg.data.multi_hot_sizes,
                           multi_hot_distribution=cfg.data.multi_hot_distribution, seed=cfg.data.seed)
    rows = int(reader.starts[-1])
    probs = np.empty(rows, dtype=np.float32)
    metrics = EvalMetrics(torch.device("cpu"), cfg.metrics.auroc_thresholds)
    start = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, rows, bs):
            hi = min(lo + bs, rows)
            batch = reader.to_batch(*reader.read(lo, hi))
            logits = exported.model(batch.dense_features, batch.sparse_features).reshape(-1).float()
            probs[lo:hi] = torch.sigmoid(logits).numpy()
            metrics.update(logits, batch.labels)
    seconds = time.perf_counter() - start
    result: Dict[str, Any] = {"probs": probs, "rows": rows, "batch_size": bs,
                              "samples_per_s": rows / seconds if seconds > 0 else 0.0}
    if rows:
        result.update(metrics.compute())
    return result


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dlrm-dist predict", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True, help="model file from `dlrm-dist export`")
    p.add_argument("--data", type=Path, required=True, help="folder of day_{i}_{dense,sparse,labels}.npy")
    p.add_argument("--split", choices=("val", "test"), default="val", help="which half of the last day")
    p.add_argument("--output", type=Path, default=None, help="write probabilities here (.npy, float32)")
    p.add_argument("--batch-size", type=int, default=0, help="rows per forward (default: the run's eval batch)")
    args = p.parse_args(argv)
    if args.batch_size < 0:
        p.error(f"--batch-size {args.batch_size}: must be positive (0: the run's eval batch size)")  # exit 2
    return args


@entry_point("dlrm-dist predict")
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    result = predict(load_model_file(args.model), args.data, args.split, args.batch_size)  # UserError: exit 2
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.output) as tmp, open(tmp, "wb") as f:
            np.save(f, result["probs"])
    line = f"{args.split}: {result['rows']} rows, {result['samples_per_s']:,.0f} samples/s"
    if "auc" in result:
        line += f", AUC {result['auc']:.6f}, logloss {result['logloss']:.6f}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
