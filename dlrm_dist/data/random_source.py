"""Random batches from TorchRec's RandomRecDataset: throughput, not learning (AUC ~0.5)."""

from __future__ import annotations

import itertools
from typing import Iterator, List, Optional

from torch.utils.data import IterableDataset
from torchrec.datasets.random import RandomRecDataset
from torchrec.datasets.utils import Batch

from dlrm_dist.config import NUM_DENSE_FEATURES, SPARSE_FEATURE_NAMES


class RandomSplit(IterableDataset):
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
        self.start_batch = 0
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

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The next pass starts at batch ``start_batch`` (a resumed run); the batches
        before it are skipped, which is cheap: they cycle through 10 cached ones."""
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[Batch]:
        first, self.start_batch = self.start_batch, 0
        return itertools.islice(iter(self.dataset), first, None)
