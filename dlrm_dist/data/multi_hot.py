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

from typing import TYPE_CHECKING, List

import numpy as np

from dlrm_dist.core.hashing import mix64, uniform

if TYPE_CHECKING:
    import torch

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


# ---------------------------------------------------------------- torch, on the device
# The same draws in torch int64 ops, so a batch can be expanded after its copy to
# the GPU (the work grows with the pooling factor: 214 ids per sample for DCNv2
# against 26). torch has no full uint64 arithmetic; int64 multiplication, addition
# and xor wrap exactly like uint64 (two's complement), and a logical right shift is
# an arithmetic one masked to the low bits. Bit-identical to ``expand`` (tested).


def _signed(c: int) -> int:
    """A uint64 constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


_M1_T, _M2_T, _GOLDEN_T = (_signed(int(c)) for c in (
    np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)))


def _shr(x: "torch.Tensor", s: int) -> "torch.Tensor":
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix64_t(x: "torch.Tensor") -> "torch.Tensor":
    x = (x ^ _shr(x, 30)) * _M1_T
    x = (x ^ _shr(x, 27)) * _M2_T
    return x ^ _shr(x, 31)


class Expander:
    """All tables at once, in torch: one-hot ids (F, B) feature-major (already hashed
    into the tables) -> the KJT's values: for each feature f, the (B, sizes[f]) bags
    row-major, as ``expand_all`` + ``make_batch`` lay them out. Built once per split;
    constants go to each device on first use."""

    def __init__(self, table_sizes: List[int], sizes: List[int], distribution: str, seed: int) -> None:
        if distribution not in ("uniform", "pareto"):
            raise ValueError(f"unknown multi-hot distribution {distribution!r}")
        self.sizes, self.distribution = list(sizes), distribution
        # one row per extra id (f, slot >= 1): its feature, table rows and stream key
        self.feature = [f for f, k in enumerate(sizes) for _ in range(1, k)]
        self.rows = [int(table_sizes[f]) for f in self.feature]
        self.keys = [_signed(int(mix64(np.uint64((seed * 1_000_003 + 1_000 + f * 1_000 + slot) & (2**64 - 1)))))
                     for f, k in enumerate(sizes) for slot in range(1, k)]
        self._consts: dict = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_consts": {}}  # device tensors stay behind

    def _constants(self, batch_size: int, device: "torch.device") -> tuple:
        import torch

        key = (batch_size, str(device))
        if key not in self._consts:
            t = lambda v, dt: torch.tensor(v, dtype=dt, device=device)  # noqa: E731
            num_f = len(self.sizes)
            # the row of ``cat([ids, extra])`` holding slot j of feature f
            first_extra = np.cumsum([0] + [k - 1 for k in self.sizes])
            gather = []
            for f, k in enumerate(self.sizes):
                rows = np.array([f] + [num_f + first_extra[f] + j for j in range(k - 1)])
                # bag-major: sample b's k ids, then sample b + 1's
                gather.append((rows[None, :] * batch_size + np.arange(batch_size)[:, None]).reshape(-1))
            self._consts[key] = (
                t(self.feature, torch.int64), t(self.keys, torch.int64)[:, None],
                t(self.rows, torch.float64)[:, None], t(self.rows, torch.int64)[:, None],
                torch.from_numpy(np.concatenate(gather)).to(device),
            )
        return self._consts[key]

    def __call__(self, ids: "torch.Tensor") -> "torch.Tensor":
        """``ids`` (F, B) int64 -> flat values (sum(sizes) * B,) int64."""
        import torch

        feature, keys, rows_f, rows_i, gather = self._constants(ids.shape[1], ids.device)
        h = _mix64_t(ids.index_select(0, feature) * _GOLDEN_T + keys)  # (extra, B)
        u = _shr(h, 11).to(torch.float64) * (1.0 / (1 << 53))
        if self.distribution == "uniform":
            extra = torch.minimum((u * rows_f).to(torch.int64), rows_i - 1)
        else:
            draw = torch.clamp_max(torch.pow(1.0 - u, -1.0 / PARETO_A) - 1.0, 2.0**62)
            extra = draw.to(torch.int64) % rows_i
        return torch.cat([ids, extra]).reshape(-1).index_select(0, gather)
