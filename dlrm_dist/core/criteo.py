"""The Criteo schema: the one torch-free place for the facts about the datasets.

Features (13 integer "dense" counts, 26 categorical ids, and their names), the
published table sizes of Kaggle and Terabyte (at the MLPerf 40M cap), their row
counts, and the dense transforms. ``config``, ``prep``, ``data``, the teacher and
the planner all read them from here; nothing here imports torch, so offline
preprocessing (and each of its workers) never pays for torch just to take a
logarithm (~5 s and ~300 MB of RSS per worker).
"""

from __future__ import annotations

from typing import Callable, Dict, List

import numpy as np

NUM_DENSE_FEATURES = 13
NUM_SPARSE_FEATURES = 26
DENSE_FEATURE_NAMES = [f"int_{i}" for i in range(NUM_DENSE_FEATURES)]
SPARSE_FEATURE_NAMES = [f"cat_{i}" for i in range(NUM_SPARSE_FEATURES)]

KAGGLE_TABLE_SIZES = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
                      14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
"""Rows per table (C1 ... C26) after mapping every value seen in Kaggle's train.txt."""
TERABYTE_TABLE_SIZES = [40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10,
                        2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36]
"""Rows per table of Criteo 1TB at the MLPerf cap of 40M (204,184,588 rows in all)."""

DATASET_ROWS = {
    # Criteo 1TB: days 0-22 hold 4,195,197,692 training rows; day 23 (178,274,637)
    # is split into validation and test halves.
    "criteo_1tb": [4_195_197_692 / 23] * 23 + [178_274_637],
    # Kaggle Display Advertising Challenge train.txt, split into 7 days by preprocess.
    "criteo_kaggle": [45_840_617 / 7] * 7,
}
KAGGLE_LARGEST_TABLE = max(KAGGLE_TABLE_SIZES)
"""Kaggle's biggest table (C3); configs with a bigger one are Terabyte configs."""


def infer_dataset(table_sizes: List[int]) -> str:
    return "criteo_1tb" if max(table_sizes) > KAGGLE_LARGEST_TABLE else "criteo_kaggle"


def train_rows(dataset: str) -> int:
    """Training rows of one epoch: every day but Terabyte's last (validation + test);
    Kaggle's 7 days are all read for training (its val/test come from day 6's tail)."""
    days = DATASET_ROWS[dataset]
    return round(sum(days[:-1]) if dataset == "criteo_1tb" else sum(days))


# Dense-feature transforms of the 13 integer counts (numpy, float32 out).

def _log1p_exact(x: np.ndarray) -> np.ndarray:
    return np.log1p(x).astype(np.float32)  # float64, rounded once


_LOG1P_TABLE = _log1p_exact(np.arange(1 << 16))  # a constant (256 KB), not state


def log1p_transform(raw: np.ndarray) -> np.ndarray:
    """log(1 + max(x, 0)) as float32: the DLRM reference's transform (negatives -> 0).

    Computed in float64 and rounded once, so every code path (synthetic data,
    preprocessing, tests) produces bit-identical float32 values. Counts below
    2^16 (nearly all of Criteo's) are looked up in a table of those very values:
    a float64 log1p costs ~15 ns a value, a third of preprocessing's budget."""
    x = np.maximum(raw, 0)
    small = x < len(_LOG1P_TABLE)
    if small.all():
        return _LOG1P_TABLE[x]
    out = np.empty(x.shape, dtype=np.float32)
    out[small] = _LOG1P_TABLE[x[small]]
    out[~small] = _log1p_exact(x[~small])
    return out


def log_plus3_transform(raw: np.ndarray) -> np.ndarray:
    """log(x + 3) as float32, the MLPerf-era transform (TorchRec's ``tsv_to_npys`` gives
    the same on Terabyte days, whose minimum is -1).

    ``x + 3`` is clamped to >= 1 first, so a value below -2 (Kaggle has -3) maps to
    log(1) = 0 instead of -inf or nan."""
    return np.log(np.maximum(raw.astype(np.float64) + 3.0, 1.0)).astype(np.float32)


DENSE_TRANSFORMS: Dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "log1p": log1p_transform,
    "log_plus3": log_plus3_transform,
}
