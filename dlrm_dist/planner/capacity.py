"""Where a DLRM job's memory goes, per rank and per host, before it runs.

The embedding tables are the bulk, and TorchRec's ``EmbeddingShardingPlanner``
already knows where each shard goes and what it costs (its storage and perf
estimators). :func:`run_planner` runs that planner as a dry run, with the same
``build_topology`` / ``build_planner`` training uses, for clusters this host
does not have (``dlrm_dist.planner.plan.estimate`` drives it for ``dlrm-dist
plan``), and :func:`rank_memory` adds what the planner does not model per rank:
the data-parallel MLPs with their DDP gradient buckets and optimizer state,
activations at the configured batch, evaluation's metric state, data-loader
batches (DataLoader workers' prefetched ones included) and the process itself.

Training calls ``planner.host_check.check_host_memory`` before it allocates anything, so a job
that cannot fit stops with a message instead of being killed by the OOM killer.

All sizes are bytes (``dlrm_dist.core.units``: GiB = 2**30, GB = 10**9).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn
from torchrec.distributed.planner import shard_estimators
from torchrec.distributed.planner.types import (
    PlannerError,
    ShardingOption,
    Stats,
    StorageReservation,
)
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.types import ShardingPlan, StorageUsageType, compute_storage_usage

from dlrm_dist.config import Config, DataConfig, MetricsConfig, ModelConfig, OptimizerConfig
from dlrm_dist.core.criteo import DATASET_ROWS, NUM_DENSE_FEATURES, NUM_SPARSE_FEATURES, infer_dataset
from dlrm_dist.model import build_model, dense_parameter_count, embedding_bag_collection
from dlrm_dist.training.optim import apply_embedding_optimizer, embedding_optimizer_class
from dlrm_dist.training.sharding import build_planner, build_topology, input_pooling_factors
from dlrm_dist.core.units import GiB, MiB

FP32 = 4

# ---- documented constants (everything else is computed) ------------------- #
CPU_PROCESS_BYTES_BY_TORCH_BUILD = {"cpu": 400 * MiB, "cuda": 1010 * MiB}
"""RSS of a CPU rank before its tables, by the torch build installed. ``cpu``: 370 MiB
measured after importing torch 2.13+cpu, fbgemm-gpu-cpu 1.8, torchrec 1.8 and
torchmetrics, plus ~30 MiB for the gloo process group, DMP bookkeeping and threads.
``cuda``: PyPI's torch 2.14.1 is a CUDA build (+cu130) even on a CPU host, and its
libraries are mapped and touched at import: 966 MiB after importing torch 2.14.1,
fbgemm-gpu-cpu 1.9.0 and torchrec 1.9.2 (Python 3.11, x86-64), ~1010 MiB with the
process group and a model (tests/distributed/test_plan_vs_rss.py measures it)."""
CPU_PROCESS_BYTES = CPU_PROCESS_BYTES_BY_TORCH_BUILD["cuda" if torch.version.cuda else "cpu"]
"""This installation's figure: a CPU cluster runs the stack ``make install`` gives it."""
CUDA_PROCESS_HOST_BYTES = int(2.5 * GiB)
"""Host RSS of a CUDA rank before its data: the CUDA build of torch and fbgemm
(libtorch_cuda, cuBLAS, cuDNN, NCCL mapped and touched), the CUDA context's host
side and NCCL's host buffers. Not measured here (no GPU on the dev box): 2-3 GiB
is what such processes show with lazy module loading; we take 2.5 GiB."""
CUDA_CONTEXT_HBM_BYTES = 1 * GiB
"""HBM a rank spends outside tensors: CUDA context (~0.5 GiB), cuBLAS workspace,
NCCL channel buffers and allocator fragmentation headroom."""
HOST_BATCHES_IN_FLIGHT = 4
"""Host batches alive per rank in the training process: the one being built (or,
with workers, just received), the DataLoader's hand-off, and two the
TrainPipelineSparseDist has pulled ahead. DataLoader workers add theirs:
:func:`loader_batches`."""
PINNED_BATCHES = 2
"""On CUDA the DataLoader pins batches; the caching host allocator keeps ~2 alive."""
DEVICE_DENSE_BATCHES = 3
"""Dense features and labels the train pipeline holds on the device (3 stages);
the KJT side is the planner's own reservation."""
RANDOM_CACHED_BATCHES = 3 * 10
"""data.source=random: each split's RandomRecDataset cycles through 10 cached batches."""
EXACT_AUROC_BYTES_PER_SAMPLE = 80
"""Peak bytes per validation sample of an exact-AUROC evaluation (torchmetrics'
``BinaryAUROC()``): the fp32 score and int64 label kept per sample, their
concatenation and the ROC's sort and cumulative sums at ``compute``. Measured (RSS
growth, one process): 770 MB over 10M samples, 168 MB over 2M (``python -m
tests.unit.eval_memory --mode exact --batches 1221``, torchmetrics 1.0.3); on more
ranks each also holds the all-gathered states."""
SYNTHETIC_BYTES_PER_SAMPLE = 1024
"""Working set of the synthetic teacher per generated sample (float64 counts,
int64 ids, logits, latent vectors), measured ~1 KiB; it also scores the whole
validation split once for teacher_val_auc."""


