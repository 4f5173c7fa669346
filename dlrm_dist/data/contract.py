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

``SplitBase`` keeps that bookkeeping once, and the split among DataLoader
worker processes: a source subclasses it and writes ``__len__``,
``batch_keys(epoch)`` (what each batch of the epoch is, in reading order, cheap:
row indices, sample offsets; nothing is read) and ``load(key)`` (the batch).
With N workers, worker w loads batches w, w + N, w + 2N, ... of the pass; a
DataLoader takes one item from each worker in turn, so the batches arrive in the
same order as with no worker, and the keys of skipped batches are only computed.

A split may yield a ``dlrm_dist.data.batches.RawBatch`` instead of a finished
TorchRec ``Batch`` (``SplitBase.deliver``): its ``.to(device)``, which TorchRec's
train and eval pipelines call when they copy a batch to the device, finishes it
there. ``make_loader`` picks: on CUDA ``raw_ids`` (hashing, multi-hot expansion
and the KJT on the GPU: the work that grows with the pooling factor); on CPU
with workers ``values`` (hashed and expanded in the worker, only the KJT wrapped
in the training process); else ``batch``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Iterator, Protocol, runtime_checkable

from torch.utils.data import IterableDataset, get_worker_info

if TYPE_CHECKING:
    from torchrec.datasets.utils import Batch


@runtime_checkable
class ResumableSplit(Protocol):
    """What the trainer needs of a split (see the module docstring)."""

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None: ...

    def __iter__(self) -> Iterator["Batch"]: ...


class SplitBase(IterableDataset):
    """A ``ResumableSplit`` minus the data: subclasses implement ``__len__``,
    ``batch_keys`` and ``load``. The epoch, start batch and ``deliver``
    are plain attributes, so the split can be pickled into DataLoader worker
    processes after ``set_epoch``."""

    epoch: int = 0
    start_batch: int = 0
    deliver: str = "batch"
    """``batch``: finished ``Batch``es; ``raw_ids``: ``RawBatch``es of ids as stored;
    ``values``: ``RawBatch``es of finished values (see the module docstring)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside [0, {len(self)}]")
        self.epoch, self.start_batch = epoch, start_batch

    def batch_keys(self, epoch: int) -> Iterator[Any]:
        """What each batch of epoch ``epoch`` is, in reading order; cheap (reads nothing)."""
        raise NotImplementedError

    def load(self, key: Any) -> Any:
        """The batch a key names, as ``deliver`` asks (``self.delivered(raw)``)."""
        raise NotImplementedError

    def delivered(self, raw: Any) -> Any:
        """A ``RawBatch`` as ``deliver`` asks for it."""
        if self.deliver == "raw_ids":
            return raw
        if raw.values is None:  # hash and expand here
            raw = raw.with_values()
        return raw if self.deliver == "values" else raw.finish()

    def batches(self, epoch: int, start_batch: int, step: int = 1) -> Iterator[Any]:
        """Batches ``start_batch, start_batch + step, ...`` of epoch ``epoch``; the
        ones in between are not read, only their keys computed."""
        for key in itertools.islice(self.batch_keys(epoch), start_batch, len(self), step):
            yield self.load(key)

    def __iter__(self) -> Iterator[Any]:
        first, self.start_batch = self.start_batch, 0  # a resumed pass skips once
        worker = get_worker_info()
        if worker is None:
            return self.batches(self.epoch, first)
        # worker w of N: batches first + w, first + w + N, ...; the DataLoader takes one
        # item from each worker in turn, which restores the order of a single process
        return self.batches(self.epoch, first + worker.id, worker.num_workers)


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
