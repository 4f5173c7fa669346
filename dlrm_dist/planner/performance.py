"""The step-time model applied to a planned job: from a config and TorchRec's plan
to the ``performance`` object of ``dlrm-dist plan`` (samples/s per rank and per job,
step time and its terms, the bottleneck, time per epoch), TorchRec's own embedding
estimate at the same bandwidths beside it, and the scaling curve for ``--plot``.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Dict, List, Optional, Sequence

from dlrm_dist.config import Config
from dlrm_dist.core import criteo
from dlrm_dist.core.units import GiB
from dlrm_dist.hardware.profiles import HardwareProfile
from dlrm_dist.planner import step_time
from dlrm_dist.planner.traffic import Shard, TableLayout, Topo

DENSE_STATE = {"adagrad": 1.0, "adam": 2.0}


def pooling_of(cfg: Config, table: str) -> float:
    """Ids per sample of a table (``t_cat_i``): its multi-hot size, else 1."""
    i = int(table.rsplit("_", 1)[-1])
    return float(cfg.data.multi_hot_sizes[i]) if cfg.data.multi_hot_sizes else 1.0


def layout_from_options(cfg: Config, options: Sequence) -> List[TableLayout]:  # noqa: ANN001 - ShardingOptions
    """The planner's chosen ShardingOptions as layouts (shard sizes as planned)."""
    out = []
    for so in options:
        shards = tuple(Shard(int(s.rank), int(s.size[0]), int(s.size[1])) for s in so.shards)
        out.append(TableLayout(so.name, int(so.tensor.shape[0]), int(so.tensor.shape[1]), so.sharding_type,
                               so.compute_kernel, pooling_of(cfg, so.name), shards,
                               getattr(so, "cache_load_factor", None) or 0.2))
    return out


