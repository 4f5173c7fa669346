"""Where the sharding plan is made: Topology + constraints -> planner -> DMP.

TorchRec's ``EmbeddingShardingPlanner`` decides, per embedding table, a
sharding type (table_wise, row_wise, column_wise, table_row_wise,
data_parallel ...), a compute kernel and the ranks that hold it, from a
``Topology`` (world size, GPUs per host, HBM and DDR per rank) and per-table
``ParameterConstraints``. ``DistributedModelParallel`` then shards the
EmbeddingBagCollection accordingly (its forward performs the input and pooled-
embedding all-to-alls) and wraps the rest of the model (the MLPs) in DDP.

The capacity planner (``dlrm_dist.planner.capacity``, behind ``dlrm-dist plan``)
calls the same ``build_topology`` and ``build_planner`` (and so the same
``build_constraints``) for clusters it does not have, so training and planning
never disagree about memory.
"""

from __future__ import annotations

import logging
import warnings
from typing import Dict, List, Optional

import psutil
import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
from torchrec.distributed.planner.types import Stats
from torchrec.distributed.planner.storage_reservations import HeuristicalStorageReservation
from torchrec.distributed.sharding_plan import (
    column_wise,
    construct_module_sharding_plan,
    data_parallel,
    get_default_sharders,
    row_wise,
    table_row_wise,
    table_wise,
)
from torchrec.distributed.types import ShardingEnv, ShardingPlan

from dlrm_dist.config import DataConfig, ShardingConfig

from dlrm_dist.core.criteo import SPARSE_FEATURE_NAMES
from dlrm_dist.training.distributed import DistEnv
from dlrm_dist.model import EBC_PATH, embedding_bag_collection, table_name
from dlrm_dist.core.units import GiB

logger = logging.getLogger(__name__)

# On a CPU compute device TorchRec's planner offers only these; the others run
# on CPU too, but only through a plan built by hand (see manual_plan).
CPU_PLANNER_TYPES = {"data_parallel", "table_wise", "column_wise", "table_column_wise"}
def detect_capacity(cfg: ShardingConfig, compute_device: str, local_world_size: int) -> tuple[int, int]:
    """(HBM, DDR) bytes per rank: the config's figures (GiB), else what this host has:
    the current GPU's memory, and the host's RAM shared by its ranks. Training's plan
    and its start-up memory check (``dlrm_dist.planner.capacity``) both ask here."""
    if cfg.hbm_gb is not None:
        hbm = int(cfg.hbm_gb * GiB)
    elif compute_device == "cuda":
        hbm = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    else:
        hbm = 0
    if cfg.ddr_gb is not None:
        ddr = int(cfg.ddr_gb * GiB)
    else:
        ddr = psutil.virtual_memory().total // max(1, local_world_size)
    return hbm, ddr


def build_topology(
    world_size: int,
    local_world_size: int,
    compute_device: str,
    hbm_bytes: int,
    ddr_bytes: int,
) -> Topology:
    """A Topology with real capacities: TorchRec assumes 32 GB HBM / 128 GB DDR otherwise.
    Built through TorchRec's TopologyFactory, which validates the figures (a Topology
    constructed directly is deprecated)."""
    return TopologyFactory.create_topology(
        trainer_config=TrainerConfig(
            world_size=world_size,
            local_world_size=local_world_size,
            hbm_cap_bytes=hbm_bytes,
            ddr_cap_bytes=ddr_bytes,
        ),
        kernel_config=KernelConfig(compute_device=compute_device),
    )


def input_pooling_factors(cfg: DataConfig) -> Optional[List[float]]:
    """Ids per sample of each feature when the data is multi-hot (DLRM-DCNv2), for
    the planner's input / output size estimates; None (one id each) otherwise."""
    return [float(k) for k in cfg.multi_hot_sizes] if cfg.multi_hot_sizes else None


def build_constraints(
    cfg: ShardingConfig, pooling_factors: Optional[List[float]] = None
) -> Dict[str, ParameterConstraints]:
    """Per-table ParameterConstraints: the global lists, overridden per table.

    ``pooling_factors`` (ids per sample of each feature, e.g. the DCNv2 multi-hot
    sizes) tell the planner's estimators how big each table's inputs and outputs
    are; without them TorchRec assumes one id per sample."""
    constraints = {}
    for i, feature in enumerate(SPARSE_FEATURE_NAMES):
        table = cfg.tables.get(feature)
        types = (table.sharding_types if table and table.sharding_types else cfg.sharding_types)
        kernels = (table.compute_kernels if table and table.compute_kernels else cfg.compute_kernels)
        pooling = [float(pooling_factors[i])] if pooling_factors else None
        if types or kernels or pooling:
            constraints[table_name(feature)] = ParameterConstraints(
                sharding_types=list(types) or None,
                compute_kernels=list(kernels) or None,
                **({"pooling_factors": pooling} if pooling else {}),
            )
    return constraints


