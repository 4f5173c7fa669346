"""Synthetic data: Criteo-shaped, deterministic by index, learnable, evenly split across ranks."""

from __future__ import annotations

import numpy as np
import pytest

from dlrm_dist.data import multi_hot
from dlrm_dist.data.contract import rank_slice
from dlrm_dist.data.synthetic import SyntheticDataset
from dlrm_dist.core.teacher import Teacher, teacher_auc


def test_samples_depend_on_index_not_on_how_they_are_read():
    t = Teacher([1000] * 26, seed=3)
    whole = t.draw(0, 0, 10_000)
    part = t.draw(0, 4000, 9000)  # crosses a chunk boundary
    for a, b in zip(whole, part):
        np.testing.assert_array_equal(a[4000:9000], b)
    other = Teacher([1000] * 26, seed=4).draw(0, 0, 10_000)
    assert not np.array_equal(whole.labels, other.labels)


def test_criteo_shape_skew_and_signal():
    t = Teacher([5000] * 26)
    s = t.draw(1, 0, 20_000)
    assert s.dense_raw.shape == (20_000, 13) and s.sparse.shape == (20_000, 26)
    assert s.dense_raw.min() < 0, "Criteo's integer features include small negatives"
    assert s.sparse.min() >= 0 and s.sparse.max() < 5000
    counts = np.bincount(s.sparse[:, 0], minlength=5000)
    top = np.sort(counts)[::-1]
    assert top[:50].sum() > 0.25 * counts.sum(), "ids must be skewed (Zipf-like)"
    assert 0.15 < s.labels.mean() < 0.5
    assert 0.8 < teacher_auc(t, "val", 20_000) < 0.95


def test_every_rank_gets_the_same_number_of_full_batches():
    n, bs, world = 10_000, 128, 3
    slices = [rank_slice(n, bs, r, world) for r in range(world)]
    assert len({len(s) for s in slices}) == 1 and len(slices[0]) % bs == 0
    assert slices[-1].stop <= n and all(a.stop == b.start for a, b in zip(slices, slices[1:]))
    t = Teacher([100] * 26)
    lengths = [len(SyntheticDataset(t, "train", n, bs, r, world)) for r in range(world)]
    assert lengths == [26, 26, 26]


def test_batches_hash_ids_into_smaller_tables_and_expand_multi_hot():
    t = Teacher([1000] * 26)
    sizes = [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1]
    ds = SyntheticDataset(t, "train", 256, 64, 0, 1, table_sizes=[500] * 26, multi_hot_sizes=sizes)
    batch = next(iter(ds))
    kjt = batch.sparse_features
    assert kjt.keys() == [f"cat_{i}" for i in range(26)]
    assert int(kjt.values().max()) < 500
    for f, k in enumerate(sizes):
        assert kjt[f"cat_{f}"].lengths().tolist() == [k] * 64
    assert batch.dense_features.shape == (64, 13) and batch.labels.shape == (64,)


@pytest.mark.parametrize("dist", ["uniform", "pareto"])
def test_multi_hot_expansion_is_deterministic_and_in_range(dist):
    ids = np.array([0, 5, 5, 999], dtype=np.int64)
    a = multi_hot.expand(ids, table=3, rows=1000, size=10, distribution=dist, seed=1)
    b = multi_hot.expand(ids, table=3, rows=1000, size=10, distribution=dist, seed=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:, 0], ids)  # the original id comes first
    np.testing.assert_array_equal(a[1], a[2])  # same id, same bag
    assert a.min() >= 0 and a.max() < 1000


def test_a_resumed_epoch_starts_at_batch_k():
    t = Teacher([1000] * 26, seed=3)
    ds = SyntheticDataset(t, "train", 8 * 64, 64, 0, 1)
    whole = [b.labels.numpy().tobytes() for b in ds]
    ds.set_epoch(3, start_batch=5)
    assert [b.labels.numpy().tobytes() for b in ds] == whole[5:]
    assert [b.labels.numpy().tobytes() for b in ds] == whole  # one pass only


def test_train_batches_resume_across_epochs():
    """Trainer's one iterator over all epochs, started at overall batch 11 of 3 x 8."""
    import functools

    import torch

    from dlrm_dist.data.loader import make_loader
    from dlrm_dist.data.random_source import RandomSplit
    from dlrm_dist.training.trainer import _train_batches

    ds = RandomSplit(4, 8, [50] * 26, None, seed=1)
    loader = functools.partial(make_loader, device=torch.device("cpu"))
    whole = [b.dense_features.numpy().tobytes() for b in _train_batches(ds, loader, 3)]
    resumed = [b.dense_features.numpy().tobytes() for b in _train_batches(ds, loader, 3, start=11)]
    assert len(whole) == 24 and resumed == whole[11:]