def eval_samples(data_cfg: DataConfig, table_sizes: List[int]) -> int:
    """Samples in the validation split: the first half of the last day for Criteo."""
    if data_cfg.source != "criteo":
        return data_cfg.val_samples
    return round(DATASET_ROWS[infer_dataset(table_sizes)][-1] / 2)


def eval_metric_bytes(metrics_cfg: MetricsConfig, samples: int, batch_size: int, world_size: int) -> int:
    """Evaluation's extra memory per rank, at its peak (``compute``): in host RAM on a
    CPU job, in HBM on a GPU job (the metrics live on the compute device).

    Exact AUROC (``auroc_thresholds=0``) grows with the split: every rank ends up
    holding all ``samples`` scores and labels (all-gathered: 12 bytes each) and
    sorts them (:data:`EXACT_AUROC_BYTES_PER_SAMPLE`). Binned AUROC
    (``metrics.HistogramAUROC``) is a (2, N) int64 histogram, one more for each
    update's ``bincount``, and the ``world_size`` copies its sync gathers before
    summing; per batch an int64 bin index. The evaluation forward's activations
    (no autograd graph) fit in the training activations', freed by then."""
    if metrics_cfg.auroc_thresholds:
        histogram = 2 * metrics_cfg.auroc_thresholds * 8
        return (2 + world_size) * histogram + 2 * batch_size * 8
    gathered = samples * (4 + 8) if world_size > 1 else 0
    return samples * EXACT_AUROC_BYTES_PER_SAMPLE + gathered


@dataclass
class TableStats:
    """What the config declares, independent of the plan."""

    rows: int
    weight_bytes: int
    optimizer_bytes: int
    dense_params: int


@dataclass
class RankMemory:
    """One rank's bytes by category; ``device`` is HBM (empty on CPU runs)."""

    device: Dict[str, int] = field(default_factory=dict)
    host: Dict[str, int] = field(default_factory=dict)
    perf_ms: Dict[str, float] = field(default_factory=dict)

    @property
    def device_total(self) -> int:
        return sum(self.device.values())

    @property
    def host_total(self) -> int:
        return sum(self.host.values())


@dataclass
class PlannerRun:
    """The planner's answer: the plan, its ShardingOptions, its reservation."""

    plan: Optional[ShardingPlan]
    options: List[ShardingOption]
    kjt_bytes: int = 0
    dense_reserved_bytes: int = 0
    seconds: float = 0.0
    error: Optional[str] = None


# ---- TorchRec internals, read here and nowhere else ------------------------ #
# TorchRec has no public API for these two figures; its own estimators and stats
# table read them the same way. tests/unit/test_plan.py::test_torchrec_internals
# fails loudly if a TorchRec release renames them (attribute access, no defaults).


def optimizer_multiplier(optimizer_class: Optional[type], shape: torch.Size) -> float:
    """Optimizer-state elements per table element (Adagrad 1, RowWiseAdagrad 1/dim,
    Adam 2, SGD 0): TorchRec's private ``shard_estimators._get_optimizer_multipler``."""
    return shard_estimators._get_optimizer_multipler(optimizer_class, shape)


