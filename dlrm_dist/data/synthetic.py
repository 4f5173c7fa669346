"""``data.source=synthetic``: one rank's TorchRec batches drawn from the seeded teacher.

The teacher (``dlrm_dist.teacher``, numpy only) defines the samples and their
labels; this module slices them per rank and batch, hashes ids into the
configured tables, optionally expands them to multi-hot, and builds ``Batch``es.
A sample depends on its index alone, so resuming at batch k generates nothing
before it.
"""

from __future__ import annotations

from typing import Iterator, List, Optional

import numpy as np
from torchrec.datasets.utils import Batch

from dlrm_dist.data import multi_hot
from dlrm_dist.data.batches import dense_transform, make_batch
from dlrm_dist.data.contract import SplitBase, rank_slice
from dlrm_dist.teacher import SPLITS, Teacher


class SyntheticDataset(SplitBase):
    """One rank's batches of one split of the teacher's data."""

    def __init__(
        self,
        teacher: Teacher,
        split: str,
        num_samples: int,
        batch_size: int,
        rank: int,
        world_size: int,
        table_sizes: Optional[List[int]] = None,
        multi_hot_sizes: Optional[List[int]] = None,
        multi_hot_distribution: str = "uniform",
    ) -> None:
        self.teacher, self.split = teacher, SPLITS[split]
        self.batch_size = batch_size
        self.samples = rank_slice(num_samples, batch_size, rank, world_size)
        self.table_sizes = table_sizes or teacher.cardinalities
        self.multi_hot_sizes = multi_hot_sizes
        self.multi_hot_distribution = multi_hot_distribution

    def __len__(self) -> int:
        return len(self.samples) // self.batch_size

    def batches(self, epoch: int, start_batch: int) -> Iterator[Batch]:
        """Every epoch reads the same samples; batches before ``start_batch`` are
        not generated."""
        for b in range(start_batch, len(self)):
            start = self.samples.start + b * self.batch_size
            s = self.teacher.draw(self.split, start, start + self.batch_size)
            sparse = s.sparse % np.asarray(self.table_sizes)  # hash into smaller tables
            if self.multi_hot_sizes:
                sparse = multi_hot.expand_all(
                    sparse, self.table_sizes, self.multi_hot_sizes,
                    self.multi_hot_distribution, self.teacher.seed,
                )
            yield make_batch(dense_transform(s.dense_raw), sparse, s.labels)
