"""Turn numpy arrays into TorchRec ``Batch`` objects (dense, KeyedJaggedTensor, labels).

Every source (random, synthetic, criteo) ends here, so the model sees one
format: ``dense_features`` (B, 13) float32, ``sparse_features`` a KJT keyed by
``cat_0 ... cat_25`` (feature-major values, one length per sample and
feature), ``labels`` (B,) float32.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_dist.config import SPARSE_FEATURE_NAMES
from dlrm_dist.prep.transforms import log1p_transform


def dense_transform(raw: np.ndarray) -> np.ndarray:
    """Criteo's integer features -> model input: log(1 + max(x, 0)), as float32.

    The same function ``dlrm-dist preprocess`` applies by default (it lives in
    the torch-free ``transforms`` module so preprocessing workers stay light)."""
    return log1p_transform(raw)


def make_batch(
    dense: np.ndarray,
    sparse: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray,
    keys: Optional[List[str]] = None,
) -> Batch:
    """Build a Batch.

    Args:
        dense: (B, 13) float32, already transformed.
        sparse: (B, F) one-hot ids, or a list of F arrays (B, k_f) for multi-hot.
        labels: (B,) 0/1.
    """
    keys = keys or SPARSE_FEATURE_NAMES
    batch_size = dense.shape[0]
    if isinstance(sparse, np.ndarray):
        values = np.ascontiguousarray(sparse.T).reshape(-1)
        lengths = np.ones(sparse.size, dtype=np.int32)
    else:
        values = np.concatenate([s.reshape(-1) for s in sparse])
        lengths = np.concatenate([np.full(batch_size, s.shape[1], dtype=np.int32) for s in sparse])
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=keys,
        values=torch.from_numpy(values.astype(np.int64, copy=False)),
        lengths=torch.from_numpy(lengths),
    )
    return Batch(
        dense_features=torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)),
        sparse_features=kjt,
        labels=torch.from_numpy(np.asarray(labels, dtype=np.float32).reshape(-1)),
    )
