"""Metrics: the figures a user reads in summary.json are computed right."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from dlrm_dist.config import MetricsConfig
from dlrm_dist.training.distributed import DistEnv
from dlrm_dist.training.metrics import EvalMetrics, MetricsSink, Throughput, peak_rss_bytes


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


def test_binned_auroc_is_close_to_exact():
    g = torch.Generator().manual_seed(1)
    labels = (torch.rand(2000, generator=g) < 0.5).float()
    logits = labels + torch.randn(2000, generator=g)
    exact, binned = EvalMetrics(torch.device("cpu")), EvalMetrics(torch.device("cpu"), auroc_thresholds=1000)
    for m in (exact, binned):
        m.update(logits, labels)
    assert abs(exact.compute()["auc"] - binned.compute()["auc"]) < 2e-3


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
