"""The DataLoader between a split and the train pipeline.

With ``num_workers`` > 0 batches are built in worker processes while the
training step runs (each worker loads every N-th batch; the DataLoader returns
them in the order one process would, see ``contract.SplitBase``). On CUDA the
split yields ``RawBatch``es of ids as stored: hashing, multi-hot expansion and
the KJT are done on the GPU when the pipeline copies the batch
(``RawBatch.to``), and batches are pinned so that copy is asynchronous. On CPU
the workers hash and expand, and the pipeline's ``.to`` wraps the KJT.
"""

from __future__ import annotations

import copy

import torch
from torch.utils.data import DataLoader

from dlrm_dist.data.contract import ResumableSplit, SplitBase


def make_loader(split: ResumableSplit, device: torch.device, num_workers: int = 0,
                prefetch_factor: int = 2) -> DataLoader:
    """A DataLoader over one pass of ``split``: the epoch and start batch of its last
    ``set_epoch`` go with it (into every worker), and the split itself is left to
    start at batch 0 next time, as after a pass."""
    on_device = device.type != "cpu"
    if isinstance(split, SplitBase):
        one_pass = copy.copy(split)  # the caller's split keeps its own settings
        one_pass.deliver = "raw_ids" if on_device else "values" if num_workers > 0 else "batch"
        split.start_batch = 0
        split = one_pass
    extra = {"prefetch_factor": prefetch_factor} if num_workers > 0 else {}
    return DataLoader(split, batch_size=None, num_workers=num_workers,  # type: ignore[arg-type]
                      pin_memory=device.type == "cuda", **extra)
