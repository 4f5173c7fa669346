"""Turn arrays into TorchRec ``Batch`` objects (dense, KeyedJaggedTensor, labels).

Every source (random, synthetic, criteo) ends here, so the model sees one
format: ``dense_features`` (B, 13) float32, ``sparse_features`` a KJT keyed by
``cat_0 ... cat_25`` (feature-major values, one length per sample and
feature), ``labels`` (B,) float32.

The criteo and synthetic sources read a ``RawBatch`` (dense, one-hot ids as
stored, labels) and finish it with a ``BatchSpec``: ids hashed into the tables
(``id % rows``), multi-hot bags expanded (``multi_hot.Expander``), the KJT built
with lengths and offsets computed once per batch size (they are the same for
every batch; TorchRec's ``InMemoryBinaryCriteoIterDataPipe`` does the same).
Finishing is torch ops, so it runs wherever the ids are: on the host in a
DataLoader worker, or on the GPU after the pipeline's copy (``RawBatch.to``).

A ``RawBatch`` a DataLoader worker sends is pickled as one buffer with its
``BatchSpec`` by name; the spec unpickles as the very spec its split holds in the
training process (``BatchSpec.__reduce__``), so the per-size constants (lengths,
offsets, the multi-hot gather index: 13.4 MiB at DCNv2 batch 8192) are built
once per split and device, not once per batch.
"""

from __future__ import annotations

import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec.streamable import Pipelineable

from dlrm_dist.core.criteo import SPARSE_FEATURE_NAMES, log1p_transform
from dlrm_dist.data import multi_hot
from dlrm_dist.data.multi_hot import Expander


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


