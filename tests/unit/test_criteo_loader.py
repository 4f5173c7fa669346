"""``data.source=criteo``: npy days -> each rank's train / val / test batches."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch

from criteo_text import random_lines, reference_parse, write_lines
from dlrm_dist.config import DataConfig
from dlrm_dist.data.build import build_data
from dlrm_dist.prep import preprocess
from dlrm_dist.data.criteo import build_criteo_splits
from dlrm_dist.data.npy_days import CriteoDataError
from dlrm_dist.core.criteo import log1p_transform
from dlrm_dist.training.distributed import DistEnv

BIG = [2**40] * 26  # tables larger than any id: no hashing


def env(rank: int = 0, world: int = 1) -> DistEnv:
    return DistEnv(rank, world, rank, world, torch.device("cpu"), "gloo")


def write_raw_days(folder: Path, sizes: List[int], seed: int = 0) -> List[List[str]]:
    """Random raw days; dense values below 10^5, as in Criteo (TorchRec's tsv_to_npys holds
    them in int32, and this test inverts its float32 log, exact to ~0.05 at 10^5)."""
    folder.mkdir(parents=True, exist_ok=True)
    days = [random_lines(n, seed=seed + i, big=10**5) for i, n in enumerate(sizes)]
    for i, lines in enumerate(days):
        write_lines(folder / f"day_{i}", lines)
    return days


def our_npy(raw: Path, out: Path, *extra: str) -> Path:
    assert preprocess.main(["--dataset", "criteo_1tb", "--input", str(raw), "--output", str(out),
                            "--workers", "1", "--no-progress", *extra]) == 0
    return out


def batches(ds) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(dense (B,13), ids (B,26), labels (B,)) of every batch of a one-hot dataset."""
    out = []
    for b in ds:
        ids = b.sparse_features.values().numpy().reshape(26, -1).T  # KJT values are feature-major
        out.append((b.dense_features.numpy(), ids, b.labels.numpy()))
    return out


def splits(path: Path, batch_size: int = 64, rank: int = 0, world: int = 1, tables=BIG, **cfg):
    """What build_data does for source=criteo, with DataConfig fields as keywords."""
    data_cfg = DataConfig(source="criteo", path=str(path), **cfg)
    return build_criteo_splits(data_cfg, batch_size, data_cfg.eval_batch_size or batch_size, list(tables),
                               env(rank, world))


def test_loader_reads_torchrec_tsv_to_npys_output_and_ours_as_the_same_batches(tmp_path):
    """TorchRec's own preprocessing and ours give the same ids and labels, batch for batch.
    The dense values differ by design: TorchRec stores log(x - min_of_file + 2) (its
    ``tsv_to_npys``), ours log(1 + max(x, 0)); both encode the same raw integers, which
    is what is compared for them."""
    from torchrec.datasets.criteo import BinaryCriteoUtils

    raw = tmp_path / "raw"
    days = write_raw_days(raw, [300, 260, 200], seed=30)
    theirs = tmp_path / "torchrec"
    theirs.mkdir()
    for day in range(3):
        BinaryCriteoUtils.tsv_to_npys(str(raw / f"day_{day}"), *(str(theirs / f"day_{day}_{k}.npy")
                                                                  for k in ("dense", "sparse", "labels")))
    # TorchRec's shift per row: each file's minimum (empty fields count as 0) minus 2
    shift = {"train": np.repeat([reference_parse(d)[1].min() - 2 for d in days[:2]], [300, 260])}
    shift["val"] = shift["test"] = np.full(200, reference_parse(days[2])[1].min() - 2)
    ours = our_npy(raw, tmp_path / "ours")
    a, b = splits(theirs), splits(ours)
    for split in ("train", "val", "test"):
        ba, bb = batches(getattr(a, split)), batches(getattr(b, split))
        assert len(ba) == len(bb) > 0
        for x, y in zip(ba, bb):
            np.testing.assert_array_equal(x[1], y[1])  # ids
            np.testing.assert_array_equal(x[2], y[2])  # labels
        dense_t = np.concatenate([x[0] for x in ba]).astype(np.float64)
        first_row = 100 if split == "test" else 0  # test starts at ceil(200 / 2)
        raw_t = np.rint(np.exp(dense_t)).astype(np.int64) + shift[split][first_row:first_row + len(dense_t), None]
        np.testing.assert_array_equal(log1p_transform(raw_t), np.concatenate([y[0] for y in bb]))


