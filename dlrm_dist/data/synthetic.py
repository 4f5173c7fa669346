"""``data.source=synthetic``: one rank's TorchRec batches drawn from the seeded teacher.

The teacher (``dlrm_dist.core.teacher``, numpy only) defines the samples and their
labels; this module slices them per rank and batch, hashes ids into the
configured tables, optionally expands them to multi-hot, and builds ``Batch``es.
A sample depends on its index alone, so resuming at batch k generates nothing
before it.
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Union

import numpy as np
import torch
from torchrec.datasets.utils import Batch

from dlrm_dist.data.batches import BatchSpec, RawBatch, dense_transform
from dlrm_dist.data.contract import SplitBase, rank_slice
from dlrm_dist.core.teacher import SPLITS, Teacher


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
        self.spec = BatchSpec(list(table_sizes or teacher.cardinalities), multi_hot_sizes,
                              multi_hot_distribution, teacher.seed)

    def __len__(self) -> int:
        return len(self.samples) // self.batch_size

    def batch_keys(self, epoch: int) -> Iterator[int]:
        """Every epoch reads the same samples: a batch is its first sample's index."""
        return (self.samples.start + b * self.batch_size for b in range(len(self)))

    def load(self, start: int) -> Union[Batch, RawBatch]:
        """Draws the batch's samples; ids are hashed into the tables (and expanded to
        multi-hot) by the ``BatchSpec``."""
        s = self.teacher.draw(self.split, start, start + self.batch_size)
        raw = RawBatch(torch.from_numpy(dense_transform(s.dense_raw)), torch.from_numpy(s.sparse),
                       torch.from_numpy(np.asarray(s.labels, dtype=np.float32).reshape(-1)), self.spec)
        return self.delivered(raw)