def build_planner(
    cfg: ShardingConfig,
    topology: Topology,
    batch_size: int,
    stats: Optional[List[Stats]] = None,
    pooling_factors: Optional[List[float]] = None,
) -> EmbeddingShardingPlanner:
    """The planner training and ``dlrm-dist plan`` share. ``stats`` replaces TorchRec's
    default EmbeddingStats (the capacity planner collects the chosen ShardingOptions
    through it); ``pooling_factors`` see :func:`build_constraints`."""
    with warnings.catch_warnings():
        # TorchRec warns that this reservation over-estimates the dense part in dry
        # runs (meta tensors). Kept on purpose: the error is on the safe side, and
        # dlrm_dist.planner.capacity reports what it reserved beside our own dense estimate.
        warnings.filterwarnings("ignore", message="HeuristicalStorageReservation", category=FutureWarning)
        reservation = HeuristicalStorageReservation(percentage=cfg.storage_reservation)
    return EmbeddingShardingPlanner(
        topology=topology,
        batch_size=batch_size,
        constraints=build_constraints(cfg, pooling_factors),
        storage_reservation=reservation,
        stats=stats,
        debug=True,
    )


def _pinned_types(cfg: ShardingConfig) -> Dict[str, str]:
    """Tables whose constraints allow exactly one sharding type."""
    pinned = {}
    for table, c in build_constraints(cfg).items():
        if c.sharding_types and len(c.sharding_types) == 1:
            pinned[table] = c.sharding_types[0]
    return pinned


def manual_plan(
    model: nn.Module, cfg: ShardingConfig, env: DistEnv
) -> ShardingPlan:
    """A plan built by hand for CPU runs that pin a type the CPU planner refuses
    (row_wise, table_row_wise): every table gets its pinned type, others table_wise
    round-robin. Kernels stay TorchRec's default (fused).

    table_row_wise splits a table's rows over the ranks of ONE host (its all-to-all
    stays on the fast intra-host links); table ``i`` goes to host ``i % num_nodes``
    so that the tables spread over every host instead of all landing on host 0."""
    pinned = _pinned_types(cfg)
    ebc = embedding_bag_collection(model)
    per_param = {}
    for i, feature in enumerate(SPARSE_FEATURE_NAMES):
        name = table_name(feature)
        kind = pinned.get(name, "table_wise")
        per_param[name] = {
            "table_wise": lambda i=i: table_wise(rank=i % env.world_size),
            "row_wise": row_wise,
            "column_wise": lambda: column_wise(ranks=list(range(env.world_size))),
            "table_row_wise": lambda i=i: table_row_wise(host_index=i % env.num_nodes),
            "data_parallel": data_parallel,
        }[kind]()
    module_plan = construct_module_sharding_plan(
        ebc,
        per_param_sharding=per_param,
        local_size=env.local_world_size,
        world_size=env.world_size,
        device_type=env.device.type,
    )
    return ShardingPlan({EBC_PATH: module_plan})


def build_plan(
    model: nn.Module,
    cfg: ShardingConfig,
    env: DistEnv,
    batch_size: int,
    pooling_factors: Optional[List[float]] = None,
) -> ShardingPlan:
    """Run TorchRec's planner on rank 0 and share its plan with every rank
    (``pooling_factors``: see :func:`input_pooling_factors`)."""
    sharders = get_default_sharders()
    pinned = set(_pinned_types(cfg).values())
    if env.device.type == "cpu" and pinned - CPU_PLANNER_TYPES:
        logger.info("CPU run pins %s: building the plan by hand", sorted(pinned - CPU_PLANNER_TYPES))
        return manual_plan(model, cfg, env)
    hbm, ddr = detect_capacity(cfg, env.device.type, env.local_world_size)
    topology = build_topology(env.world_size, env.local_world_size, env.device.type, hbm, ddr)
    planner = build_planner(cfg, topology, batch_size, pooling_factors=pooling_factors)
    return planner.collective_plan(model, sharders, dist.GroupMember.WORLD)


def shard_model(model: nn.Module, plan: ShardingPlan, env: DistEnv) -> DistributedModelParallel:
    """Shard the tables by ``plan`` and wrap the dense part in DDP."""
    return DistributedModelParallel(
        module=model,
        env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
        device=env.device,
        plan=plan,
        sharders=get_default_sharders(),
    )


def describe_plan(plan: ShardingPlan) -> str:
    """One line per table: sharding type, compute kernel, ranks; then TorchRec's own dump."""
    lines = [f"{'table':<12} {'sharding_type':<18} {'compute_kernel':<20} ranks"]
    for module_plan in plan.plan.values():
        for name, ps in module_plan.items():  # type: ignore[union-attr]
            lines.append(
                f"{name:<12} {ps.sharding_type:<18} {ps.compute_kernel:<20} {ps.ranks}"
            )
    return "\n".join(lines) + "\n\n" + str(plan) + "\n"


def plan_sharding_types(plan: ShardingPlan) -> Dict[str, str]:
    """{table: sharding_type}, e.g. to save beside a checkpoint."""
    return {
        name: ps.sharding_type
        for module_plan in plan.plan.values()
        for name, ps in module_plan.items()  # type: ignore[union-attr]
    }