def reserved_bytes(reservation: StorageReservation, tier: str) -> tuple[int, int]:
    """(input KJT, dense) bytes per rank the planner's storage reservation set aside
    on ``tier`` (hbm / ddr): its private ``_kjt_storage`` / ``_dense_storage``."""
    kjt, dense = reservation._kjt_storage, reservation._dense_storage  # type: ignore[attr-defined]
    return (getattr(kjt, tier) if kjt else 0), (getattr(dense, tier) if dense else 0)


class _CollectPlan(Stats):
    """A ``Stats`` sink: the planner hands every Stats the chosen ShardingOptions and
    its storage reservation, which is how we read them without private attributes."""

    def __init__(self) -> None:
        self.best_plan: List[ShardingOption] = []
        self.reservation: Optional[StorageReservation] = None

    def log(self, sharding_plan, topology, batch_size, storage_reservation, num_proposals,  # type: ignore[override]
            num_plans, run_time, best_plan, *args, **kwargs) -> None:
        self.best_plan = list(best_plan)
        self.reservation = storage_reservation


# ---- the model as the planner sees it -------------------------------------- #


def meta_model(model_cfg: ModelConfig, emb_opt: OptimizerConfig) -> nn.Module:
    """DLRMTrain with tables on the meta device and the fused optimizer declared as
    training declares it: TorchRec's storage estimator reads it from each table to
    size the optimizer state."""
    model = build_model(model_cfg, torch.device("cpu"), "meta")
    apply_embedding_optimizer(model, emb_opt)
    return model


def lookups_per_sample(data_cfg: DataConfig) -> int:
    return sum(data_cfg.multi_hot_sizes) if data_cfg.multi_hot_sizes else NUM_SPARSE_FEATURES


def optimizer_state_bytes(numel: int, optimizer_class: Optional[type], dim: int) -> int:
    """Optimizer state of ``numel`` table elements. The multiplier is TorchRec's own
    (Adagrad 1, RowWiseAdagrad 1/dim, Adam 2, SGD 0), but applied to fp32: FBGEMM
    keeps momentum in fp32 even for fp16 rows, where TorchRec's estimator (which
    scales the row bytes) counts half of it."""
    return math.ceil(numel * FP32 * optimizer_multiplier(optimizer_class, torch.Size([1, dim])))


def table_stats(model: nn.Module, emb_opt: OptimizerConfig) -> TableStats:
    """Rows, weight and optimizer bytes of every table under ``emb_opt`` (data_parallel
    tables get the same optimizer: see ``optim.build_optimizer``)."""
    cls = embedding_optimizer_class(emb_opt)
    rows = weight = opt = 0
    for p in embedding_bag_collection(model).parameters():
        rows += p.shape[0]
        weight += p.numel() * p.element_size()
        opt += optimizer_state_bytes(p.numel(), cls, p.shape[1])
    return TableStats(rows, weight, opt, dense_parameter_count(model))


def run_planner(
    cfg: Config, model: nn.Module, world_size: int, local_world_size: int,
    compute_device: str, hbm_bytes: int, ddr_bytes: int,
) -> PlannerRun:
    """TorchRec's planner exactly as training runs it, for a cluster we may not have."""
    collect = _CollectPlan()
    topology = build_topology(world_size, local_world_size, compute_device, hbm_bytes, ddr_bytes)
    planner = build_planner(cfg.sharding, topology, cfg.train.batch_size, stats=[collect],
                            pooling_factors=input_pooling_factors(cfg.data))
    start = time.perf_counter()
    try:
        plan = planner.plan(model, get_default_sharders())
    except (PlannerError, RuntimeError) as e:
        # RuntimeError: the enumerator found no sharding type the constraints allow on
        # this device (e.g. row_wise pinned on CPU, where training plans by hand).
        return PlannerRun(None, [], seconds=time.perf_counter() - start, error=str(e))
    assert collect.reservation is not None, "TorchRec's planner did not report its storage reservation"
    kjt, dense = reserved_bytes(collect.reservation, "hbm" if compute_device == "cuda" else "ddr")
    return PlannerRun(plan, collect.best_plan, kjt_bytes=kjt, dense_reserved_bytes=dense,
                      seconds=time.perf_counter() - start)


