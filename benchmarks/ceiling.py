"""What this device allows for one DLRM step, measured in the calling process.

Two ceilings, each in samples/s for one rank:

* **GEMM ceiling.** One dense training step (bottom MLP, interaction, top MLP,
  forward and backward) of the configured model is run once at the benchmark's
  batch size under ``FlopCounterMode`` (FLOPs per sample) and a dispatch mode
  that records every matrix multiply it issues (``mm``, ``addmm``, ``bmm`` with
  their shapes). Those same multiplies are then replayed back to back on random
  tensors and timed: ``batch / time`` is the rate the step could reach if it did
  nothing but its own GEMMs at the speed this device runs them, at these shapes
  (thin ones like 2048x13 @ 13x512 included), with this rank's threads.
* **Memory ceiling.** ``dst.copy_(src)`` on a large buffer gives the copy
  bandwidth (bytes read + written per second). The embedding traffic of one
  sample is counted from the config (see :func:`embedding_bytes_per_sample`);
  bandwidth / bytes is the rate if the fused lookup, backward and optimizer
  update were pure streaming at copy speed.

The combined ceiling adds the two times (no overlap), a bound a step on one
CPU core cannot beat. Timing uses ``torch.utils.benchmark.Timer`` (it
synchronizes CUDA and honours the thread count) rather than a hand-written
clock.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode

from dlrm_dist.config import ModelConfig, OptimConfig

aten = torch.ops.aten
GEMM_OPS = {aten.mm.default, aten.addmm.default, aten.bmm.default}
# Optimizer state bytes per embedding row element (fp32), read and written once per update.
STATE_BYTES_PER_ELEMENT = {"sgd": 0.0, "adagrad": 4.0, "adam": 8.0}


@dataclass
class Ceiling:
    """One rank's ceilings at one batch size (per-rank samples/s)."""

    batch_size: int
    gemm_flops_per_sample: float
    gemm_calls_per_step: int
    gemm_seconds_per_step: float
    gemm_cpu_seconds_per_step: Optional[float]
    gemm_gflops_at_model_shapes: float
    gemm_gflops_square: float
    gemm_ceiling_samples_per_s: float
    memcpy_gb_per_s: float
    embedding_bytes_per_sample: float
    memory_ceiling_samples_per_s: float
    combined_ceiling_samples_per_s: float
    threads: int

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class _GemmRecorder(TorchDispatchMode):
    """Records (op, [(shape, stride)]) of every matrix multiply dispatched inside it:
    strides too, since backward multiplies transposed views and the layout changes
    which GEMM kernel runs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: List[Tuple[Any, List[Tuple[torch.Size, Tuple[int, ...]]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func in GEMM_OPS:
            self.calls.append((func, [(a.shape, a.stride()) for a in args if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))


def _gemm_flops(func: Any, operands: Sequence[Tuple[torch.Size, Tuple[int, ...]]]) -> float:
    """2*m*n*k of one recorded call (addmm's first argument is the bias)."""
    shapes = [shape for shape, _ in operands]
    if func is aten.addmm.default:
        shapes = shapes[1:]
    a, b = shapes[0], shapes[1]
    batch = a[0] if len(a) == 3 else 1
    return 2.0 * batch * a[-2] * a[-1] * b[-1]


def dense_step_gemms(model_cfg: ModelConfig, batch_size: int, device: torch.device) -> Tuple[float, list]:
    """FLOPs per sample (FlopCounterMode) and the GEMM calls of one forward + backward
    of the dense part, from an unsharded copy with 2-row tables (the MLPs and the
    interaction do not depend on table sizes; lookups have no FLOPs)."""
    from dlrm_dist.data.random_source import RandomSplit
    from dlrm_dist.model import build_model

    tiny = ModelConfig(**{**asdict(model_cfg), "num_embeddings_per_feature": None, "num_embeddings": 2})
    model = build_model(tiny, device, sparse_device=device.type)
    batch = next(iter(RandomSplit(batch_size, 1, tiny.table_sizes(), None, seed=0))).to(device)
    recorder = _GemmRecorder()
    counter = FlopCounterMode(display=False)
    with counter, recorder:
        loss, _ = model(batch)
        loss.backward()
    return counter.get_total_flops() / batch_size, recorder.calls


def _time(stmt: Callable[[], Any], min_run_time: float) -> float:
    """Median seconds of one call of ``stmt`` with this process's thread count."""
    timer = Timer(stmt="stmt()", globals={"stmt": stmt}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def time_gemms(calls: list, device: torch.device, min_run_time: float) -> Tuple[float, Optional[float]]:
    """Seconds to run the recorded multiplies once, back to back, on random fp32 data
    laid out as in the model (same shapes and strides): wall-clock, and on CPU also
    this process's CPU-seconds (the best of 3), which a machine shared with other
    work inflates far less."""

    def tensor(shape: torch.Size, stride: Tuple[int, ...]) -> torch.Tensor:
        if 0 in stride or any(n == 0 for n in shape):  # broadcast views: a plain tensor does
            return torch.randn(shape, device=device)
        return torch.empty_strided(shape, stride, device=device).normal_()

    operands = [(f, [tensor(*op) for op in ops]) for f, ops in calls]

    def run() -> None:
        for f, args in operands:
            f(*args)

    run()  # warm-up: first-call allocations and kernel selection
    wall = _time(run, min_run_time)
    if device.type == "cuda":
        return wall, None
    cpu = []
    for _ in range(3):
        start = time.process_time()
        run()
        cpu.append(time.process_time() - start)
    return wall, min(cpu)


def square_gemm_gflops(device: torch.device, min_run_time: float) -> float:
    """The device's large-GEMM rate (fp32), for reference: n=1024 on CPU, 8192 on CUDA."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2.0 * n**3 / _time(lambda: torch.mm(a, b), min_run_time) / 1e9


def memcpy_gb_per_s(device: torch.device, min_run_time: float) -> float:
    """Copy bandwidth, counting bytes read plus bytes written; 64 MiB on CPU (far
    beyond the caches), 1 GiB on CUDA."""
    nbytes = (1 << 30) if device.type == "cuda" else (64 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return 2.0 * nbytes / _time(lambda: dst.copy_(src), min_run_time) / 1e9


def embedding_bytes_per_sample(model_cfg: ModelConfig, optim_cfg: OptimConfig,
                               multi_hot_sizes: Sequence[int] | None) -> float:
    """Bytes the fused embedding kernels move per sample, summed over tables.

    Per looked-up row of D elements (e bytes each): forward reads it (D e),
    the fused backward reads and writes it (2 D e) and reads and writes its
    optimizer state (2 S, S = 4 D for Adagrad, 8 D for Adam, 4 for row-wise
    Adagrad, 0 for SGD). Per table and sample: the pooled output is written
    (4 D) and its gradient read (4 D). Random ids are assumed distinct (no cache
    reuse), which is the worst case the copy bandwidth bounds."""
    d = model_cfg.embedding_dim
    e = 2.0 if model_cfg.embedding_dtype == "fp16" else 4.0
    name = optim_cfg.embedding.name
    state = 4.0 if name == "rowwise_adagrad" else STATE_BYTES_PER_ELEMENT.get(name, 4.0) * d
    lookups = list(multi_hot_sizes) if multi_hot_sizes else [1] * len(model_cfg.table_sizes())
    per_row = 3.0 * d * e + 2.0 * state
    return sum(k * per_row + 8.0 * d for k in lookups)


def measure(model_cfg: ModelConfig, optim_cfg: OptimConfig, multi_hot_sizes: Sequence[int] | None,
            batch_size: int, device: torch.device, min_run_time: float = 1.0) -> Ceiling:
    """Every ceiling of one rank, in this process (call it on all ranks at once so
    they share the machine as they do while training)."""
    flops_per_sample, calls = dense_step_gemms(model_cfg, batch_size, device)
    gemm_s, gemm_cpu_s = time_gemms(calls, device, min_run_time)
    recorded = sum(_gemm_flops(f, s) for f, s in calls)
    bw = memcpy_gb_per_s(device, min_run_time / 2)
    emb_bytes = embedding_bytes_per_sample(model_cfg, optim_cfg, multi_hot_sizes)
    gemm_ceiling = batch_size / gemm_s
    mem_ceiling = bw * 1e9 / emb_bytes
    return Ceiling(
        batch_size=batch_size,
        gemm_flops_per_sample=flops_per_sample,
        gemm_calls_per_step=len(calls),
        gemm_seconds_per_step=gemm_s,
        gemm_cpu_seconds_per_step=gemm_cpu_s,
        gemm_gflops_at_model_shapes=recorded / gemm_s / 1e9,
        gemm_gflops_square=square_gemm_gflops(device, min_run_time / 2),
        gemm_ceiling_samples_per_s=gemm_ceiling,
        memcpy_gb_per_s=bw,
        embedding_bytes_per_sample=emb_bytes,
        memory_ceiling_samples_per_s=mem_ceiling,
        combined_ceiling_samples_per_s=1.0 / (1.0 / gemm_ceiling + 1.0 / mem_ceiling),
        threads=torch.get_num_threads(),
    )


def spread(values: Sequence[float]) -> Dict[str, Any]:
    """Median and spread of per-window figures."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "windows": list(values),
    }