@dataclass
class BatchSpec:
    """How one-hot ids as stored become the model's KJT: the tables they are hashed
    into and the multi-hot bags (None: one-hot)."""

    table_sizes: List[int]
    multi_hot_sizes: Optional[List[int]] = None
    distribution: str = "uniform"
    seed: int = 0
    keys: List[str] = field(default_factory=lambda: list(SPARSE_FEATURE_NAMES))
    _cache: Dict[Tuple[int, str], Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._sizes = np.asarray(self.table_sizes, dtype=np.int64)
        self.expander = (Expander(self.table_sizes, self.multi_hot_sizes, self.distribution, self.seed)
                         if self.multi_hot_sizes else None)
        self.builds = 0  # times _constants built a set (the loader tests count them)
        self._token = uuid.uuid4().hex  # names this spec in every process its batches visit
        _SPECS[self._token] = self

    @property
    def definition(self) -> tuple:
        """What the spec's output depends on: equal definitions finish batches alike."""
        return (tuple(self.table_sizes), tuple(self.multi_hot_sizes) if self.multi_hot_sizes else None,
                self.distribution, self.seed, tuple(self.keys))

    def __reduce__(self) -> tuple:
        """Pickled by name: a worker's batch unpickles as the very spec its split holds
        in the training process, caches included (a process that has no spec of that
        name, e.g. a spawned worker, builds one from the definition). Pickling the
        caches would send device tensors between processes; dropping them (as before)
        rebuilt them for every batch. ``copy.copy`` returns the spec itself."""
        return (_shared_spec, (self._token, self.definition))

    def _constants(self, batch_size: int, device: torch.device) -> Tuple[Any, ...]:
        """Per batch size and device, once: table sizes, and the KJT's lengths, offsets
        and per-key counts (every sample has sizes[f] ids of feature f). Built on the
        device itself: one small copy of the per-feature sizes, not of B x F lengths."""
        key = (batch_size, str(device))
        if key not in self._cache:
            self.builds += 1
            per = self.multi_hot_sizes or [1] * len(self.keys)
            lengths = torch.tensor(per, dtype=torch.int32, device=device).repeat_interleave(batch_size)
            offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=device)
            torch.cumsum(lengths, 0, dtype=torch.int32, out=offsets[1:])
            length_per_key = [k * batch_size for k in per]
            self._cache[key] = (
                torch.tensor(self.table_sizes, dtype=torch.int64, device=device)[:, None],
                lengths, offsets, length_per_key,
                np.cumsum([0] + length_per_key).tolist(), {k: i for i, k in enumerate(self.keys)},
            )
        return self._cache[key]

    def host_values(self, ids: np.ndarray) -> np.ndarray:
        """numpy, single-threaded (torch's intra-op threads only contend at this size):
        (B, F) ids as stored -> the KJT's flat values."""
        # feature-major, in the stored dtype when it is 32-bit: a 32-bit division is
        # cheaper, and one division per id is most of the host's cost
        narrow = ids.dtype.itemsize == 4
        values = np.empty(ids.shape[::-1], dtype=ids.dtype if narrow else np.int64)
        values[...] = ids.T
        # hash only the features whose ids fall outside their table (small tables often need none)
        low = values.min(axis=1)
        for f in np.flatnonzero((values.max(axis=1) >= self._sizes) | (low < 0)):
            mod = np.fmod if low[f] >= 0 else np.remainder  # C's % is a little cheaper than floor-mod
            mod(values[f], values.dtype.type(self.table_sizes[f]), out=values[f])
        values = values.astype(np.int64, copy=False)
        if not self.multi_hot_sizes:
            return values.reshape(-1)
        return np.concatenate([  # the reference numpy expansion; the device one matches it bit for bit
            multi_hot.expand(values[f], f, self.table_sizes[f], k, self.distribution, self.seed).reshape(-1)
            if k > 1 else values[f] for f, k in enumerate(self.multi_hot_sizes)])

    def device_values(self, ids: torch.Tensor) -> torch.Tensor:
        """torch, for a GPU: a dozen kernels and no host sync (every feature is hashed,
        bags expanded by ``multi_hot.Expander``); the same values as ``host_values``."""
        sizes = self._constants(ids.shape[0], ids.device)[0]
        values = torch.empty(ids.shape[::-1], dtype=torch.int64, device=ids.device)
        values = values.copy_(ids.t()).remainder_(sizes)
        return self.expander(values) if self.expander else values.reshape(-1)

    def values(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` (B, F) one-hot as stored -> the KJT's flat values, where ``ids`` are."""
        if ids.device.type == "cpu":
            return torch.from_numpy(self.host_values(ids.numpy()))
        return self.device_values(ids)

    def wrap(self, dense: torch.Tensor, values: torch.Tensor, labels: torch.Tensor) -> Batch:
        """The ``Batch`` of finished values: the KJT's lengths and offsets are cached."""
        batch_size = dense.shape[0]
        _, lengths, offsets, length_per_key, offset_per_key, index_per_key = self._constants(
            batch_size, values.device)
        kjt = KeyedJaggedTensor(
            keys=self.keys, values=values, lengths=lengths, offsets=offsets, stride=batch_size,
            length_per_key=length_per_key, offset_per_key=offset_per_key, index_per_key=index_per_key,
        )
        return Batch(dense_features=dense, sparse_features=kjt, labels=labels)

    def finish(self, dense: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor) -> Batch:
        """``ids`` (B, F) one-hot as stored, on any device -> a ``Batch`` on that device."""
        return self.wrap(dense, self.values(ids), labels)


def _view(packed: torch.Tensor, where: Tuple[torch.dtype, Tuple[int, ...], int]) -> torch.Tensor:
    """The tensor of dtype and shape stored at byte ``offset`` of ``packed``."""
    dtype, shape, offset = where
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return packed[offset:offset + nbytes].view(dtype).view(shape)


def _unpack_raw_batch(packed: torch.Tensor, layout: list, spec: "BatchSpec") -> "RawBatch":
    """``RawBatch.__reduce__``'s inverse: views into the one received buffer."""
    dense, ids, labels, values = (None if w is None else _view(packed, w) for w in layout)
    return RawBatch(dense, ids, labels, spec, values)  # type: ignore[arg-type]


_SPECS: "weakref.WeakValueDictionary[str, BatchSpec]" = weakref.WeakValueDictionary()
"""This process's ``BatchSpec``s by name (weak: a spec no split holds goes)."""


def _shared_spec(token: str, definition: tuple) -> BatchSpec:
    """Unpickle a ``BatchSpec``: this process's spec named ``token``, or a new one of
    ``definition`` that takes the name."""
    spec = _SPECS.get(token)
    if spec is None:
        tables, multi_hot_sizes, distribution, seed, keys = definition
        spec = BatchSpec(list(tables), list(multi_hot_sizes) if multi_hot_sizes else None, distribution, seed,
                         list(keys))
        _SPECS.pop(spec._token, None)
        spec._token = token
        _SPECS[token] = spec
    return spec


@dataclass
class RawBatch(Pipelineable):
    """A batch as read: dense (B, 13) float32, ``ids`` (B, F) one-hot as stored,
    labels (B,) float32, and the ``BatchSpec`` that finishes it; or, instead of
    ``ids``, the finished flat ``values`` (hashed, expanded on the host). ``to(device)``
    returns the finished ``Batch`` on that device: TorchRec's pipelines call it
    when they copy a batch to the device (on their copy stream)."""

    dense_features: torch.Tensor
    ids: Optional[torch.Tensor]
    labels: torch.Tensor
    spec: BatchSpec
    values: Optional[torch.Tensor] = None

    def _tensors(self) -> List[torch.Tensor]:
        return [t for t in (self.dense_features, self.ids, self.labels, self.values) if t is not None]

    def __reduce__(self) -> tuple:
        """Pickled as one byte buffer (a DataLoader worker's hand-off): torch shares each
        tensor a worker sends through a shared-memory file of its own, which the
        training process fetches, maps and later frees: ~0.5 ms of its CPU per tensor
        on the 2-core dev machine, whatever the size. One buffer makes it one per batch
        (``device_finish`` in ``benchmarks/loader.py`` measures what is left)."""
        parts = (self.dense_features, self.ids, self.labels, self.values)
        layout, offset = [], 0
        for t in parts:
            layout.append(None if t is None else (t.dtype, tuple(t.shape), offset))
            offset += 0 if t is None else -(-t.numel() * t.element_size() // 8) * 8  # 8-byte aligned
        packed = torch.empty(offset, dtype=torch.uint8)
        for t, where in zip(parts, layout):
            if t is not None:
                _view(packed, where).copy_(t)
        return (_unpack_raw_batch, (packed, layout, self.spec))

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:  # type: ignore[override]
        move = lambda t: t.to(device=device, non_blocking=non_blocking)  # noqa: E731
        dense, labels = move(self.dense_features), move(self.labels)
        if self.values is not None:
            return self.spec.wrap(dense, move(self.values), labels)
        return self.spec.finish(dense, move(self.ids), labels)

    def finish(self) -> Batch:
        """The finished batch where the arrays are (the host)."""
        return self.to(self.dense_features.device)

    def with_values(self) -> "RawBatch":
        """Hashed and expanded here; only the KJT is left to ``to``. What a DataLoader
        worker sends on a CPU job: the KJT's lengths and offsets, as large as the ids
        of a one-hot batch and the same for every batch, stay out of the transfer."""
        return RawBatch(self.dense_features, None, self.labels, self.spec, self.spec.values(self.ids))

    def record_stream(self, stream: torch.Stream) -> None:
        for t in self._tensors():
            t.record_stream(stream)

    def pin_memory(self) -> "RawBatch":
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return RawBatch(pin(self.dense_features), pin(self.ids), pin(self.labels), self.spec, pin(self.values))
