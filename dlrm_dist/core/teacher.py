"""Synthetic Criteo-shaped data whose labels come from a hidden, seeded teacher.

Random data (TorchRec's RandomRecDataset) exercises the system but cannot tell
a working model from a broken one: its AUC is 0.5 either way. Here every
sample has Criteo's shape (13 integer counts, 26 categorical ids with a
Zipf-like skew) and a label drawn from a known model:

    logit = scale * (sum_j b_j z_j                       dense part
                     + 0.25 * sum_f w_f[id_f]             one weight per id
                     + sum_{(f,g) in P} <v_f[id_f], v_g[id_g]>)   interactions
            + bias,                         label ~ Bernoulli(sigmoid(logit))

``z_j`` is the standardised log-count, ``w`` and ``v`` are per-id hashed
normals (no tables are stored, so a 40M-row table costs nothing) and ``P`` is a
seeded set of feature pairs: the teacher rewards exactly the embedding
interactions DLRM models. Its own AUC on a split is the ceiling a trained model
approaches; an AUC near 0.5 means a bug.

Samples are generated in fixed chunks seeded by (seed, split, chunk), so a
sample's value depends on its index alone, not on the world size, the batch
size or which rank reads it.

numpy only: both the online source (``dlrm_dist.data.synthetic``, which turns
samples into TorchRec batches) and the offline ``dlrm-dist synth`` (raw TSV
days, run in torch-free processes) draw from this one teacher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Tuple

import numpy as np

from dlrm_dist.core.hashing import normal
from dlrm_dist.core.criteo import NUM_DENSE_FEATURES, NUM_SPARSE_FEATURES
from dlrm_dist.core.criteo import log1p_transform as dense_transform

CHUNK = 4096
LATENT_DIM = 4
NUM_PAIRS = 8
SPLITS = {"train": 0, "val": 1, "test": 2}
_DENSE_SIGMA = 1.2


class Samples(NamedTuple):
    dense_raw: np.ndarray  # (N, 13) int64 counts, Criteo's integer features
    sparse: np.ndarray  # (N, 26) int64 ids, id_f < cardinality_f
    logits: np.ndarray  # (N,) float64, the teacher's logit
    labels: np.ndarray  # (N,) int32 in {0, 1}


def _coprime_multiplier(n: int) -> int:
    a = 2654435761
    while math.gcd(a, n) != 1:
        a += 2
    return a


@dataclass
class Teacher:
    cardinalities: List[int]
    """Distinct ids per feature; ids are in [0, cardinality)."""
    seed: int = 0
    zipf_exponent: float = 1.1
    scale: float = 1.0
    bias: float = -1.2

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 7])
        self.dense_mu = rng.uniform(0.0, 4.0, NUM_DENSE_FEATURES)
        self.dense_w = rng.normal(0.0, 0.3, NUM_DENSE_FEATURES)
        pairs = rng.choice(NUM_SPARSE_FEATURES * NUM_SPARSE_FEATURES, 4 * NUM_PAIRS, replace=False)
        self.pairs = [(int(p // NUM_SPARSE_FEATURES), int(p % NUM_SPARSE_FEATURES)) for p in pairs]
        self.pairs = [(f, g) for f, g in self.pairs if f != g][:NUM_PAIRS]
        self._mult = [_coprime_multiplier(n) for n in self.cardinalities]
        self._last: Optional[Tuple[Tuple[int, int], Samples]] = None  # see _cached_chunk

    # ---- per-id hidden parameters (hashed, never stored) -------------------
    def _w(self, f: int, ids: np.ndarray) -> np.ndarray:
        return normal(self.seed, 100 + f, ids)

    def _v(self, f: int, ids: np.ndarray) -> np.ndarray:
        cols = [normal(self.seed, 1000 + f * LATENT_DIM + k, ids) for k in range(LATENT_DIM)]
        return np.stack(cols, axis=1) * 0.5

    def _ids(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n, 26) ids: a truncated power law over ranks, scattered by a bijection."""
        s = self.zipf_exponent
        out = np.empty((n, NUM_SPARSE_FEATURES), dtype=np.int64)
        for f, card in enumerate(self.cardinalities):
            u = rng.random(n)
            if abs(s - 1.0) < 1e-9:
                rank = np.exp(u * math.log(card + 1.0))
            else:
                rank = (u * ((card + 1.0) ** (1 - s) - 1.0) + 1.0) ** (1.0 / (1 - s))
            r = np.clip(rank.astype(np.int64) - 1, 0, card - 1)
            # A fixed bijection of [0, card) so that frequent ids are not just 0, 1, 2...
            out[:, f] = (r * self._mult[f] + f * 7919) % card
        return out

    def logits(self, dense_raw: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        z = (dense_transform(dense_raw) - self.dense_mu) / _DENSE_SIGMA
        logit = z @ self.dense_w
        for f in range(NUM_SPARSE_FEATURES):
            logit += 0.25 * self._w(f, sparse[:, f])
        for f, g in self.pairs:
            logit += np.sum(self._v(f, sparse[:, f]) * self._v(g, sparse[:, g]), axis=1)
        return self.scale * logit + self.bias

    def _chunk(self, split: int, chunk: int) -> Samples:
        rng = np.random.default_rng([self.seed, split, chunk])
        counts = np.exp(rng.normal(self.dense_mu, _DENSE_SIGMA, (CHUNK, NUM_DENSE_FEATURES)))
        dense_raw = np.floor(counts).astype(np.int64) - 1  # Criteo has small negatives
        sparse = self._ids(rng, CHUNK)
        logits = self.logits(dense_raw, sparse)
        labels = (rng.random(CHUNK) < 1.0 / (1.0 + np.exp(-logits))).astype(np.int32)
        return Samples(dense_raw, sparse, logits, labels)

    def _cached_chunk(self, split: int, chunk: int) -> Samples:
        """``_chunk`` remembering the last one: consecutive batches smaller than a
        chunk (256 of 4096 samples, say) would otherwise each regenerate it."""
        key = (split, chunk)
        if self._last is None or self._last[0] != key:
            self._last = (key, self._chunk(split, chunk))
        return self._last[1]

    def draw(self, split: int, start: int, stop: int) -> Samples:
        """Samples ``[start, stop)`` of split ``split`` (any integer stream id)."""
        parts = []
        for c in range(start // CHUNK, (stop - 1) // CHUNK + 1):
            chunk = self._cached_chunk(split, c)
            lo = max(start - c * CHUNK, 0)
            hi = min(stop - c * CHUNK, CHUNK)
            parts.append(Samples(*(a[lo:hi] for a in chunk)))
        return Samples(*(np.concatenate(cols) for cols in zip(*parts)))


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney statistic over average ranks (ties
    count half). Written in numpy rather than taken from torchmetrics so that the
    torch-free ``dlrm-dist synth`` can report the teacher's AUC; tests check it
    against torchmetrics' ``binary_auroc``."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # 1-based average ranks
    pos = int(labels.sum())
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def teacher_auc(teacher: Teacher, split: "str | int", num_samples: int) -> float:
    """AUROC of the teacher's own probabilities on samples [0, num_samples) of a split
    (a name in ``SPLITS`` or any integer stream id)."""
    s = teacher.draw(SPLITS[split] if isinstance(split, str) else split, 0, num_samples)
    return auroc(s.logits, s.labels)
