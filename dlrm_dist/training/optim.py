"""Optimizers: fused into the embedding backward, plain for the dense MLPs, one LR schedule.

Embedding tables are updated inside their backward pass (FBGEMM's fused
kernels, via ``apply_optimizer_in_backward``): the gradient of a 40M-row table
is never materialised, only the rows a batch touched are updated. This must be
declared *before* DistributedModelParallel shards the model, since the sharder
reads it to pick the fused kernel. The dense parameters (DDP-replicated MLPs)
get an ordinary torch optimizer, and so do data_parallel tables (TorchRec's
unfused dense kernel), with the embedding optimizer's settings when
``build_optimizer`` is given them. All are combined so the train pipeline sees
one optimizer, and one LambdaLR schedule (MLPerf's warm-up then polynomial
decay) drives both.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple, Type

import torch
from torch import nn
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from dlrm_dist.config import DENSE_OPTIMIZERS, EMBEDDING_OPTIMIZERS, OptimizerConfig, ScheduleConfig
from dlrm_dist.model import embedding_bag_collection


def _optimizer_class(cfg: OptimizerConfig, allowed: Tuple[str, ...], key: str) -> Tuple[Type, Dict[str, Any]]:
    if cfg.name not in allowed:
        raise ValueError(f"config key '{key}.name': unknown optimizer '{cfg.name}'; choose from {', '.join(allowed)}")
    if cfg.name == "sgd":
        kwargs: Dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
        if key.endswith("dense"):
            kwargs["momentum"] = cfg.momentum
        return torch.optim.SGD, kwargs
    if cfg.name == "adagrad":
        return torch.optim.Adagrad, {"lr": cfg.lr, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    if cfg.name == "rowwise_adagrad":
        return RowWiseAdagrad, {"lr": cfg.lr, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    return torch.optim.Adam, {"lr": cfg.lr, "eps": cfg.eps, "weight_decay": cfg.weight_decay}


def embedding_optimizer_class(cfg: OptimizerConfig) -> Type:
    """The optimizer class the embedding tables are trained with (``optim.embedding``)."""
    return _optimizer_class(cfg, EMBEDDING_OPTIMIZERS, "optim.embedding")[0]


def apply_embedding_optimizer(model: nn.Module, cfg: OptimizerConfig) -> None:
    """Declare the fused embedding optimizer on the (still unsharded) tables."""
    cls, kwargs = _optimizer_class(cfg, EMBEDDING_OPTIMIZERS, "optim.embedding")
    apply_optimizer_in_backward(cls, embedding_bag_collection(model).parameters(), kwargs)


def build_optimizer(dmp: nn.Module, dense: OptimizerConfig, embedding: OptimizerConfig) -> CombinedOptimizer:
    """The sharded model's fused embedding optimizer plus a dense optimizer.

    data_parallel tables use TorchRec's dense kernel: they are not fused, so
    ``apply_embedding_optimizer`` does not reach them and their (DDP-averaged)
    gradients wait in ``.grad`` like the MLPs'. They get the embedding optimizer's
    settings here, in a part of their own (``embedding_dp``).
    """
    dense_cls, dense_kwargs = _optimizer_class(dense, DENSE_OPTIMIZERS, "optim.dense")
    unfused = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    table_ids = {id(p) for p in embedding_bag_collection(dmp).parameters()}
    dp_tables = {n: p for n, p in unfused.items() if id(p) in table_ids}
    optimizers = [("embedding", dmp.fused_optimizer)]
    if dp_tables:
        emb_cls, emb_kwargs = _optimizer_class(embedding, EMBEDDING_OPTIMIZERS, "optim.embedding")
        optimizers.append(("embedding_dp", KeyedOptimizerWrapper(dp_tables, lambda ps: emb_cls(ps, **emb_kwargs))))
    mlp = {n: p for n, p in unfused.items() if n not in dp_tables}
    optimizers.append(("dense", KeyedOptimizerWrapper(mlp, lambda ps: dense_cls(ps, **dense_kwargs))))
    return CombinedOptimizer(optimizers)


def lr_factor(cfg: ScheduleConfig) -> Callable[[int], float]:
    """MLPerf DLRM's schedule as a multiplier of the peak LR at a given step."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.decay_steps <= 0 or step < cfg.decay_start_step:
            return 1.0
        done = min(step - cfg.decay_start_step, cfg.decay_steps)
        remaining = (cfg.decay_steps - done) / cfg.decay_steps
        return cfg.end_lr_factor + (1.0 - cfg.end_lr_factor) * remaining**cfg.decay_power

    return factor


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """One schedule for every param group, fused embedding groups included (the fused
    optimizer hands the group's LR to FBGEMM when it steps)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
