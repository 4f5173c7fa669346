"""A folder of Criteo npy days, opened and checked: numpy only.

``day_{i}_{dense,sparse,labels}.npy`` for i = 0 .. D-1, as written by
``dlrm-dist preprocess`` or TorchRec's ``BinaryCriteoUtils.tsv_to_npys``. Kept
free of torch so that ``dlrm-dist train`` can check ``data.path`` before it
imports torch and TorchRec: a wrong folder is reported in a fraction of a second.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import List, Tuple

import numpy as np

from dlrm_dist.core.criteo import NUM_DENSE_FEATURES, NUM_SPARSE_FEATURES
from dlrm_dist.core.errors import DataError

Day = Tuple[np.ndarray, np.ndarray, np.ndarray]  # dense (N, 13), sparse (N, 26), labels (N, 1)
KINDS = ("dense", "sparse", "labels")


class CriteoDataError(DataError):
    """The npy folder is missing, incomplete or inconsistent; the message names it."""


def _day_numbers(folder: Path) -> List[int]:
    if not folder.is_dir():
        raise CriteoDataError(f"data.path {folder}: no such folder")
    found = {kind: {int(m.group(1)) for p in folder.iterdir()
                    if (m := re.fullmatch(rf"day_(\d+)_{kind}\.npy", p.name))} for kind in KINDS}
    days = found["dense"] | found["sparse"] | found["labels"]
    if not days:
        raise CriteoDataError(f"data.path {folder}: no day_{{i}}_{{dense,sparse,labels}}.npy files; "
                              "run `dlrm-dist preprocess` to make them")
    for day in sorted(days):
        missing = [k for k in KINDS if day not in found[k]]
        if missing:
            raise CriteoDataError(f"data.path {folder}: day {day} has no "
                                  + ", ".join(f"day_{day}_{k}.npy" for k in missing))
    if sorted(days) != list(range(len(days))):
        gaps = sorted(set(range(max(days) + 1)) - days)
        raise CriteoDataError(f"data.path {folder}: days must be 0 .. {max(days)} with none missing; "
                              f"missing day(s) {gaps}")
    if len(days) < 2:
        raise CriteoDataError(f"data.path {folder}: needs at least 2 days (training days, then a "
                              "last day split into validation and test); found 1")
    return sorted(days)


def _check_complete(folder: Path, days: List[Day]) -> None:
    """Refuse a folder whose preprocessing was interrupted (markers without a manifest)."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        if any(folder.glob("day_*.done.json")):
            raise CriteoDataError(f"data.path {folder}: preprocessing did not finish (no manifest.json); "
                                  "rerun the same `dlrm-dist preprocess` command to complete it")
        return  # e.g. written by TorchRec's tsv_to_npys: nothing to check against
    rows = json.loads(manifest.read_text()).get("rows_per_day")
    if rows is not None and rows != [len(d[0]) for d in days]:
        raise CriteoDataError(f"data.path {folder}: manifest.json lists rows per day {rows}, the files "
                              f"hold {[len(d[0]) for d in days]}; rerun `dlrm-dist preprocess`")


def open_days(folder: Path) -> List[Day]:
    """Memory-map every day; check the three files of each day agree."""
    days = []
    for day in _day_numbers(folder):
        arrs = [np.load(folder / f"day_{day}_{k}.npy", mmap_mode="r") for k in KINDS]
        dense, sparse, labels = arrs
        shapes = ", ".join(f"day_{day}_{k}.npy {a.shape}" for k, a in zip(KINDS, arrs))
        if (dense.ndim != 2 or dense.shape[1] != NUM_DENSE_FEATURES or sparse.ndim != 2
                or sparse.shape[1] != NUM_SPARSE_FEATURES or labels.shape[1:] not in ((), (1,))):
            raise CriteoDataError(f"data.path {folder}: expected (N, 13), (N, 26), (N, 1); got {shapes}")
        if not len(dense) == len(sparse) == len(labels):
            raise CriteoDataError(f"data.path {folder}: row counts differ: {shapes}")
        if dense.dtype.kind != "f" or sparse.dtype.kind not in "iu":
            raise CriteoDataError(f"data.path {folder}: day {day}: dense must be float (transformed), sparse "
                                  f"integer; got {dense.dtype}, {sparse.dtype}")
        days.append((dense, sparse, labels.reshape(-1, 1)))
    _check_complete(folder, days)
    return days
