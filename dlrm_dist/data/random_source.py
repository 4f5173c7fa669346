"""Random batches from TorchRec's RandomRecDataset: throughput, not learning (AUC ~0.5)."""

from __future__ import annotations

import itertools
from typing import Iterator, List, Optional

from torchrec.datasets.random import RandomRecDataset
from torchrec.datasets.utils import Batch

from dlrm_dist.core.criteo import NUM_DENSE_FEATURES, SPARSE_FEATURE_NAMES
from dlrm_dist.data.contract import SplitBase


class RandomSplit(SplitBase):
    """``num_batches`` random batches; a fixed-size wrapper so every rank knows the count."""

    def __init__(
        self,
        batch_size: int,
        num_batches: int,
        table_sizes: List[int],
        multi_hot_sizes: Optional[List[int]],
        seed: int,
    ) -> None:
        self.num_batches = num_batches
        self._cycle: Optional[List[Batch]] = None
        self.dataset = RandomRecDataset(
            keys=SPARSE_FEATURE_NAMES,
            batch_size=batch_size,
            hash_sizes=table_sizes,
            ids_per_features=multi_hot_sizes or [1] * len(table_sizes),
            num_dense=NUM_DENSE_FEATURES,
            manual_seed=seed,
            num_batches=num_batches,
            num_generated_batches=10,  # cycle through 10 cached batches: cheap to produce
        )

    def __len__(self) -> int:
        return self.num_batches

    def batch_keys(self, epoch: int) -> Iterator[int]:
        return iter(range(self.num_batches))

    def load(self, index: int) -> Batch:
        """Batch ``index`` of RandomRecDataset's cycle through its 10 cached batches:
        skipping batches (resume, other workers' share) costs nothing."""
        if self._cycle is None:
            self._cycle = list(itertools.islice(iter(self.dataset), 10))
        return self._cycle[index % len(self._cycle)]
