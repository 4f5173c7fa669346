"""The capacity model counts what evaluation and the DataLoader's workers hold (issue 15).

Evaluation's AUROC state sits on the compute device (host RAM on a CPU job, HBM
on a GPU job): exact AUROC grows with the validation split, binned does not grow
with the split or the batch. Workers keep ``num_workers x prefetch_factor``
batches in flight besides the training process's own.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from dlrm_dist.config import Config, DataConfig, MetricsConfig, ModelConfig
from dlrm_dist.planner import capacity as cap
from tests.conftest import run_cmd

TERABYTE_VAL = 89_000_000  # half of day 23


def test_binned_evaluation_does_not_grow_with_the_split_or_the_batch():
    binned = MetricsConfig(auroc_thresholds=100_000)
    small = cap.eval_metric_bytes(binned, 10_000, 1024, 8)
    assert cap.eval_metric_bytes(binned, TERABYTE_VAL, 1024, 8) == small
    # batch 8192: 128 kB more (an int64 bin index per sample), not torchmetrics' 6.5 GB tensors
    assert cap.eval_metric_bytes(binned, TERABYTE_VAL, 8192, 8) - small < 200_000
    assert small < 20 * 2**20
    exact = cap.eval_metric_bytes(MetricsConfig(), TERABYTE_VAL, 8192, 8)
    assert exact > 6 * 10**9  # every rank sorts the whole split's 89M scores


def _peak_rss_of_exact_evaluation(batches: int, batch: int) -> int:
    proc = run_cmd([sys.executable, "-m", "tests.unit.eval_memory", "--mode", "exact", "--batch-size", str(batch),
                    "--batches", str(batches)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    return measured["eval_peak_rss_bytes"] or measured["peak_rss_bytes"]


def test_exact_evaluation_estimate_matches_measured_memory():
    """The exact path's estimate against what its peak RSS grows by per sample, from 1M to
    5M samples in fresh processes. The difference of two runs, not one run's growth from
    its start: what the process holds before the metric (torch's libraries, paged in or
    out as the machine's other work presses on memory) is the same in both and cancels."""
    batch, few, many = 8192, 122, 610
    grown = _peak_rss_of_exact_evaluation(many, batch) - _peak_rss_of_exact_evaluation(few, batch)
    estimate = (cap.eval_metric_bytes(MetricsConfig(), many * batch, batch, 1)
                - cap.eval_metric_bytes(MetricsConfig(), few * batch, batch, 1))
    assert 0.5 * estimate < grown < 1.5 * estimate, (grown, estimate)


def test_workers_prefetched_batches_are_counted():
    data = DataConfig(source="criteo", path="/nowhere", num_workers=2, prefetch_factor=3)
    one = cap.batch_bytes(data, 8192)
    none = cap.loader_host_bytes(dataclasses.replace(data, num_workers=0), 8192, "cpu")
    assert cap.loader_host_bytes(data, 8192, "cpu") - none == 2 * 3 * one
    # a GPU job's workers send ids as stored (26 per sample), finished on the device
    multi_hot = dataclasses.replace(data, multi_hot_sizes=[8] * 26)
    assert cap.batch_bytes(multi_hot, 8192, finished=False) < cap.batch_bytes(multi_hot, 8192) / 4
    cuda = cap.loader_host_bytes(multi_hot, 8192, "cuda")
    assert cuda == (cap.loader_batches(multi_hot) + cap.PINNED_BATCHES) * cap.batch_bytes(multi_hot, 8192, False)


def test_evaluation_is_counted_where_the_metrics_live():
    """rank_memory puts evaluation's bytes in HBM on CUDA and in host RAM on CPU."""
    cfg = Config(model=ModelConfig(num_embeddings=100), metrics=MetricsConfig(auroc_thresholds=0))
    model = cap.meta_model(cfg.model, cfg.optim.embedding)
    run = cap.PlannerRun(plan=None, options=[])
    expected = cap.eval_metric_bytes(cfg.metrics, cfg.data.val_samples, cfg.train.batch_size, 2)
    for device, where in (("cpu", "host"), ("cuda", "device")):
        ranks = cap.rank_memory(cfg, model, run, 2, device)
        assert [getattr(r, where)["evaluation (AUROC state)"] for r in ranks] == [expected, expected]
