"""Metrics: the figures a user reads in summary.json are computed right."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from dlrm_dist.config import MetricsConfig
from dlrm_dist.training.distributed import DistEnv
from dlrm_dist.training.metrics import EvalMetrics, HistogramAUROC, MetricsSink, Throughput, peak_rss_bytes
from tests.conftest import run_cmd


def _pairwise_auc(scores, labels) -> float:
    """AUROC by definition: P(score of a positive > score of a negative), ties half."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_eval_metrics_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(500, generator=g) < 0.3).float()
    logits = labels * 1.5 + torch.randn(500, generator=g)
    m = EvalMetrics(torch.device("cpu"))
    for chunk in range(5):  # several batches, as in an evaluation pass
        sl = slice(chunk * 100, (chunk + 1) * 100)
        m.update(logits[sl], labels[sl])
    got = m.compute()
    probs = torch.sigmoid(logits)
    assert abs(got["auc"] - _pairwise_auc(probs.tolist(), labels.tolist())) < 1e-6
    logloss = -(labels * probs.log() + (1 - labels) * (1 - probs).log()).mean()
    assert abs(got["logloss"] - float(logloss)) < 1e-5
    assert abs(got["accuracy"] - float(((probs > 0.5).float() == labels).float().mean())) < 1e-6


def _criteo_like(n: int, seed: int):
    """Labels with a 25% click rate and logits that separate them (AUROC ~0.76)."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, generator=g) < 0.25).float()
    return labels + torch.randn(n, generator=g) - 1.5, labels


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # where evaluation runs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bins", [1000, 100_000])
def test_binned_auroc_is_within_its_bound_of_exact(bins, device):
    logits, labels = (t.to(device) for t in _criteo_like(200_000, 1))
    exact, binned = EvalMetrics(torch.device(device)), EvalMetrics(torch.device(device), auroc_thresholds=bins)
    for m in (exact, binned):
        for lg, lb in zip(logits.split(8192), labels.split(8192)):  # batches, as in an evaluation
            m.update(lg, lb)
    error = abs(exact.compute()["auc"] - binned.compute()["auc"])
    assert error <= binned.auroc.error_bound() + 1e-6  # + float32 rounding of the two results
    if bins == 100_000:  # the Terabyte / DCNv2 configs' setting
        assert error < 1e-4 and binned.auroc.error_bound() < 1e-4


def test_histogram_auroc_counts_pairs_in_one_bin_half():
    """Scores 0.1 and 0.9 / 1.0 share bins at 10 bins: the tied pairs count 1/2."""
    h = HistogramAUROC(10)
    h.update(torch.tensor([0.1, 0.1, 0.9, 1.0]), torch.tensor([0, 1, 1, 0]))
    # pairs (pos, neg): (.1,.1) tie, (.1,1.) 0, (.9,.1) 1, (.9,1.) same bin: 1/2 (truly 0)
    assert float(h.compute()) == 0.5 and h.error_bound() == 0.25
    h.update(torch.tensor([0.55]), torch.tensor([1]))  # a bin of its own: exact for its pairs
    assert float(h.compute()) == pytest.approx((0.5 + 0 + 1 + 0.5 + 1 + 0) / 6)


def test_binned_evaluation_memory_is_that_of_the_exact_path():
    """100,000 thresholds at batch 8192: peak RSS within 300 MB of exact AUROC
    (torchmetrics' binned path took 9.8 GB more at batch 4096), each in a fresh process."""
    peaks = {}
    for mode in ("exact", "binned"):
        proc = run_cmd([sys.executable, "-m", "tests.unit.eval_memory", "--mode", mode, "--batch-size", "8192",
                        "--thresholds", "100000", "--batches", "16"], timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        peaks[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(peaks["binned"]["auc"] - peaks["exact"]["auc"]) < 1e-4
    # the evaluation's own high-water mark: an import that peaked higher must not hide it
    peak = {mode: p["eval_peak_rss_bytes"] or p["peak_rss_bytes"] for mode, p in peaks.items()}
    assert peak["binned"] - peak["exact"] < 300 * 10**6, peaks


def test_throughput_counts_training_time_only():
    t = Throughput(world_size=4)
    t.start()
    t.add(100)  # 100 local samples on each of 4 ranks
    t.pause()
    paused = t.elapsed()
    t.add(100)
    assert t.samples == 800 and t.elapsed() == paused  # the clock stands still while paused
    assert math.isclose(t.samples_per_s(), 800 / paused)
    assert peak_rss_bytes() > 50 * 2**20


def test_sink_writes_jsonl_and_tensorboard(tmp_path: Path):
    env = DistEnv(0, 1, 0, 1, torch.device("cpu"), "gloo")
    sink = MetricsSink(tmp_path, env, MetricsConfig(tensorboard=True))
    sink.event("train", 10, {"loss": 0.5})
    sink.event("val", 10, {"auc": 0.8})
    sink.write_json("summary.json", {"val_auc": 0.8})
    sink.close()
    events = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events] == [("train", 10), ("val", 10)]
    assert json.loads((tmp_path / "summary.json").read_text()) == {"val_auc": 0.8}
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_only_rank_zero_writes(tmp_path: Path):
    sink = MetricsSink(tmp_path, DistEnv(1, 2, 1, 2, torch.device("cpu"), "gloo"), MetricsConfig())
    sink.event("train", 1, {"loss": 1.0})
    sink.write_json("summary.json", {"val_auc": 0.5})
    sink.close()
    assert not list(tmp_path.iterdir())
