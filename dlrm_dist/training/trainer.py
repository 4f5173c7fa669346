"""The training loop: a TorchRec train pipeline (``train.pipeline``, by default
TrainPipelineSparseDist) for training, EvalPipelineSparseDist for evaluation,
and the decisions of when to log and when to evaluate.

``TrainPipelineSparseDist`` keeps two batches in flight: while batch i runs
forward/backward, batch i+1's input all-to-all (ids to the ranks that own their
tables) is already under way, hiding the communication. Its ``progress`` call is
one training step; the fused embedding optimizer updates rows inside backward
and ``optimizer.step()`` steps the dense part.

Evaluation happens between steps: the train pipeline is ``detach``ed (the
public API that restores the model's original forwards while keeping the
in-flight batch), an eval pipeline runs over the split, and ``attach`` hands
the model back. Every rank runs the same number of batches in both, since
each data split gives every rank the same number of full batches.

Checkpoints (``dlrm_dist.training.checkpoint``) are saved between steps the same way,
with the pipeline detached. A resumed run starts with the saved ``TrainState``
and asks the training data for the batches from that step on.
"""

from __future__ import annotations

import itertools
import logging
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.train_pipeline import (
    EvalPipelineSparseDist,
    TrainPipeline,
    TrainPipelineBase,
    TrainPipelineSparseDist,
)
from torchrec.distributed.train_pipeline.train_pipelines import TrainPipelineSemiSync
from tqdm import tqdm

from dlrm_dist.training import faults
from dlrm_dist.config import ConfigError, MetricsConfig, TrainConfig
from dlrm_dist.data.contract import DataSplits, ResumableSplit
from dlrm_dist.training.distributed import DistEnv
from dlrm_dist.core.errors import UserError
from dlrm_dist.training.metrics import EvalMetrics, MetricsSink, Throughput, peak_rss_bytes
from dlrm_dist.training.profiling import StepProfiler

if TYPE_CHECKING:
    from dlrm_dist.training.checkpoint import Checkpointer

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0


def build_train_pipeline(kind: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                         device: torch.device) -> TrainPipeline:
    """The ``train.pipeline`` class: ``sparse_dist`` (default) overlaps batch i+1's
    input all-to-all with batch i; ``base`` runs each step's stages in order (the
    reference point of the overlap); ``semi_sync`` also overlaps the embedding
    lookup of batch i+1 with batch i's dense forward, at the price of one step of
    staleness in the embeddings (from the first batch on here: TorchRec's
    default waits 900 batches, longer than a benchmark)."""
    if kind == "base":
        return TrainPipelineBase(model, optimizer, device)
    if kind == "semi_sync":
        if device.type != "cuda":  # it records CUDA streams on the batch: "unknown parameter type" on CPU
            raise ConfigError("train.pipeline=semi_sync needs CUDA (TorchRec's TrainPipelineSemiSync "
                              "records CUDA streams); use base or sparse_dist on CPU")
        return TrainPipelineSemiSync(model, optimizer, device, execute_all_batches=True, start_batch=0)
    return TrainPipelineSparseDist(model, optimizer, device, execute_all_batches=True)


Loader = Callable[[ResumableSplit], Iterable[Any]]


def _train_batches(split: ResumableSplit, loader: Loader, epochs: int, start: int = 0) -> Iterator[Any]:
    """One iterator over all epochs, so the pipeline never drains between epochs;
    it begins at overall batch ``start`` (the steps a resumed run has done)."""
    first_epoch, start_batch = divmod(start, len(split))
    for epoch in range(first_epoch, epochs):
        # e.g. reshuffle the batch order; a resumed epoch skips batches without reading them
        split.set_epoch(epoch, start_batch if epoch == first_epoch else 0)
        yield from loader(split)


