"""A torch.profiler window over training steps (``train.profile_steps``).

Where a step spends its time - embedding lookup, all-to-all, GEMMs, optimizer,
the pipeline's own bookkeeping - is what the throughput figure cannot say. The
chosen ranks record steps ``start ... stop-1`` and then

* write a Chrome trace through ``tensorboard_trace_handler`` into
  ``<run_dir>/profile/rank{r}.<time>.pt.trace.json``: Perfetto
  (ui.perfetto.dev) and chrome://tracing open the file directly, and
  ``tensorboard --logdir <run_dir>/profile`` shows it in the PyTorch profiler tab;
* log the top ops (``key_averages().table``) by self time.

In the trace, ``ProfilerStep#0`` is training step ``start``, ``#1`` the next, and so
on. TorchRec's pipelines mark their stages with ``record_function`` ("## forward ##",
"## sparse_data_dist ##" ...), so those names appear as spans in the trace.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import List, Optional

import torch
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

logger = logging.getLogger(__name__)

TOP_OPS = 25


class StepProfiler:
    """Call ``before_step(step)`` and ``after_step(step)`` around each training step
    (``step`` = steps done so far); both are no-ops outside the window or off-rank."""

    def __init__(self, run_dir: Path, steps: List[int], ranks: List[int], rank: int, device: torch.device) -> None:
        self.enabled = bool(steps) and rank in ranks
        self.start, self.stop = (steps + [0, 0])[:2]
        self.out_dir = run_dir / "profile"
        self.rank, self.device = rank, device
        self._prof: Optional[profile] = None

    def before_step(self, step: int) -> None:
        if not self.enabled or step != self.start or self._prof is not None:
            return
        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # no warm-up steps: the window is exactly what was asked
            warnings.filterwarnings("ignore", message=".*warmup.*")
            window = schedule(wait=0, warmup=0, active=self.stop - self.start, repeat=1)
        self._prof = profile(
            activities=activities,
            schedule=window,  # a schedule also makes step() mark ProfilerStep#0, #1 ... spans
            on_trace_ready=self._trace_ready,
            record_shapes=True,
        )
        self._prof.start()
        logger.info("profiling steps %d-%d on rank %d", self.start, self.stop - 1, self.rank)

    def after_step(self, step: int) -> None:
        if self._prof is None:
            return
        self._prof.step()  # after the window's last step this writes the trace (_trace_ready)
        if step >= self.stop:
            self.finish()

    def finish(self) -> None:
        """Stop; a run that ended inside the window still gets its (shorter) trace."""
        if self._prof is not None:
            prof, self._prof = self._prof, None
            prof.stop()
            self.enabled = False

    def _trace_ready(self, prof: profile) -> None:
        tensorboard_trace_handler(str(self.out_dir), worker_name=f"rank{self.rank}")(prof)
        sort_by = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort_by, row_limit=TOP_OPS)
        logger.info("profile of steps %d-%d, top %d ops by self time (trace in %s):\n%s",
                    self.start, self.stop - 1, TOP_OPS, self.out_dir, table)