# ---- per-rank breakdown ---------------------------------------------------- #


def _shard_split(so: ShardingOption, size: List[int], compute_device: str, cls: Optional[type]) -> Dict[str, int]:
    """Split one shard into weights and optimizer state per tier (hbm / ddr), and
    what TorchRec's storage estimator counts for them (``planner_*``).

    The planner's ``Storage`` lumps rows, optimizer state and I/O buffers; we
    recompute the first two the way TorchRec's own stats table does, and the
    caller calls the remainder (input/output buffers, cache bookkeeping) ``io``."""
    numel = math.prod(size)
    full = compute_storage_usage(so.tensor, compute_device, so.compute_kernel, StorageUsageType.BASE)
    w = {t: math.ceil(b * numel / so.tensor.numel()) for t, b in full.items()}
    mult = optimizer_multiplier(cls, so.tensor.shape)
    opt = optimizer_state_bytes(numel, cls, so.tensor.shape[1])
    out = {"hbm_weights": w.get("hbm", 0), "ddr_weights": w.get("ddr", 0)}
    out["hbm_optimizer"] = opt if "hbm" in w else 0
    out["ddr_optimizer"] = opt if "ddr" in w else 0
    if so.compute_kernel.endswith("uvm_caching"):
        # An HBM cache of cache_load_factor of the rows; TorchRec also counts
        # optimizer state for it, though FBGEMM keeps that state in UVM.
        out["hbm_weights"] = round(out["ddr_weights"] * (so.cache_load_factor or 0.2))
    if so.sharding_type == "data_parallel":
        # Replicated tables train under DDP: a full dense gradient the planner ignores.
        out["hbm_grads (data_parallel)"] = w.get("hbm", 0)
        out["ddr_grads (data_parallel)"] = w.get("ddr", 0)
    out["planner_hbm"] = out["hbm_weights"] + math.ceil(out["hbm_weights"] * mult)
    out["planner_ddr"] = out["ddr_weights"] + math.ceil(out["ddr_weights"] * mult)
    return out


def sparse_by_rank(options: List[ShardingOption], world_size: int, compute_device: str,
                   emb_opt: OptimizerConfig) -> List[RankMemory]:
    """Embedding bytes and the planner's perf estimate (ms) per rank."""
    cls = embedding_optimizer_class(emb_opt)
    ranks = [RankMemory() for _ in range(world_size)]
    for so in options:
        for shard in so.shards:
            part = _shard_split(so, shard.size, compute_device, cls)
            st, r = shard.storage, ranks[shard.rank]
            part["hbm_io"] = max(0, st.hbm - part.pop("planner_hbm"))
            part["ddr_io"] = max(0, st.ddr - part.pop("planner_ddr"))
            for k, v in part.items():
                tier, what = k.split("_", 1)
                dest = r.device if tier == "hbm" else r.host
                label = "embedding " + what + (" (UVM)" if tier == "ddr" and compute_device == "cuda" else "")
                if v or not what.startswith("grads"):
                    dest[label] = dest.get(label, 0) + v
            p = shard.perf
            for k in ("fwd_compute", "fwd_comms", "bwd_compute", "bwd_comms", "prefetch_compute"):
                r.perf_ms[k] = r.perf_ms.get(k, 0.0) + getattr(p, k)
    return ranks


def dense_bytes(model: nn.Module, dense_opt: OptimizerConfig) -> Dict[str, int]:
    """The data-parallel MLPs: fp32 params, one gradient copy (DMP's DDP uses
    gradient_as_bucket_view, so grads live in the buckets), optimizer state.
    Hand-written because TorchRec's reservation uses a flat 6x heuristic."""
    params = dense_parameter_count(model) * FP32
    mult = {"sgd": 1.0 if dense_opt.momentum else 0.0, "adagrad": 1.0, "adam": 2.0}.get(dense_opt.name, 1.0)
    return {"dense params": params, "dense grads (DDP buckets)": params,
            "dense optimizer": int(params * mult)}


