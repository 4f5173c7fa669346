"""Where the sharding plan is made: Topology + constraints -> planner -> DMP.

TorchRec's ``EmbeddingShardingPlanner`` decides, per embedding table, a
sharding type (table_wise, row_wise, column_wise, table_row_wise,
data_parallel ...), a compute kernel and the ranks that hold it, from a
``Topology`` (world size, GPUs per host, HBM and DDR per rank) and per-table
``ParameterConstraints``. ``DistributedModelParallel`` then shards the
EmbeddingBagCollection accordingly (its forward performs the input and pooled-
embedding all-to-alls) and wraps the rest of the model (the MLPs) in DDP.

The capacity planner (``dlrm_dist.plan``) calls the same ``build_topology`` and
``build_constraints`` for clusters it does not have, so training and planning
never disagree about memory.
"""

from __future__ import annotations

import logging
from typing import Dict, List

import psutil
import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
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
from torchrec.distributed.types import ModuleSharder, ShardingEnv, ShardingPlan

from dlrm_dist.config import SPARSE_FEATURE_NAMES, ShardingConfig
from dlrm_dist.distributed import DistEnv

logger = logging.getLogger(__name__)

GB = 1024**3
# On a CPU compute device TorchRec's planner offers only these; the others run
# on CPU too, but only through a plan built by hand (see manual_plan).
CPU_PLANNER_TYPES = {"data_parallel", "table_wise", "column_wise", "table_column_wise"}
EBC_PATH = "model.sparse_arch.embedding_bag_collection"


def table_name(feature: str) -> str:
    """The EmbeddingBagConfig name of a feature's table (see model.embedding_bag_configs)."""
    return f"t_{feature}"


def detect_capacity(env: DistEnv, cfg: ShardingConfig) -> tuple[int, int]:
    """(HBM, DDR) bytes per rank: the config's figures, else what this host has."""
    if cfg.hbm_gb is not None:
        hbm = int(cfg.hbm_gb * GB)
    elif env.device.type == "cuda":
        hbm = torch.cuda.get_device_properties(env.device).total_memory
    else:
        hbm = 0
    if cfg.ddr_gb is not None:
        ddr = int(cfg.ddr_gb * GB)
    else:
        ddr = psutil.virtual_memory().total // max(1, env.local_world_size)
    return hbm, ddr


def build_topology(
    world_size: int,
    local_world_size: int,
    compute_device: str,
    hbm_bytes: int,
    ddr_bytes: int,
) -> Topology:
    """A Topology with real capacities: TorchRec assumes 32 GB HBM / 128 GB DDR otherwise."""
    return Topology(
        world_size=world_size,
        local_world_size=local_world_size,
        compute_device=compute_device,
        hbm_cap=hbm_bytes,
        ddr_cap=ddr_bytes,
    )


def build_constraints(cfg: ShardingConfig) -> Dict[str, ParameterConstraints]:
    """Per-table ParameterConstraints: the global lists, overridden per table."""
    constraints = {}
    for feature in SPARSE_FEATURE_NAMES:
        table = cfg.tables.get(feature)
        types = (table.sharding_types if table and table.sharding_types else cfg.sharding_types)
        kernels = (table.compute_kernels if table and table.compute_kernels else cfg.compute_kernels)
        if types or kernels:
            constraints[table_name(feature)] = ParameterConstraints(
                sharding_types=list(types) or None, compute_kernels=list(kernels) or None
            )
    return constraints


def build_planner(
    cfg: ShardingConfig, topology: Topology, batch_size: int
) -> EmbeddingShardingPlanner:
    return EmbeddingShardingPlanner(
        topology=topology,
        batch_size=batch_size,
        constraints=build_constraints(cfg),
        storage_reservation=HeuristicalStorageReservation(percentage=cfg.storage_reservation),
        debug=True,
    )


def _pinned_types(cfg: ShardingConfig) -> Dict[str, str]:
    """Tables whose constraints allow exactly one sharding type."""
    pinned = {}
    for feature, c in build_constraints(cfg).items():
        if c.sharding_types and len(c.sharding_types) == 1:
            pinned[table_name(feature.removeprefix("t_"))] = c.sharding_types[0]
    return pinned


def manual_plan(
    model: nn.Module, cfg: ShardingConfig, env: DistEnv, sharders: List[ModuleSharder]
) -> ShardingPlan:
    """A plan built by hand for CPU runs that pin a type the CPU planner refuses
    (row_wise, table_row_wise): every table gets its pinned type, others table_wise
    round-robin. Kernels stay TorchRec's default (fused)."""
    pinned = _pinned_types(cfg)
    ebc = model.get_submodule(EBC_PATH)
    per_param = {}
    for i, feature in enumerate(SPARSE_FEATURE_NAMES):
        name = table_name(feature)
        kind = pinned.get(name, "table_wise")
        per_param[name] = {
            "table_wise": lambda i=i: table_wise(rank=i % env.world_size),
            "row_wise": row_wise,
            "column_wise": lambda: column_wise(ranks=list(range(env.world_size))),
            "table_row_wise": lambda: table_row_wise(host_index=0),
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
    model: nn.Module, cfg: ShardingConfig, env: DistEnv, batch_size: int
) -> ShardingPlan:
    """Run TorchRec's planner on rank 0 and share its plan with every rank."""
    sharders = get_default_sharders()
    pinned = set(_pinned_types(cfg).values())
    if env.device.type == "cpu" and pinned - CPU_PLANNER_TYPES:
        logger.info("CPU run pins %s: building the plan by hand", sorted(pinned - CPU_PLANNER_TYPES))
        return manual_plan(model, cfg, env, sharders)
    hbm, ddr = detect_capacity(env, cfg)
    topology = build_topology(env.world_size, env.local_world_size, env.device.type, hbm, ddr)
    planner = build_planner(cfg, topology, batch_size)
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
