"""The dense step's FLOPs, counted from the model: every matmul of the MLPs and the
interaction, forward and backward, with its shape (a thin GEMM runs far below a
square one, so the step-time model looks each one's rate up by its shape).

Counted by ``FlopCounterMode`` and a dispatch recorder (as ``benchmarks/ceiling.py``
records the dense step's GEMMs) on an unsharded copy of the model with 2-row tables:
table sizes change no FLOP and lookups have none.
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from typing import List, Tuple


RECORD_BATCH = 1031
"""Batch of the FLOP count: a prime no layer width equals, so each GEMM's batch dimension
can be told from its weight dimensions (which set its efficiency)."""


class _GemmShapes:
    """Records (FLOPs, smallest non-batch dimension) of every matmul dispatched inside it,
    the way benchmarks/ceiling.py records the dense step's GEMMs."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        import torch

        aten = torch.ops.aten
        ops = {aten.mm.default, aten.addmm.default, aten.bmm.default}
        calls = self.calls = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
                if func in ops:
                    shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
                    calls.append(_gemm_shape(shapes[1:] if func is aten.addmm.default else shapes))
                return func(*args, **(kwargs or {}))

        self.mode = Mode()


def _gemm_shape(shapes: List[Tuple[int, ...]]) -> Tuple[float, int, str]:
    """(FLOPs, smallest dimension other than the batch, kind) of ``a @ b``. A bmm (the dot
    interaction's per-sample (F+1) x D products) batches tiny matrices: its batch is the
    leading dimension and it runs at its own, much lower rate; for an mm the batch is
    whichever of m, k, n equals RECORD_BATCH."""
    a, b = shapes[0], shapes[1]
    if len(a) == 3:
        return 2.0 * a[0] * a[1] * a[2] * b[2], min(a[1], a[2], b[2]), "bmm"
    dims = [a[0], a[1], b[1]]
    flops = 2.0 * dims[0] * dims[1] * dims[2]
    if RECORD_BATCH in dims:
        dims.remove(RECORD_BATCH)
    return flops, min(dims), "mm"


@functools.lru_cache(maxsize=32)
def _flops(model_key: Tuple) -> Tuple[float, float, Tuple, Tuple]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dlrm_dist.config import ModelConfig
    from dlrm_dist.data.random_source import RandomSplit
    from dlrm_dist.model import build_model

    cfg = ModelConfig(**dict(model_key))
    model = build_model(cfg, torch.device("cpu"), sparse_device="cpu")
    data = next(iter(RandomSplit(RECORD_BATCH, 1, cfg.table_sizes(), None, seed=0)))
    fwd, bwd = FlopCounterMode(display=False), FlopCounterMode(display=False)
    shapes_fwd, shapes_bwd = _GemmShapes(), _GemmShapes()
    with fwd, shapes_fwd.mode:
        loss, _ = model(data)
    with bwd, shapes_bwd.mode:
        loss.backward()

    def per_sample(calls: List[Tuple[float, int, str]]) -> Tuple:
        return tuple((f / RECORD_BATCH, d, kind) for f, d, kind in calls)

    return (fwd.get_total_flops() / RECORD_BATCH, bwd.get_total_flops() / RECORD_BATCH,
            per_sample(shapes_fwd.calls), per_sample(shapes_bwd.calls))


def _model_key(model_cfg) -> Tuple:  # noqa: ANN001
    key = {**asdict(model_cfg), "num_embeddings_per_feature": None, "num_embeddings": 2}
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in key.items()))


def dense_flops_per_sample(model_cfg) -> Tuple[float, float]:  # noqa: ANN001 - ModelConfig
    """(forward, backward) FLOPs per sample of the MLPs and the interaction, counted by
    ``FlopCounterMode`` on an unsharded copy with 2-row tables (table sizes change no
    FLOP; lookups have none). Cached: the count takes ~1 s."""
    fwd, bwd, _, _ = _flops(_model_key(model_cfg))
    return fwd, bwd


def dense_gemms(model_cfg) -> Tuple[Tuple, Tuple]:  # noqa: ANN001 - ModelConfig
    """Every matmul of the dense step as (FLOPs per sample, smallest weight-side dimension,
    "mm" or "bmm"), forward and backward: a thin GEMM (13 inputs, 1 output) runs far
    below a square one, a batch of tiny per-sample products further still."""
    _, _, fwd, bwd = _flops(_model_key(model_cfg))
    return fwd, bwd


