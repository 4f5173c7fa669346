"""The DataLoader between a split and the train pipeline."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from dlrm_dist.data.contract import ResumableSplit


def make_loader(split: ResumableSplit, device: torch.device) -> DataLoader:
    """Batches arrive ready-made; on CUDA they are pinned so the pipeline's copy is async."""
    return DataLoader(split, batch_size=None, pin_memory=device.type == "cuda")  # type: ignore[arg-type]