def test_log_plus3_matches_torchrec_when_the_file_minimum_is_minus_one(tmp_path):
    """The MLPerf Terabyte situation: every day's minimum is -1, so TorchRec's log(x - min + 2)
    is log(x + 3), which ``--dense-transform log_plus3`` writes (to float32 rounding)."""
    from torchrec.datasets.criteo import BinaryCriteoUtils

    raw = tmp_path / "raw"
    raw.mkdir()
    rows = [line.split("\t") for line in random_lines(200, seed=40, big=10**5)]
    rows[0][1] = "-1"
    lines = ["\t".join(f[:1] + ["-1" if v.startswith("-") else v for v in f[1:14]] + f[14:]) for f in rows]
    write_lines(raw / "day_0", lines)
    write_lines(raw / "day_1", lines)
    assert reference_parse(lines)[1].min() == -1
    BinaryCriteoUtils.tsv_to_npys(str(raw / "day_0"), *(str(tmp_path / f"t_{k}.npy") for k in ("d", "s", "l")))
    ours = our_npy(raw, tmp_path / "ours", "--dense-transform", "log_plus3")
    np.testing.assert_allclose(np.load(ours / "day_0_dense.npy"), np.load(tmp_path / "t_d.npy"), rtol=2e-7)
    np.testing.assert_array_equal(np.load(ours / "day_0_sparse.npy"), np.load(tmp_path / "t_s.npy"))


def test_splits_and_rank_slices_cover_the_days_as_documented(tmp_path):
    raw = tmp_path / "raw"
    days = write_raw_days(raw, [170, 95, 131], seed=50)  # uneven; a batch spans days 0-1
    out = our_npy(raw, tmp_path / "npy")
    train_lines, last = days[0] + days[1], days[2]
    bs, world = 16, 2
    per_rank = [splits(out, bs, rank, world, eval_batch_size=8) for rank in range(world)]
    assert [len(s.train) for s in per_rank] == [(265 // (world * bs))] * 2  # 8 each, tail dropped
    assert [len(s.val) for s in per_rank] == [math.ceil(131 / 2) // (world * 8)] * 2  # val = first 66 rows
    assert per_rank[0].info["criteo_days"] == 3 and per_rank[0].info["val_rows"] == 66
    labels, _, ids = reference_parse(train_lines)
    for rank, s in enumerate(per_rank):
        got = batches(s.train)
        start = rank * len(got) * bs  # each rank reads one contiguous slice
        np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), ids[start:start + len(got) * bs])
        np.testing.assert_array_equal(np.concatenate([g[2] for g in got]), labels[start:start + len(got) * bs])
    lab_last, _, ids_last = reference_parse(last)
    val0, test1 = batches(per_rank[0].val), batches(per_rank[1].test)
    np.testing.assert_array_equal(np.concatenate([g[1] for g in val0]), ids_last[:len(val0) * 8])
    test_start = 66 + len(test1) * 8  # rank 1's slice of the second half
    np.testing.assert_array_equal(np.concatenate([g[2] for g in test1]), lab_last[test_start:test_start + len(test1) * 8])


def test_shuffled_batch_order_is_seeded_per_epoch_and_a_permutation(tmp_path):
    raw = tmp_path / "raw"
    write_raw_days(raw, [320, 40], seed=60)
    out = our_npy(raw, tmp_path / "npy")
    plain = [b[2].tobytes() for b in batches(splits(out, 16).train)]
    s1, s2 = splits(out, 16, shuffle_batches=True, seed=3), splits(out, 16, shuffle_batches=True, seed=3)
    e0 = [b[2].tobytes() for b in batches(s1.train)]
    assert e0 == [b[2].tobytes() for b in batches(s1.train)]  # no set_epoch: the same epoch again
    s1.train.set_epoch(1)
    e1 = [b[2].tobytes() for b in batches(s1.train)]
    assert e0 == [b[2].tobytes() for b in batches(s2.train)]  # same seed, same epoch: same order
    assert e0 != e1 and e0 != plain  # another epoch, another order
    assert sorted(e0) == sorted(plain) == sorted(e1)  # every batch exactly once


def test_shuffled_rows_stay_in_their_day_and_each_is_read_once_per_epoch(tmp_path):
    raw = tmp_path / "raw"
    days = write_raw_days(raw, [200, 120, 40], seed=61)
    out = our_npy(raw, tmp_path / "npy")
    first_day_ids = {tuple(r) for r in reference_parse(days[0])[2]}
    plain = splits(out, 16).train
    s1, s2 = splits(out, 16, shuffle_rows=True, seed=5), splits(out, 16, shuffle_rows=True, seed=5)
    rows = lambda bs: np.ascontiguousarray(np.concatenate([b[1] for b in bs]))  # noqa: E731
    e0, again = rows(batches(s1.train)), rows(batches(s2.train))
    s1.train.set_epoch(1)
    e1 = rows(batches(s1.train))
    ref = rows(batches(plain))
    assert len(batches(s1.train)) == len(plain) == 20
    np.testing.assert_array_equal(e0, again)  # same seed and epoch: same order
    assert not np.array_equal(e0, ref) and not np.array_equal(e0, e1)
    for got in (e0, e1):  # a permutation of the same rows
        np.testing.assert_array_equal(np.sort(got.view("V208").ravel()), np.sort(ref.view("V208").ravel()))
    # day 0's 200 rows are read (shuffled) before any row of day 1
    assert {tuple(r) for r in e0[:192]} <= first_day_ids


def test_ids_beyond_a_table_are_hashed_into_it_and_multi_hot_expands(tmp_path):
    raw = tmp_path / "raw"
    days = write_raw_days(raw, [64, 64], seed=70)
    out = our_npy(raw, tmp_path / "npy")
    tables = [1000 + f for f in range(26)]
    got = batches(splits(out, 32, tables=tables).train)
    ids = reference_parse(days[0])[2]
    np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), ids % np.array(tables))
    sizes = [1 + f % 3 for f in range(26)]
    mh = splits(out, 32, tables=tables, multi_hot_sizes=sizes)
    batch = next(iter(mh.train))
    kjt = batch.sparse_features
    assert kjt.lengths().reshape(26, 32)[:, 0].tolist() == sizes
    first = kjt.to_dict()["cat_5"].values().reshape(32, sizes[5])[:, 0].numpy()
    np.testing.assert_array_equal(first, ids[:32, 5] % tables[5])  # the bag keeps the one-hot id first
    assert all(int(kjt.to_dict()[f"cat_{f}"].values().max()) < tables[f] for f in range(26))


