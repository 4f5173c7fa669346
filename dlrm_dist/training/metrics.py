"""Where metrics are computed and where they go.

* ``EvalMetrics``: AUROC, logloss and accuracy over a whole split, on
  torchmetrics, which all-gathers / all-reduces its states across ranks on
  ``compute()`` so every rank sees the global figure. Binned AUROC
  (``metrics.auroc_thresholds``) is ``HistogramAUROC``: torchmetrics' own binned
  path is not constant memory.
* ``Throughput``: samples/s of the whole job and per rank, training time only.
* ``peak_rss_bytes``: the process's high-water resident memory.
* ``MetricsSink``: rank 0 writes ``metrics.jsonl`` (one JSON object per event,
  each with ``step``), optional TensorBoard events, and log lines; every rank's
  log lines carry its rank. A resumed run's file reads as one run: see
  :func:`supersede`.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import psutil
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from dlrm_dist.config import MetricsConfig
from dlrm_dist.training.distributed import DistEnv
from dlrm_dist.core.files import write_text_atomic

logger = logging.getLogger(__name__)


class HistogramAUROC(Metric):
    """Binned AUROC in memory that does not grow with the batch or the split.

    Why not torchmetrics' ``BinaryAUROC(thresholds=N)``: its update compares every
    prediction with every threshold, building (batch, N) tensors (int64 at 1.0.3):
    6.5 GB per tensor at batch 8192 and N = 100,000, in HBM on a GPU. Here each
    update is one ``bincount`` of the batch into a (2, N) int64 histogram of scores
    per label: O(batch + N) memory, 1.6 MB of state at N = 100,000.

    The state is a sum, so torchmetrics' sync (gather + sum on ``compute``) gives
    every rank the histogram of the whole split: the global AUROC.

    AUROC is the Mann-Whitney statistic: P(score of a positive > score of a
    negative), ties half. Pairs in different bins are ordered exactly; pairs in
    the same bin count half whatever their true order, so the result is within
    ``sum_i pos_i * neg_i / (2 * P * N)`` of the exact AUROC over the same
    float32 scores (``error_bound``): a few 1e-6 at 100,000 bins on Criteo-like
    scores. Bins are uniform in probability, torchmetrics' thresholds' spacing.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, bins: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if bins < 2:
            raise ValueError(f"HistogramAUROC needs at least 2 bins, got {bins}")
        self.bins = bins
        self.add_state("hist", default=torch.zeros(2, bins, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:  # type: ignore[override]
        """``probs`` in [0, 1], ``labels`` 0/1; bin b holds [b/N, (b+1)/N), 1.0 the last."""
        binned = (probs.detach().reshape(-1).float() * self.bins).long().clamp_(0, self.bins - 1)
        binned += labels.detach().reshape(-1).long() * self.bins  # row 1: positives
        self.hist += torch.bincount(binned, minlength=2 * self.bins).view(2, self.bins)

    def _pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ordered positive-over-negative pairs, pairs tied in a bin, all pairs), float64."""
        neg, pos = self.hist.double()
        below = torch.cumsum(neg, 0) - neg  # negatives in lower bins
        return (pos * below).sum(), (pos * neg).sum(), pos.sum() * neg.sum()

    def compute(self) -> torch.Tensor:
        wins, ties, pairs = self._pairs()
        if pairs == 0:  # one class only: AUROC is undefined; torchmetrics returns 0 too
            return torch.zeros((), dtype=torch.float32, device=self.hist.device)
        return ((wins + 0.5 * ties) / pairs).float()

    def error_bound(self) -> float:
        """Largest possible |binned - exact| for the scores seen (after ``compute``'s sync)."""
        _wins, ties, pairs = self._pairs()
        return float(0.5 * ties / pairs) if pairs else 0.0


class EvalMetrics:
    """Accumulates predictions of one evaluation pass; ``compute`` syncs across ranks."""

    def __init__(self, device: torch.device, auroc_thresholds: int = 0) -> None:
        # 0 keeps every prediction: exact AUROC, memory grows with the split (8 bytes a
        # sample, then all-gathered); N bins: constant memory for Terabyte-sized splits.
        self.auroc: Metric = (HistogramAUROC(auroc_thresholds) if auroc_thresholds
                              else BinaryAUROC()).to(device)
        self.accuracy = BinaryAccuracy().to(device)
        self.logloss = MeanMetric().to(device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        probs = torch.sigmoid(logits.float())
        labels_int = labels.long()
        self.auroc.update(probs, labels_int)
        self.accuracy.update(probs, labels_int)
        self.logloss.update(F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none"))

    def compute(self) -> Dict[str, float]:
        return {
            "auc": float(self.auroc.compute()),
            "logloss": float(self.logloss.compute()),
            "accuracy": float(self.accuracy.compute()),
        }


class Throughput:
    """Counts samples over training time only (evaluation pauses the clock)."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.samples = 0
        self.seconds = 0.0
        self._since: Optional[float] = None

    def start(self) -> None:
        self._since = time.perf_counter()

    def pause(self) -> None:
        if self._since is not None:
            self.seconds += time.perf_counter() - self._since
            self._since = None

    def add(self, local_samples: int) -> None:
        self.samples += local_samples * self.world_size

    def elapsed(self) -> float:
        running = time.perf_counter() - self._since if self._since is not None else 0.0
        return self.seconds + running

    def samples_per_s(self) -> float:
        t = self.elapsed()
        return self.samples / t if t > 0 else 0.0


def peak_rss_bytes() -> int:
    """High-water RSS of this process: the kernel's ru_maxrss (KiB on Linux), which
    also catches peaks between samples, or psutil's current RSS if that is larger."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return max(peak, psutil.Process().memory_info().rss)


METRICS = "metrics.jsonl"
SUPERSEDED = "metrics-superseded.jsonl"


def _after(event: Dict[str, Any], step: int, saved_at: Optional[float]) -> bool:
    """Was ``event`` logged after the checkpoint of ``step`` was saved? Any later
    step was; at that very step, the evaluation after the save (the end of a run)
    was too, which the time tells (the same rank 0 clock wrote both)."""
    at = event.get("step", 0)
    return at > step or (at == step and saved_at is not None and event.get("time", 0.0) > saved_at)


def supersede(run_dir: Path, step: int, saved_at: Optional[float] = None) -> int:
    """A run resumes from its checkpoint of ``step``: the events earlier attempts
    logged after that checkpoint are redone, so they move from ``metrics.jsonl`` to
    ``metrics-superseded.jsonl`` (kept, marked ``superseded_at_resume``), and the file
    holds each step once: one curve. A torn last line (a killed writer) moves too.
    Returns the number of events moved."""
    path = run_dir / METRICS
    if not path.is_file():
        return 0
    kept: List[str] = []
    moved: List[str] = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            moved.append(json.dumps({"unreadable_line": line, "superseded_at_resume": step}))
            continue
        if _after(event, step, saved_at):
            moved.append(json.dumps({**event, "superseded_at_resume": step}))
        else:
            kept.append(line)
    if moved:  # the copy first: a crash in between leaves a duplicate there, never a loss
        with open(run_dir / SUPERSEDED, "a") as f:
            f.write("".join(m + "\n" for m in moved))
        write_text_atomic(path, "".join(k + "\n" for k in kept))
    return len(moved)


class MetricsSink:
    """Rank 0 writes events; every rank may log."""

    def __init__(self, run_dir: Path, env: DistEnv, cfg: MetricsConfig, resumed_from: Optional[Path] = None) -> None:
        """``resumed_from``: the checkpoint this run resumed from; events logged after
        it by earlier attempts are superseded (:func:`supersede`) and a ``resume``
        event records it."""
        self.run_dir, self.env = run_dir, env
        moved = 0
        if env.is_main and resumed_from is not None:
            meta = json.loads((Path(resumed_from) / "meta.json").read_text())
            moved = supersede(run_dir, meta["step"], meta.get("saved_at"))
        self._jsonl = open(run_dir / METRICS, "a") if env.is_main else None
        self._tb = None
        if env.is_main and cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if env.is_main and resumed_from is not None:
            self.event("resume", meta["step"], {"checkpoint": str(resumed_from), "superseded_events": moved})

    def event(self, kind: str, step: int, values: Dict[str, Any]) -> None:
        if not self.env.is_main:
            return
        record = {"event": kind, "step": step, "time": time.time(), **values}
        assert self._jsonl is not None
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)
        shown = " ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        logger.info("%s step %d: %s", kind, step, shown)

    def write_json(self, name: str, payload: Dict[str, Any]) -> None:
        """Atomically write ``name`` (rank 0): no half-written file ever looks complete."""
        if self.env.is_main:
            write_text_atomic(self.run_dir / name, json.dumps(payload, indent=2, sort_keys=True) + "\n")

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
