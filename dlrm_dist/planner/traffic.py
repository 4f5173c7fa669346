"""Bytes one DLRM training step moves, per rank: embedding memory traffic per shard
and the all-to-all / all-reduce traffic on each link (within a host, across hosts).

Pure arithmetic on a plan's layout (no torch), so every formula can be checked by
hand (tests/unit/test_step_time.py). Notation: B samples per rank, W ranks, L ranks
per host, N = W / L hosts, D a table's dim (c a shard's columns), p ids per sample
(pooling factor; multi-hot for DLRM-DCNv2), e bytes per row element.

Where this departs from TorchRec's ``EmbeddingPerfEstimator`` (which the plan also
prints at the same bandwidths, as a cross-check):

* optimizer state is counted as bytes (Adagrad reads and writes one fp32 per
  element, Adam two, RowWiseAdagrad one per row); TorchRec instead multiplies the
  forward time by an empirical ``BWD_COMPUTE_MULTIPLIER`` = 2 whatever the optimizer;
* no 32-element minimum row read (TorchRec's GPU block-usage penalty) on CPU;
* communication is split into intra-host and inter-host bytes per rank, each at its
  own link, instead of TorchRec's one bandwidth per sharding type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

from dlrm_dist.core.units import MiB

ID_BYTES = 8  # int64 ids in the KJT TorchRec's input all-to-all sends
LENGTH_BYTES = 4  # int32 lengths, one per sample and feature
POOLED_BYTES = 4  # pooled embeddings and their gradients travel as fp32
DDP_BUCKET_BYTES = 25 * MiB  # DDP's default bucket_cap_mb=25: one all-reduce call per bucket


@dataclass(frozen=True)
class Shard:
    rank: int
    rows: int
    cols: int


@dataclass(frozen=True)
class TableLayout:
    """One table as the plan placed it: what the step-time model needs of the plan."""

    name: str
    rows: int
    dim: int
    sharding_type: str
    compute_kernel: str
    pooling: float
    """Ids per sample (1 one-hot; the multi-hot size for DCNv2)."""
    shards: Tuple[Shard, ...]
    cache_load_factor: float = 0.2
    """fused_uvm_caching: the fraction of rows cached in HBM, taken as the hit rate
    (TorchRec's ``kernel_bw_lookup`` does the same with its caching ratio)."""


@dataclass(frozen=True)
class Topo:
    world_size: int
    local_world_size: int

    @property
    def nodes(self) -> int:
        return math.ceil(self.world_size / self.local_world_size)

    def host(self, rank: int) -> int:
        return rank // self.local_world_size


@dataclass
class LinkBytes:
    """Bytes one rank sends and receives in one collective phase, per link."""

    sent_intra: float = 0.0
    recv_intra: float = 0.0
    sent_inter: float = 0.0
    recv_inter: float = 0.0
    groups: set = field(default_factory=set)
    """Sharding-type groups that touched this rank: TorchRec issues one collective per group."""



def _send(ranks: List[LinkBytes], topo: Topo, src: int, dst: int, nbytes: float) -> None:
    """Count ``nbytes`` from ``src`` to ``dst`` on their link (nothing when src == dst)."""
    if src == dst or nbytes <= 0:
        return
    if topo.host(src) != topo.host(dst):
        ranks[src].sent_inter += nbytes
        ranks[dst].recv_inter += nbytes
    else:
        ranks[src].sent_intra += nbytes
        ranks[dst].recv_intra += nbytes


def _per_host(topo: Topo, holders: Sequence[int]) -> Dict[int, int]:
    count: Dict[int, int] = {}
    for h in holders:
        count[topo.host(h)] = count.get(topo.host(h), 0) + 1
    return count


def _all_to_holders(ranks: List[LinkBytes], topo: Topo, holders: Sequence[int], x: float) -> None:
    """Every rank sends ``x`` bytes to each holder (closed form: O(W), not O(W x holders))."""
    W, L, here = topo.world_size, topo.local_world_size, _per_host(topo, holders)
    hold = set(holders)
    for r in range(W):
        same = here.get(topo.host(r), 0) - (r in hold)
        ranks[r].sent_intra += same * x
        ranks[r].sent_inter += (len(holders) - same - (r in hold)) * x
    for h in holders:
        ranks[h].recv_intra += (L - 1) * x
        ranks[h].recv_inter += (W - L) * x


def _holders_to_all(ranks: List[LinkBytes], topo: Topo, holders: Sequence[int], x: float) -> None:
    """Each holder sends ``x`` bytes to every other rank (the transpose of the above)."""
    W, L, here = topo.world_size, topo.local_world_size, _per_host(topo, holders)
    hold = set(holders)
    for h in holders:
        ranks[h].sent_intra += (L - 1) * x
        ranks[h].sent_inter += (W - L) * x
    for r in range(W):
        same = here.get(topo.host(r), 0) - (r in hold)
        ranks[r].recv_intra += same * x
        ranks[r].recv_inter += (len(holders) - same - (r in hold)) * x


def state_bytes_per_row(optimizer: str, cols: int) -> float:
    """Optimizer state per row of ``cols`` elements, fp32 whatever the row dtype (FBGEMM)."""
    per_element = {"sgd": 0.0, "adagrad": 4.0, "adam": 8.0}
    if optimizer == "rowwise_adagrad":
        return 4.0
    return per_element.get(optimizer, 4.0) * cols


def rows_served(t: TableLayout, shard: Shard, batch: int, world: int) -> float:
    """Rows a shard looks up per step: table_wise / column_wise shards serve every
    sample of the job (B W p); row_wise ones the fraction of ids in their rows
    (ids uniform over rows); data_parallel replicas only their own rank's B p."""
    if t.sharding_type == "data_parallel":
        return batch * t.pooling
    job = batch * world * t.pooling
    if t.sharding_type in ("row_wise", "table_row_wise", "grid_shard"):
        return job * shard.rows / t.rows
    return job


def samples_pooled(t: TableLayout, batch: int, world: int, topo: Topo) -> float:
    """Pooled output rows a shard writes: every sample of the job it serves (row-wise
    shards write partial sums for all of them), B for a data-parallel replica."""
    if t.sharding_type == "data_parallel":
        return batch
    return batch * world


def embedding_bytes(t: TableLayout, shard: Shard, batch: int, topo: Topo, elem_bytes: int,
                    optimizer: str) -> Tuple[float, float]:
    """(forward, backward + update) bytes of one shard in one step.

    Forward: ids read (8 B each), each looked-up row read (c e), the pooled output
    written (4 c per sample). Backward with the fused update: the pooled gradient
    read (4 c per sample), each row read and written back (2 c e) and its optimizer
    state read and written (2 S)."""
    n = rows_served(t, shard, batch, topo.world_size)
    out = samples_pooled(t, batch, topo.world_size, topo) * shard.cols * POOLED_BYTES
    fwd = n * (ID_BYTES + shard.cols * elem_bytes) + out
    bwd = out + n * (2 * shard.cols * elem_bytes + 2 * state_bytes_per_row(optimizer, shard.cols))
    return fwd, bwd


def _per_sample_ids(t: TableLayout) -> float:
    return t.pooling * ID_BYTES + LENGTH_BYTES


def input_all_to_all(tables: Sequence[TableLayout], batch: int, topo: Topo) -> List[LinkBytes]:
    """The ids' all-to-all: each rank sends its B samples' ids of a feature to the
    ranks that hold the feature's shards. table_wise / column_wise: every shard
    rank gets all of them (B (8 p + 4)); row_wise: ids are bucketized by row, each
    of the W ranks gets 1/W of them plus all lengths (B (8 p / W + 4));
    table_row_wise: the same over the L ranks of the table's host; data_parallel: none."""
    ranks = [LinkBytes() for _ in range(topo.world_size)]
    for t in tables:
        if t.sharding_type == "data_parallel":
            continue
        holders = sorted({s.rank for s in t.shards})
        bucketized = t.sharding_type in ("row_wise", "table_row_wise", "grid_shard")
        per_dst = batch * (t.pooling * ID_BYTES / len(holders) + LENGTH_BYTES) if bucketized \
            else batch * _per_sample_ids(t)
        for r in ranks:
            r.groups.add(t.sharding_type)
        _all_to_holders(ranks, topo, holders, per_dst)
    return ranks


def pooled_all_to_all(tables: Sequence[TableLayout], batch: int, topo: Topo) -> List[LinkBytes]:
    """The forward pooled-embedding exchange (the backward sends the same bytes the
    other way). table_wise / column_wise shard on rank o with c columns: o sends
    4 B c to each other rank. row_wise: a reduce-scatter of partial sums, each rank
    sends 4 B D to each other rank. table_row_wise on host h: an intra-host
    reduce-scatter (each of h's L ranks sends 4 B D N to each of its L - 1 peers),
    then each sends 4 B D to the rank of the same local index on every other host."""
    ranks = [LinkBytes() for _ in range(topo.world_size)]
    W, L = topo.world_size, topo.local_world_size
    for t in tables:
        kind = t.sharding_type
        if kind == "data_parallel":
            continue
        for r in range(W):
            ranks[r].groups.add(kind)
        if kind == "table_row_wise":
            holders = sorted({s.rank for s in t.shards})
            for src in holders:
                for dst in holders:
                    _send(ranks, topo, src, dst, POOLED_BYTES * batch * t.dim * topo.nodes)
                for h in range(topo.nodes):
                    _send(ranks, topo, src, h * L + src % L, POOLED_BYTES * batch * t.dim)
        else:  # table_wise, column_wise, table_column_wise, row_wise: each shard to every rank
            for s in t.shards:
                _holders_to_all(ranks, topo, [s.rank], POOLED_BYTES * batch * s.cols)
    return ranks


def reversed_bytes(ranks: List[LinkBytes]) -> List[LinkBytes]:
    """The backward of an all-to-all: what was sent is received and vice versa."""
    return [LinkBytes(r.recv_intra, r.sent_intra, r.recv_inter, r.sent_inter, set(r.groups)) for r in ranks]


def ring_all_reduce_bytes(nbytes: float, world: int) -> float:
    """Bytes each rank sends (and receives) in a ring all-reduce of ``nbytes``:
    a reduce-scatter and an all-gather of (W - 1) / W each, 2 (W - 1) / W in all."""
    return 2.0 * (world - 1) / world * nbytes if world > 1 else 0.0


def all_reduce_calls(nbytes: float) -> int:
    """DDP all-reduces its gradients in buckets of 25 MiB: one call each."""
    return max(1, math.ceil(nbytes / DDP_BUCKET_BYTES))


def layout_summary(tables: Sequence[TableLayout]) -> Dict[str, int]:
    """Tables per sharding type (for the report)."""
    out: Dict[str, int] = {}
    for t in tables:
        out[t.sharding_type] = out.get(t.sharding_type, 0) + 1
    return out