def layout_from_table(cfg: Config, plan: Dict[str, Dict[str, object]]) -> List[TableLayout]:
    """Layouts from a ``{table: {sharding_type, compute_kernel, ranks}}`` record (what
    training's plan.json and the throughput benchmark keep), shards split evenly as
    TorchRec's ``column_wise`` / ``row_wise`` helpers split them."""
    sizes, dim = cfg.model.table_sizes(), cfg.model.embedding_dim
    out = []
    for name, p in plan.items():
        rows = sizes[int(name.rsplit("_", 1)[-1])]
        ranks = [int(r) for r in p["ranks"]]  # type: ignore[union-attr]
        kind = str(p["sharding_type"])
        if kind in ("column_wise", "table_column_wise"):
            shards = tuple(Shard(r, rows, dim // len(ranks)) for r in ranks)
        elif kind in ("row_wise", "table_row_wise"):
            block = math.ceil(rows / len(ranks))
            shards = tuple(Shard(r, max(0, min(block, rows - i * block)), dim) for i, r in enumerate(ranks))
        else:
            shards = tuple(Shard(r, rows, dim) for r in ranks)
        out.append(TableLayout(name, rows, dim, kind, str(p["compute_kernel"]), pooling_of(cfg, name), shards))
    return out


def step_inputs(cfg: Config, tables: Sequence[TableLayout], topo: Topo, dense_params: int) -> step_time.StepInputs:
    """What the step-time model needs of the config, beside the layout."""
    from dlrm_dist.planner.capacity import activation_bytes

    fwd, bwd = step_time.dense_flops_per_sample(cfg.model)
    gemms_fwd, gemms_bwd = step_time.dense_gemms(cfg.model)
    dense_opt = cfg.optim.dense
    state = 1.0 if dense_opt.name == "sgd" and dense_opt.momentum else DENSE_STATE.get(dense_opt.name, 0.0)
    kind = None
    if cfg.data.source == "criteo":
        kind = "multi_hot" if cfg.data.multi_hot_sizes else "one_hot"
    return step_time.StepInputs(
        batch=cfg.train.batch_size, topo=topo, tables=tuple(tables),
        embedding_optimizer=cfg.optim.embedding.name,
        embedding_elem_bytes=2 if cfg.model.embedding_dtype == "fp16" else 4,
        dense_params=dense_params, dense_optimizer_state=state,
        flops_fwd_per_sample=fwd, flops_bwd_per_sample=bwd,
        activation_bytes=activation_bytes(cfg.model, cfg.train.batch_size),
        pipeline=cfg.train.pipeline, input_kind=kind, gemms=tuple(gemms_fwd) + tuple(gemms_bwd),
    )


def performance(cfg: Config, tables: Sequence[TableLayout], topo: Topo, dense_params: int,
                profile: HardwareProfile, dtype: str, dataset: Optional[str]) -> step_time.Performance:
    """The prediction, with the time per epoch of ``dataset`` (inferred from the tables
    when None) and what the model does not cover for this config."""
    perf = step_time.predict(step_inputs(cfg, tables, topo, dense_params), profile, dtype)
    perf.dataset = dataset or criteo.infer_dataset(cfg.model.table_sizes())
    perf.train_rows = criteo.train_rows(perf.dataset)
    perf.epoch_s = step_time.epoch_seconds(perf.train_rows, perf.samples_per_s)
    if cfg.data.source == "synthetic":
        perf.notes.append("data.source=synthetic: the teacher's batch generation is not modelled (host_input 0)")
    elif cfg.data.source == "random":
        perf.notes.append("data.source=random: batches are ready-made (host_input 0)")
    if profile.device == "cuda" and profile.step_overhead_ms == 0:
        perf.notes.append("host-side framework time per step is not modelled on GPUs")
    return perf


def torchrec_embedding_ms(cfg: Config, options: Sequence, topo: Topo, profile: HardwareProfile) -> Optional[float]:  # noqa: ANN001
    """TorchRec's own ``EmbeddingPerfEstimator`` on the same plan, fed the profile's
    bandwidths (its lookups and all-to-alls only; the slowest rank's forward + backward),
    printed beside our embedding and all-to-all terms as a cross-check."""
    from torchrec.distributed.planner.shard_estimators import EmbeddingPerfEstimator
    from torchrec.distributed.planner.types import HardwareConfig, KernelConfig, TopologyFactory, TrainerConfig
    from torchrec.distributed.planner.utils import build_sharder_data_map, sharder_name
    from torchrec.distributed.sharding_plan import get_default_sharders

    from dlrm_dist.training.sharding import build_constraints, input_pooling_factors

    prof = profile.for_local_ranks(topo.local_world_size)
    per_ms = 1e9 / 1000  # GB/s -> bytes/ms, TorchRec's unit
    mem = prof.hbm_gb_per_s * prof.efficiency.get("memory", 1.0) * per_ms
    link = prof.efficiency.get("link", 1.0) * per_ms
    hw = HardwareConfig(hbm_mem_bw=mem, ddr_mem_bw=mem, hbm_to_ddr_mem_bw=prof.host_link_gb_per_s * per_ms,
                        intra_host_bw=prof.intra_host_gb_per_s * link,
                        inter_host_bw=(prof.inter_host_gb_per_s or prof.intra_host_gb_per_s) * link)
    topology = TopologyFactory.create_topology(
        trainer_config=TrainerConfig(world_size=topo.world_size, local_world_size=topo.local_world_size,
                                     hbm_cap_bytes=int(prof.hbm_gb * GiB), ddr_cap_bytes=1024 * GiB),
        hardware_config=hw, kernel_config=KernelConfig(compute_device=prof.device, use_hardware_based_bandwidth=True))
    opts = copy.deepcopy(list(options))
    constraints = build_constraints(cfg.sharding, input_pooling_factors(cfg.data))
    sharders = {sharder_name(s.module_type): s for s in get_default_sharders()}
    EmbeddingPerfEstimator(topology, constraints=constraints).estimate(opts, build_sharder_data_map(sharders))
    ranks: Dict[int, float] = {}
    for so in opts:
        for s in so.shards:
            ranks[int(s.rank)] = ranks.get(int(s.rank), 0.0) + s.perf.total
    return max(ranks.values()) if ranks else None


def scaling_curve(estimate_at: Callable[[int], object], max_nodes: int) -> List[Dict[str, float]]:
    """Predicted samples/s per GPU and per job at 1, 2, 4 ... ``max_nodes`` nodes, where
    ``estimate_at(nodes)`` is the plan's estimate (a planner dry run each: the plan
    changes with the cluster)."""
    points = []
    nodes = 1
    while nodes <= max_nodes:
        e = estimate_at(nodes)
        p = getattr(e, "performance", None)
        if p:
            points.append({"nodes": nodes, "gpus": e.world_size, "samples_per_s_per_rank": p["samples_per_s_per_rank"],  # type: ignore[attr-defined]
                           "samples_per_s": p["samples_per_s"], "bottleneck": p["bottleneck"], "fits": e.fits})  # type: ignore[attr-defined]
        nodes *= 2
    return points


def plot_scaling(points: List[Dict[str, float]], title: str, path: str) -> str:
    """samples/s per GPU and per job against nodes (log-log), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    nodes = [p["nodes"] for p in points]
    ax.plot(nodes, [p["samples_per_s_per_rank"] for p in points], "o-")
    ax2.plot(nodes, [p["samples_per_s"] for p in points], "o-", label="predicted")
    ax2.plot(nodes, [points[0]["samples_per_s"] * n / nodes[0] for n in nodes], "--", color="grey", label="linear")
    for a, label in ((ax, "samples/s per GPU"), (ax2, "samples/s for the job")):
        a.set_xscale("log", base=2)
        a.set_xlabel("nodes")
        a.set_ylabel(label)
        a.grid(alpha=0.3)
    ax2.set_yscale("log")
    ax2.legend(fontsize=8)
    for p in points:
        ax.annotate(p["bottleneck"].split(" (")[0], (p["nodes"], p["samples_per_s_per_rank"]), fontsize=6,
                    xytext=(2, 4), textcoords="offset points")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

