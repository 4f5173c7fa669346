"""What preprocessing the Criteo datasets costs on disk and in RAM.

Facts, not estimates: row counts of the published datasets (``core.criteo``),
and the npy layout ``dlrm-dist preprocess`` writes (per row 13 float32 dense
features, 26 ids, an int32 label). The capacity planner reports them beside the
training plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlrm_dist.core.criteo import DATASET_ROWS, NUM_DENSE_FEATURES, NUM_SPARSE_FEATURES
from dlrm_dist.core.units import MiB

PREPROCESS_WORKER_BYTES = 512 * MiB
"""RAM of one ``dlrm-dist preprocess`` worker: it parses ~16 MB text blocks
(--block-mb) into arrays ~10x that size and appends them to the outputs, so it
holds a few blocks, never a day: ~160 MB of arrays plus an interpreter with numpy
and pyarrow (~250 MB). Target: under 1 GB per worker."""


@dataclass
class PreprocessEstimate:
    dataset: str
    days: int
    rows: int
    bytes_per_row: int
    disk_bytes: int
    sparse_id_bytes: int
    worker_ram_bytes: int = PREPROCESS_WORKER_BYTES


def preprocess_estimate(dataset: str, days: int, max_ind_range: int) -> PreprocessEstimate:
    """Disk for ``days`` days of npy output: per row 13 fp32 dense, 26 ids (int32
    when every id is < 2^31, else int64) and an int32 label."""
    per_day = DATASET_ROWS[dataset]
    if not 1 <= days <= len(per_day):
        raise ValueError(f"--days: {dataset} has 1 to {len(per_day)} days, got {days}")
    rows = round(sum(per_day[:days])) if days < len(per_day) else round(sum(per_day))
    id_bytes = 4 if 0 < max_ind_range <= 2**31 else 8
    per_row = NUM_DENSE_FEATURES * 4 + NUM_SPARSE_FEATURES * id_bytes + 4
    return PreprocessEstimate(dataset, days, rows, per_row, rows * per_row, id_bytes)
