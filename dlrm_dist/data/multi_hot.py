"""MLPerf DLRM-DCNv2's synthetic multi-hot expansion of one-hot Criteo ids.

The MLPerf reference (torchrec ``examples/dlrm/data/multi_hot.py``) turns each
one-hot id ``x`` of a table with ``n`` rows into a bag of ``k`` ids: ``x``
itself and ``k - 1`` ids drawn from a fixed table indexed by ``x``, uniform over
``[0, n)`` or ``pareto(a=0.25) % n``. It materialises that table (n x k ints,
terabytes for the 40M-row tables at k=100); here the same draws are a stateless
hash of ``(seed, table, slot, x)``, so nothing is stored, every rank and every
epoch expands an id identically, and the result depends only on the seed.
"""

from __future__ import annotations

from typing import List

import numpy as np

from dlrm_dist.hashing import uniform

PARETO_A = 0.25  # MLPerf's shape parameter


def expand(
    ids: np.ndarray, table: int, rows: int, size: int, distribution: str, seed: int
) -> np.ndarray:
    """One table: ``ids`` (B,) one-hot -> (B, size) bag whose first column is ``ids``."""
    out = np.empty((ids.shape[0], size), dtype=np.int64)
    out[:, 0] = ids
    for slot in range(1, size):
        u = uniform(seed, 1_000 + table * 1_000 + slot, ids)
        if distribution == "uniform":
            extra = np.minimum((u * rows).astype(np.int64), rows - 1)
        elif distribution == "pareto":
            # numpy's pareto(a) is Lomax: (1 - u) ** (-1 / a) - 1
            draw = np.minimum(np.power(1.0 - u, -1.0 / PARETO_A) - 1.0, 2.0**62)
            extra = draw.astype(np.int64) % rows
        else:
            raise ValueError(f"unknown multi-hot distribution {distribution!r}")
        out[:, slot] = extra
    return out


def expand_all(
    sparse: np.ndarray, table_sizes: List[int], sizes: List[int], distribution: str, seed: int
) -> List[np.ndarray]:
    """All tables: ``sparse`` (B, F) one-hot ids -> list of F arrays (B, sizes[f])."""
    return [
        expand(sparse[:, f], f, table_sizes[f], sizes[f], distribution, seed)
        for f in range(sparse.shape[1])
    ]
