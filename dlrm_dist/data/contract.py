"""The one contract every data source keeps, and what the trainer depends on.

A *split* (train, val or test of one rank) is an iterable of TorchRec ``Batch``
objects with a known length that can start an epoch at any batch:

* ``len(split)``: batches this rank reads per epoch; the same on every rank
  (``rank_slice`` drops the tail that does not fill a batch on every rank, so
  no rank waits in an all-to-all that another never joins).
* ``split.set_epoch(epoch, start_batch)``: the next pass reads epoch ``epoch``'s
  order from batch ``start_batch`` on, without reading the batches before it
  (a resumed run). The start batch holds for one pass: the pass after it
  starts at batch 0 again. A split never given ``set_epoch`` reads epoch 0.

``SplitBase`` keeps that bookkeeping once; a source subclasses it and writes
``__len__`` and ``batches(epoch, start_batch)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterator, Protocol, runtime_checkable

from torch.utils.data import IterableDataset

if TYPE_CHECKING:
    from torchrec.datasets.utils import Batch


@runtime_checkable
class ResumableSplit(Protocol):
    """What the trainer needs of a split (see the module docstring)."""

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None: ...

    def __iter__(self) -> Iterator["Batch"]: ...


class SplitBase(IterableDataset):
    """A ``ResumableSplit`` minus the data: subclasses implement ``__len__`` and
    ``batches``. The epoch and start batch are plain attributes, so the split can
    be pickled into DataLoader worker processes after ``set_epoch``."""

    epoch: int = 0
    start_batch: int = 0

    def __len__(self) -> int:
        raise NotImplementedError

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside [0, {len(self)}]")
        self.epoch, self.start_batch = epoch, start_batch

    def batches(self, epoch: int, start_batch: int) -> Iterator["Batch"]:
        """Batches ``start_batch, start_batch + 1, ...`` of epoch ``epoch``."""
        raise NotImplementedError

    def __iter__(self) -> Iterator["Batch"]:
        first, self.start_batch = self.start_batch, 0  # a resumed pass skips once
        return self.batches(self.epoch, first)


def rank_slice(num_samples: int, batch_size: int, rank: int, world_size: int) -> range:
    """This rank's contiguous range of ``num_samples``, a whole number of batches,
    the same number on every rank (the tail that does not fill a batch on every
    rank is dropped)."""
    per_rank = (num_samples // (world_size * batch_size)) * batch_size
    return range(rank * per_rank, (rank + 1) * per_rank)


@dataclass
class DataSplits:
    """One rank's train / val / test splits and facts worth reporting."""

    train: ResumableSplit
    val: ResumableSplit
    test: ResumableSplit
    info: Dict[str, float] = field(default_factory=dict)
    """Facts about the data worth reporting, e.g. ``teacher_val_auc``."""
