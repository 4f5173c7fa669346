"""Criteo npy days -> this rank's train / val / test batches (``data.source=criteo``).

The folder holds ``day_{i}_{dense,sparse,labels}.npy`` for i = 0 .. D-1, as
written by ``dlrm-dist preprocess`` or by TorchRec's
``BinaryCriteoUtils.tsv_to_npys`` (same layout: dense float32 (N, 13) already
transformed, sparse integer ids (N, 26), labels int32 (N, 1)). Days 0 .. D-2
are the training set, read as one sequence of rows; the last day is split as
TorchRec and MLPerf do: its first ceil(N/2) rows validate, the rest test.

Files are memory-mapped: a rank touches only the pages of its own rows, so the
host needs page cache, not RAM, for a Terabyte-sized folder. Each rank reads
one contiguous slice of each split and every rank gets the same number of full
batches (``rank_slice``: the tail is dropped, so no rank waits in an
all-to-all that another never joins). Training can shuffle the order of
batches (``data.shuffle_batches``) and rows within each day
(``data.shuffle_rows``), both seeded per epoch. Ids beyond a table are hashed into it
(``id % rows``, as TorchRec's loader does): the fused kernel would silently
map an out-of-range id to row 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from torchrec.datasets.utils import Batch

from dlrm_dist.config import DataConfig
from dlrm_dist.data.batches import BatchSpec, RawBatch
from dlrm_dist.data.contract import DataSplits, SplitBase, rank_slice
from dlrm_dist.data.npy_days import Day, open_days

if TYPE_CHECKING:
    from dlrm_dist.training.distributed import DistEnv

class CriteoDataset(SplitBase):
    """One rank's batches of a sequence of rows spread over one or more days.

    A batch's key is its rows: ``(lo, hi)`` for a contiguous run, or sorted row
    indices (``shuffle_rows``). ``load`` copies those rows out of the memory maps
    once, in the stored dtypes, and leaves hashing, multi-hot expansion and the
    KJT to the ``BatchSpec`` (on the host here, or on the GPU after the copy)."""

    def __init__(self, parts: List[Day], batch_size: int, rank: int, world_size: int,
                 table_sizes: List[int], multi_hot_sizes: Optional[List[int]] = None,
                 multi_hot_distribution: str = "uniform", seed: int = 0, shuffle: bool = False,
                 shuffle_rows: bool = False) -> None:
        self.parts, self.batch_size = parts, batch_size
        self.starts = np.cumsum([0] + [len(p[0]) for p in parts])
        self.rows = rank_slice(int(self.starts[-1]), batch_size, rank, world_size)
        self.spec = BatchSpec(list(table_sizes), multi_hot_sizes, multi_hot_distribution, seed)
        self.seed, self.shuffle, self.shuffle_rows = seed, shuffle, shuffle_rows

    def __len__(self) -> int:
        return len(self.rows) // self.batch_size

    def batch_order(self, epoch: int) -> np.ndarray:
        """Batch indices in the order an epoch reads them: seeded by (seed, epoch), the
        same on every rank, so runs repeat exactly."""
        order = np.arange(len(self))
        if self.shuffle:
            np.random.default_rng([self.seed, epoch]).shuffle(order)
        return order

    def batch_keys(self, epoch: int) -> Iterator[Union[Tuple[int, int], np.ndarray]]:
        """The rows of each batch, in reading order. With ``shuffle_rows`` this rank's
        rows are permuted within each day (seeded by seed, epoch, day), so a batch mixes
        rows from all over a day while only one day's permutation is held at a time
        (a Terabyte day is ~24M rows per rank on 8 ranks: 190 MB of indices)."""
        bs = self.batch_size
        if not self.shuffle_rows:
            for b in self.batch_order(epoch):
                lo = self.rows.start + int(b) * bs
                yield (lo, lo + bs)
            return
        carry = np.empty(0, dtype=np.int64)
        for day, (start, stop) in enumerate(zip(self.starts[:-1], self.starts[1:])):
            lo, hi = max(int(start), self.rows.start), min(int(stop), self.rows.stop)
            if lo >= hi:
                continue
            rows = np.concatenate([carry, lo + np.random.default_rng([self.seed, epoch, day]).permutation(hi - lo)])
            full = len(rows) // bs * bs
            yield from np.sort(rows[:full].reshape(-1, bs), axis=1)  # sorted: fewer page faults
            carry = rows[full:]

    def take(self, rows: Union[Tuple[int, int], np.ndarray], copy: bool = True) -> Day:
        """The rows of one batch (a ``(lo, hi)`` run or sorted indices), copied out of
        the memory maps of their days into one array per column group, stored dtypes.
        ``copy=False``: views into the memory map when the run lies in one day."""
        n = rows[1] - rows[0] if isinstance(rows, tuple) else len(rows)
        if not copy and isinstance(rows, tuple):
            p = int(np.searchsorted(self.starts, rows[0], side="right")) - 1
            lo, hi = rows[0] - int(self.starts[p]), rows[1] - int(self.starts[p])
            if hi <= len(self.parts[p][0]):
                return tuple(x[lo:hi] for x in self.parts[p])  # type: ignore[return-value]
        out = tuple(np.empty((n,) + x.shape[1:], x.dtype) for x in self.parts[0])
        at = 0
        for part, start, stop in zip(self.parts, self.starts[:-1], self.starts[1:]):
            if isinstance(rows, tuple):
                lo, hi = max(rows[0], int(start)), min(rows[1], int(stop))
                if lo >= hi:
                    continue
                for o, x in zip(out, part):
                    o[at:at + hi - lo] = x[lo - start:hi - start]
            else:
                lo, hi = np.searchsorted(rows, [start, stop])
                if lo == hi:
                    continue
                for o, x in zip(out, part):
                    np.take(x, rows[lo:hi] - start, axis=0, out=o[at:at + hi - lo], mode="clip")  # in range: unbuffered
            at += hi - lo
        return out  # type: ignore[return-value]

    def load(self, rows: Union[Tuple[int, int], np.ndarray]) -> Union[Batch, RawBatch]:
        raw_ids = self.deliver == "raw_ids"  # ids leave as they are: they need memory of their own
        dense, sparse, labels = self.take(rows, copy=raw_ids)
        dense_t = torch.from_numpy(np.array(dense, dtype=np.float32))  # always a copy (small)
        labels_t = torch.from_numpy(labels.reshape(-1).astype(np.float32))
        if raw_ids:
            return RawBatch(dense_t, torch.from_numpy(sparse), labels_t, self.spec)
        # finished on the host, the ids are read once, from the page cache when the batch
        # is one run of one day: the transpose in ``host_values`` is their only copy
        return self.delivered(RawBatch(dense_t, None, labels_t, self.spec,
                                       torch.from_numpy(self.spec.host_values(sparse))))

    def read(self, lo: int, hi: int) -> Day:
        """Rows [lo, hi) of the sequence, copied out of the memory maps."""
        return self.take((lo, hi))

    def to_batch(self, dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray) -> Batch:
        """Rows as the model sees them: ids hashed into their tables, multi-hot expanded,
        by the ``BatchSpec`` training uses (``dlrm-dist predict`` reads through here too,
        so it sees what training saw)."""
        return RawBatch(torch.from_numpy(np.array(dense, dtype=np.float32)), torch.from_numpy(np.array(sparse)),
                        torch.from_numpy(labels.reshape(-1).astype(np.float32)), self.spec).finish()


def build_criteo_splits(cfg: DataConfig, batch_size: int, eval_batch_size: int,
                        table_sizes: List[int], env: "DistEnv") -> DataSplits:
    """Train, val and test (see :func:`split_parts`) of this rank."""
    days = open_days(Path(cfg.path))
    parts = split_parts(days)

    def dataset(parts: List[Day], bs: int, train: bool) -> CriteoDataset:
        return CriteoDataset(parts, bs, env.rank, env.world_size, table_sizes, cfg.multi_hot_sizes,
                             cfg.multi_hot_distribution, cfg.seed, shuffle=train and cfg.shuffle_batches,
                             shuffle_rows=train and cfg.shuffle_rows)

    splits = DataSplits(
        train=dataset(parts["train"], batch_size, True),
        val=dataset(parts["val"], eval_batch_size, False),
        test=dataset(parts["test"], eval_batch_size, False),
    )
    rows = {name: sum(len(p[0]) for p in ps) for name, ps in parts.items()}
    splits.info.update(criteo_days=len(days), train_rows=rows["train"], val_rows=rows["val"],
                       test_rows=rows["test"])
    return splits


def split_parts(days: List[Day]) -> Dict[str, List[Day]]:
    """The split rule: days 0 .. D-2 train; the last day's first ceil(N/2) rows
    validate (as TorchRec's InMemoryBinaryCriteoIterDataPipe), the rest test."""
    last = days[-1]
    half = (len(last[0]) + 1) // 2
    return {"train": days[:-1], "val": [tuple(a[:half] for a in last)],  # type: ignore[dict-item]
            "test": [tuple(a[half:] for a in last)]}