_TRAIN_STEP = ("train step {next} (train pipeline {pipeline}: input all-to-all, forward, backward "
               "with DDP's all-reduce)")


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
        env: DistEnv,
        cfg: TrainConfig,
        metrics_cfg: MetricsConfig,
        sink: MetricsSink,
        loader: Loader,
        checkpointer: Optional["Checkpointer"] = None,
        state: Optional[TrainState] = None,
    ) -> None:
        """``loader`` turns a split into its batches for one pass (``recipe.build_loader``:
        ``data.num_workers`` workers, batches finished on the device)."""
        self.model, self.optimizer, self.lr_scheduler = model, optimizer, lr_scheduler
        self.env, self.cfg, self.metrics_cfg, self.sink = env, cfg, metrics_cfg, sink
        self.checkpointer = checkpointer
        self.loader = loader
        self.state = state or TrainState()  # a resumed run's step and epoch
        self._saved_step = -1
        self._phase = "setup"
        self.pipeline = build_train_pipeline(cfg.pipeline, model, optimizer, env.device)
        self.profiler = StepProfiler(sink.run_dir, cfg.profile_steps, cfg.profile_ranks, env.rank, env.device)

    def _detach(self) -> nn.Module:
        """The model with its original forwards (TrainPipelineBase never replaces them)."""
        if isinstance(self.pipeline, TrainPipelineSparseDist):
            return self.pipeline.detach()
        return self.model

    def _attach(self, model: nn.Module) -> None:
        if isinstance(self.pipeline, TrainPipelineSparseDist):
            self.pipeline.attach(model)

    def total_steps(self, steps_per_epoch: int) -> int:
        if self.cfg.max_steps > 0:
            return self.cfg.max_steps
        return self.cfg.epochs * steps_per_epoch

    # ------------------------------------------------------------------ eval
    def evaluate(self, split: ResumableSplit, max_batches: int = 0) -> Dict[str, float]:
        """AUROC / logloss / accuracy of the model on a split, synced over ranks."""
        model = self._detach()  # original forwards back; in-flight batch kept
        model.eval()
        metrics = EvalMetrics(self.env.device, self.metrics_cfg.auroc_thresholds)
        batches: Iterator[Any] = iter(self.loader(split))
        if max_batches > 0:
            batches = itertools.islice(batches, max_batches)
        pipeline = EvalPipelineSparseDist(model, self.optimizer, self.env.device)
        with torch.no_grad():
            while True:
                try:
                    _loss, logits, labels = pipeline.progress(batches)
                except StopIteration:
                    break
                metrics.update(logits, labels)
        pipeline.detach()
        model.train()
        self._attach(model)
        return metrics.compute()

    def save_checkpoint(self) -> None:
        """Save between steps, with the pipeline detached as for evaluation."""
        if self.checkpointer is None or self._saved_step == self.state.step:
            return
        model = self._detach()
        self.checkpointer.save(self.state.step, self.state.epoch, model, self.optimizer, self.lr_scheduler)
        self._attach(model)
        self._saved_step = self.state.step

    # ----------------------------------------------------------------- train
    def _log_train(self, loss_sum: torch.Tensor, count: int, throughput: Throughput) -> None:
        mean_loss = loss_sum / max(count, 1)
        dist.all_reduce(mean_loss)  # average of the ranks' mean losses
        self.sink.event("train", self.state.step, {
            "loss": float(mean_loss) / self.env.world_size,
            "lr": float(self.optimizer.param_groups[-1]["lr"]),
            "samples_per_s": throughput.samples_per_s(),
            "rss_bytes": peak_rss_bytes(),
        })

    def fit(self, data: DataSplits) -> Dict[str, Any]:
        steps_per_epoch = len(data.train)
        total = self.total_steps(steps_per_epoch)
        epochs = -(-total // steps_per_epoch)
        start = self.state.step
        batches = itertools.islice(_train_batches(data.train, self.loader, epochs, start), max(total - start, 0))
        throughput = Throughput(self.env.world_size)
        bar = tqdm(
            total=total, initial=start, desc="train", unit="step",
            disable=not (self.env.is_main and self.metrics_cfg.progress_bar),
            mininterval=0.5 if sys.stderr.isatty() else 10.0,  # launchers' logs are not TTYs
        )
        self.model.train()
        throughput.start()
        try:
            self._loop(data, batches, total, throughput, bar)
        except UserError:
            raise  # its one line comes from the entry point
        except Exception as e:  # a collective that timed out or lost its peer; an error of this rank
            first_line = (str(e).strip().splitlines() or [""])[0]
            logger.error("rank %d failed in %s: %s: %s (collectives time out after dist.timeout_s=%g)",
                         self.env.rank, self._phase.format(step=self.state.step, next=self.state.step + 1,
                                                           pipeline=self.cfg.pipeline),
                         type(e).__name__, first_line, self.env.timeout_s)
            raise
        throughput.pause()
        self.profiler.finish()
        bar.close()
        if self.cfg.checkpoint_at_end and self.state.step > 0:
            self.save_checkpoint()
        return self._finish(data, throughput)

    def _loop(self, data: DataSplits, batches: Iterator[Any], total: int, throughput: Throughput, bar: tqdm) -> None:
        """The steps; ``self._phase`` says which collectives run now, for the error log (a
        template formatted only when a step fails: nothing is formatted per step)."""
        steps_per_epoch = len(data.train)
        loss_sum, count = torch.zeros((), device=self.env.device), 0
        while True:
            self._phase = _TRAIN_STEP
            self.profiler.before_step(self.state.step)
            try:
                loss, _logits, _labels = self.pipeline.progress(batches)
            except StopIteration:
                break
            self.lr_scheduler.step()
            self.state.step += 1
            self.profiler.after_step(self.state.step)
            self.state.epoch = (self.state.step - 1) // steps_per_epoch
            faults.after_step(self.env.rank, self.state.step)  # test hook; inert unless DLRM_DIST_FAULT is set
            throughput.add(_labels.shape[0])
            loss_sum += loss
            count += 1
            bar.update(1)
            if self.state.step % self.metrics_cfg.log_every == 0:
                self._phase = "the loss all-reduce after step {step}"
                self._log_train(loss_sum, count, throughput)
                bar.set_postfix(loss=f"{float(loss_sum) / max(count, 1):.4f}")
                loss_sum, count = torch.zeros((), device=self.env.device), 0
            if self.cfg.eval_every and self.state.step % self.cfg.eval_every == 0 and self.state.step < total:
                throughput.pause()
                self._phase = "the evaluation after step {step}"
                val = self.evaluate(data.val, self.cfg.max_eval_batches)
                self.sink.event("val", self.state.step, val)
                throughput.start()
            if self.cfg.checkpoint_every and self.state.step % self.cfg.checkpoint_every == 0:
                throughput.pause()
                self._phase = "the checkpoint save after step {step}"
                self.save_checkpoint()
                throughput.start()
        self._phase = "the last loss all-reduce"
        if count:  # the steps since the last log event
            self._log_train(loss_sum, count, throughput)

    def _finish(self, data: DataSplits, throughput: Throughput) -> Dict[str, Any]:
        val = self.evaluate(data.val)
        test = self.evaluate(data.test)
        self.sink.event("val", self.state.step, val)
        self.sink.event("test", self.state.step, test)
        rss = torch.tensor([peak_rss_bytes()], dtype=torch.float64, device=self.env.device)  # nccl: on GPU
        all_rss = [torch.zeros_like(rss) for _ in range(self.env.world_size)]
        dist.all_gather(all_rss, rss)
        hosts = [None] * self.env.world_size  # where each rank ran: a multi-host run says so
        dist.all_gather_object(hosts, socket.gethostname())
        summary: Dict[str, Any] = {
            "val_auc": val["auc"],
            "val_logloss": val["logloss"],
            "val_accuracy": val["accuracy"],
            "test_auc": test["auc"],
            "test_logloss": test["logloss"],
            "test_accuracy": test["accuracy"],
            "steps": self.state.step,
            "epochs": self.state.epoch + (1 if self.state.step else 0),
            "world_size": self.env.world_size,
            "global_batch_size": self.cfg.batch_size * self.env.world_size,
            "train_seconds": throughput.elapsed(),
            "train_samples_per_s": throughput.samples_per_s(),
            "samples_per_s_per_rank": throughput.samples_per_s() / self.env.world_size,
            "peak_rss_bytes": int(max(float(r) for r in all_rss)),
            "peak_rss_bytes_per_rank": [int(r) for r in all_rss],
            "hosts": hosts,
            **data.info,
        }
        return summary


def log_summary(summary: Dict[str, Any], teacher_key: str = "teacher_val_auc") -> Optional[str]:
    """A one-line human verdict for the end of a run (rank 0)."""
    line = (
        f"val AUC {summary['val_auc']:.4f}  test AUC {summary['test_auc']:.4f}  "
        f"val logloss {summary['val_logloss']:.4f}  "
        f"{summary['samples_per_s_per_rank']:.0f} samples/s per rank"
    )
    if teacher_key in summary:
        line += f"  (teacher's own val AUC {summary[teacher_key]:.4f})"
    return line