def test_build_data_dispatches_to_criteo(tmp_path):
    raw = tmp_path / "raw"
    write_raw_days(raw, [128, 64], seed=80)
    out = our_npy(raw, tmp_path / "npy")
    s = build_data(DataConfig(source="criteo", path=str(out)), 32, [100] * 26, env())
    assert (len(s.train), len(s.val), len(s.test)) == (4, 1, 1)


def test_clear_errors_for_missing_incomplete_or_inconsistent_folders(tmp_path):
    with pytest.raises(CriteoDataError, match="no day_"):
        splits(tmp_path)
    raw = tmp_path / "raw"
    write_raw_days(raw, [40, 40, 40], seed=90)
    out = our_npy(raw, tmp_path / "npy")
    (out / "manifest.json").unlink()  # as a killed preprocessing run leaves it
    with pytest.raises(CriteoDataError, match="did not finish"):
        splits(out)
    our_npy(raw, out)
    np.save(out / "day_1_labels.npy", np.zeros((39, 1), np.int32))
    with pytest.raises(CriteoDataError, match=r"row counts differ.*day_1_labels.npy \(39, 1\)"):
        splits(out)
    (out / "day_1_labels.npy").unlink()
    with pytest.raises(CriteoDataError, match=f"{out}: day 1 has no day_1_labels.npy"):
        splits(out)
    assert json.loads((out / "manifest.json").read_text())["rows_per_day"] == [40, 40, 40]


@pytest.mark.parametrize("order", [{}, {"shuffle_batches": True}, {"shuffle_rows": True}])
def test_a_resumed_epoch_starts_at_batch_k_without_reading_the_ones_before(tmp_path, order):
    raw = tmp_path / "raw"
    write_raw_days(raw, [200, 120, 40], seed=62)
    out = our_npy(raw, tmp_path / "npy")
    whole, resumed = splits(out, 16, seed=7, **order).train, splits(out, 16, seed=7, **order).train
    whole.set_epoch(1)
    expected = batches(whole)[5:]
    read = []
    take = resumed.take
    resumed.take = lambda rows, **kw: read.append(rows) or take(rows, **kw)  # type: ignore[method-assign]
    resumed.set_epoch(1, start_batch=5)
    got = batches(resumed)
    assert len(read) == len(expected) == len(got)  # the first 5 batches' rows were never read
    for a, b in zip(got, expected):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert len(batches(resumed)) == len(resumed)  # the next pass is whole again