def activation_bytes(model_cfg: ModelConfig, batch_size: int) -> int:
    """fp32 forward activations autograd keeps for backward, plus the backward's
    working set (two of the widest activation). Hand-written: TorchRec's planner
    leaves activations to its percentage reserve."""
    f, d = NUM_SPARSE_FEATURES, model_cfg.embedding_dim
    bottom = NUM_DENSE_FEATURES + sum(model_cfg.bottom_mlp)
    if model_cfg.interaction == "dot":
        pairs = f * (f + 1) // 2
        inter_in = (f + 1) * d  # pooled embeddings + bottom output, concatenated
        interaction = inter_in + (f + 1) ** 2 + pairs + (d + pairs)
        top_in = d + pairs
    else:
        top_in = (f + 1) * d
        layer = model_cfg.dcn_low_rank_dim + 3 * top_in  # V x, U V x, x0 * (.), sum
        interaction = top_in + model_cfg.dcn_num_layers * layer
    top = top_in + sum(model_cfg.top_mlp)
    widest = max([top_in, (f + 1) * d] + model_cfg.bottom_mlp + model_cfg.top_mlp)
    return FP32 * batch_size * (bottom + interaction + top + 2 * widest)


def batch_bytes(data_cfg: DataConfig, batch_size: int, finished: bool = True) -> int:
    """One host batch: fp32 dense, fp32 labels and the ids. Finished (a CPU job): one
    int64 per lookup and int32 lengths. Not finished (a GPU job's ``RawBatch``:
    hashing and multi-hot expansion run on the device): the 26 ids as stored."""
    ids = lookups_per_sample(data_cfg) * 8 + NUM_SPARSE_FEATURES * 4 if finished else NUM_SPARSE_FEATURES * 8
    return batch_size * (NUM_DENSE_FEATURES * 4 + ids + 4)


def loader_batches(data_cfg: DataConfig) -> int:
    """Host batches alive per rank: the training process's :data:`HOST_BATCHES_IN_FLIGHT`
    plus, with ``data.num_workers`` > 0, the DataLoader's outstanding ones:
    ``num_workers x prefetch_factor`` sent ahead to the workers' shared memory."""
    return HOST_BATCHES_IN_FLIGHT + data_cfg.num_workers * data_cfg.prefetch_factor


def loader_host_bytes(data_cfg: DataConfig, batch_size: int, compute_device: str) -> int:
    """Data-loader RAM per rank: batches in flight (workers' included), pinned copies,
    generation. A GPU job's loader carries ids as stored (finished on the device)."""
    cuda = compute_device == "cuda"
    n = loader_batches(data_cfg) + (PINNED_BATCHES if cuda else 0)
    total = n * batch_bytes(data_cfg, batch_size, finished=not cuda or data_cfg.source == "random")
    if data_cfg.source == "synthetic":
        total += SYNTHETIC_BYTES_PER_SAMPLE * (max(batch_size, 4096) + data_cfg.val_samples)
    elif data_cfg.source == "random":
        total += RANDOM_CACHED_BATCHES * batch_bytes(data_cfg, batch_size)
    return total


def rank_memory(
    cfg: Config, model: nn.Module, run: PlannerRun, world_size: int, compute_device: str
) -> List[RankMemory]:
    """Every rank's full breakdown: the planner's sparse part plus the rest."""
    ranks = sparse_by_rank(run.options, world_size, compute_device, cfg.optim.embedding)
    b = cfg.train.batch_size
    for r in ranks:
        rest = dense_bytes(model, cfg.optim.dense)
        rest["activations"] = activation_bytes(cfg.model, b)
        rest["input batches"] = run.kjt_bytes + DEVICE_DENSE_BATCHES * b * (NUM_DENSE_FEATURES + 1) * FP32
        rest["evaluation (AUROC state)"] = eval_metric_bytes(
            cfg.metrics, eval_samples(cfg.data, cfg.model.table_sizes()), b, world_size)
        if compute_device == "cuda":
            r.device.update(rest)
            r.device["CUDA context + workspaces"] = CUDA_CONTEXT_HBM_BYTES
            r.host["process (CUDA torch + torchrec)"] = CUDA_PROCESS_HOST_BYTES
        else:
            r.host.update(rest)
            r.host["process (torch + torchrec)"] = CPU_PROCESS_BYTES
        r.host["data loader"] = loader_host_bytes(cfg.data, b, compute_device)
    return ranks
