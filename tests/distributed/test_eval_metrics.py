"""Evaluation metrics over 2 CPU ranks (gloo): every rank reports the AUROC of the
whole split, binned or exact, whatever share of it each rank scored."""

from __future__ import annotations

import torch
import torch.distributed as dist
import pytest

from tests.distributed.spawn import run_on_ranks


def _split_auroc(bins: int) -> None:
    from torchmetrics.classification import BinaryAUROC

    from dlrm_dist.training.metrics import EvalMetrics, HistogramAUROC

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(3)
    labels = (torch.rand(30_000, generator=g) < 0.25).float()
    logits = labels + torch.randn(30_000, generator=g) - 1.5
    cut = 11_000  # rank 0 scores fewer samples than rank 1
    mine = slice(0, cut) if rank == 0 else slice(cut, None)
    metrics = EvalMetrics(torch.device("cpu"), bins)
    for lg, lb in zip(logits[mine].split(4096), labels[mine].split(4096)):
        metrics.update(lg, lb)
    got = metrics.compute()["auc"]
    # the whole split in one process, no sync
    reference = HistogramAUROC(bins, sync_on_compute=False) if bins else BinaryAUROC(sync_on_compute=False)
    reference.update(torch.sigmoid(logits), labels.long())
    expected = float(reference.compute())
    assert got == expected, (rank, got, expected)
    everyone = [None, None]
    dist.all_gather_object(everyone, got)
    assert everyone[0] == everyone[1]
    dist.destroy_process_group()


@pytest.mark.parametrize("bins", [0, 100_000])
def test_two_ranks_report_the_auroc_of_the_whole_split(bins):
    run_on_ranks(_split_auroc, bins, world_size=2, timeout_s=120)
