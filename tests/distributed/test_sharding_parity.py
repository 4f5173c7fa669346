"""Sharded vs unsharded parity: the test that matters most.

A DistributedModelParallel over 2 gloo ranks and an unsharded DLRM holding the
same weights must give, at each of two training steps,
  - the same logits and loss for each rank's local batch,
  - the same gradients of everything not updated in backward (the DDP MLPs, and
    data_parallel tables),
  - the same parameters after the step: MLPs, and every embedding row (fused
    update in backward, or data_parallel tables by their optimizer),
  - the same Adagrad state, for the Adagrad cases,
to 1e-5, for every sharding type, each forced on all 26 tables through
``ShardingConfig(sharding_types=[type])`` and ``dlrm_dist.training.sharding.build_plan``
(TorchRec's planner for table_wise / column_wise / data_parallel; the hand-built
plan for row_wise / table_row_wise, which the CPU planner refuses). The second
step checks that the forward reads the updated rows and that optimizer state
carries over (Adagrad's second update depends on the first gradient's scale).

What "the same" means across ranks: each rank's loss L_r is the mean over its
own local batch of B samples; the reference sees the global batch of W*B.
  - Dense parameters are under DDP, which *averages* gradients over ranks.
  - A model-parallel embedding row receives its gradient through the pooled-
    embedding all-to-all (or reduce-scatter) backward, which TorchRec divides by
    the world size (``torchrec.distributed.comm_ops.GRADIENT_DIVISION``, on by
    default): the per-rank contributions are averaged too.
  - A data_parallel table is a replicated parameter whose gradient DDP all-reduces
    (averages) like the MLPs'.
So every parameter sees the gradient of (1/W) sum_r L_r, the global-batch mean
loss (local batches have equal sizes): that is what the reference trains on.

Ids are kept in range and checked before every forward: FBGEMM's fused kernel
silently maps an out-of-range id to row 0, which would corrupt the comparison
without failing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_dist.config import DistConfig, ModelConfig, OptimizerConfig, ShardingConfig

from dlrm_dist.core.criteo import SPARSE_FEATURE_NAMES
from dlrm_dist.data.batches import make_batch
from dlrm_dist.training.distributed import DistEnv, init_distributed
from dlrm_dist.model import build_model
from dlrm_dist.training.optim import apply_embedding_optimizer, build_optimizer
from dlrm_dist.model import EBC_PATH, table_name
from dlrm_dist.training.sharding import build_plan, plan_sharding_types, shard_model
from tests.distributed.spawn import run_on_ranks

WORLD_SIZE = 2
LOCAL_BATCH = 8  # B per rank; the reference sees WORLD_SIZE * B samples per step
STEPS = 2
SEED = 0
ATOL = RTOL = 1e-5
# 26 tiny tables of 10..50 rows, all different (odd and even sizes, so row-wise
# blocks are uneven for some); 1-3 ids per sample, so sum pooling and rows
# repeated within a batch are exercised.
TABLE_SIZES = [10 + (7 * i) % 41 for i in range(len(SPARSE_FEATURE_NAMES))]
IDS_PER_SAMPLE = [1 + i % 3 for i in range(len(SPARSE_FEATURE_NAMES))]
# Embedding gradients are ~1e-3: SGD gets a large LR so that an update moves a
# row by ~1e-2, far above the tolerance (at lr 0.1 a wrong update could hide
# under it). Adagrad's first step moves each touched weight by ~lr anyway.
EMBEDDING_LR = {"sgd": 10.0, "adagrad": 0.1, "rowwise_adagrad": 0.1}
EPS = 1e-8
# A different optimizer / LR for the MLPs, so a table stepped by the wrong
# optimizer (e.g. a data_parallel table falling to the dense one) shows.
DENSE_OPTIMIZER = OptimizerConfig(name="sgd", lr=0.5)


@dataclass(frozen=True)
class Case:
    sharding_type: str
    optimizer: str = "sgd"  # of the embedding tables (the MLPs: DENSE_OPTIMIZER)
    # The planner cuts columns in blocks of at least 128 (torchrec MIN_CW_DIM):
    # column_wise needs D = 256 to give two column shards instead of one.
    embedding_dim: int = 8

    def __str__(self) -> str:
        return f"{self.sharding_type}-{self.optimizer}"


CASES = [
    # SGD: the update is linear in the gradient, so these isolate forward and
    # backward (lookups, all-to-alls, pooling, gradient averaging).
    Case("table_wise"),
    Case("row_wise"),
    Case("column_wise", embedding_dim=256),
    Case("table_row_wise"),
    Case("data_parallel"),
    # Adagrad is not linear in the gradient: these fail if a row's gradient is
    # not combined over ranks *before* the update, or if its state is wrong.
    Case("row_wise", "adagrad"),
    Case("data_parallel", "adagrad"),
    Case("table_wise", "rowwise_adagrad"),
    # data_parallel tables are not fused: torchrec's RowWiseAdagrad runs on them.
    Case("data_parallel", "rowwise_adagrad"),
]


# --------------------------------------------------------------------------- #
# Inputs and comparisons


def model_config(case: Case) -> ModelConfig:
    return ModelConfig(
        embedding_dim=case.embedding_dim,
        num_embeddings_per_feature=TABLE_SIZES,
        bottom_mlp=[16, case.embedding_dim],
        top_mlp=[16, 1],
    )


def global_arrays(world_size: int, step: int) -> Tuple[np.ndarray, List[np.ndarray], np.ndarray]:
    """Dense (N, 13), per-feature ids (N, k_f), labels (N,) for N = world_size * B."""
    rng = np.random.default_rng([SEED, step])
    n = world_size * LOCAL_BATCH
    dense = rng.standard_normal((n, 13)).astype(np.float32)
    ids = [rng.integers(0, rows, size=(n, k)) for rows, k in zip(TABLE_SIZES, IDS_PER_SAMPLE)]
    for f, rows in enumerate(TABLE_SIZES):  # touch both ends of every table (both row shards)
        ids[f][0, 0], ids[f][-1, 0] = 0, rows - 1
    labels = rng.integers(0, 2, size=n).astype(np.float32)
    return dense, ids, labels


def rank_slice(rank: int) -> slice:
    return slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)


def assert_ids_in_range(kjt: KeyedJaggedTensor, table_sizes: List[int]) -> None:
    """Every id of feature cat_i lies in [0, rows_i): the fused kernel would not complain."""
    per_feature = kjt.to_dict()
    for feature, rows in zip(SPARSE_FEATURE_NAMES, table_sizes):
        values = per_feature[feature].values()
        if values.numel():
            lo, hi = int(values.min()), int(values.max())
            assert 0 <= lo and hi < rows, f"{feature}: ids in [{lo}, {hi}] but the table has {rows} rows"


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, scale: Optional[float] = None) -> None:
    """|actual - expected| <= 1e-5 * (|expected| + s), s = min(1, scale), scale
    defaulting to max |expected|.

    That is rtol = atol = 1e-5 for weights and logits (magnitude ~1), but an
    absolute floor relative to the tensor's own magnitude for small quantities:
    a plain atol of 1e-5 would accept any gradient (~1e-3) or Adagrad sum (~1e-7).
    """
    if scale is None:
        scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(
        actual, expected, rtol=RTOL, atol=ATOL * min(1.0, scale), msg=lambda m: f"{what}: {m}"
    )


def is_embedding(name: str) -> bool:
    return name.startswith(EBC_PATH + ".")


# --------------------------------------------------------------------------- #
# The reference: one process, unsharded, the global batch


def reference_embedding_optimizer(name: str, params) -> torch.optim.Optimizer:
    """The update FBGEMM's fused kernel performs, written with plain optimizers.

    sgd:              w -= lr * g
    adagrad:          s += g*g;            w -= lr * g / (sqrt(s) + eps)   (FBGEMM EXACT_ADAGRAD;
                      torch.optim.Adagrad with lr_decay=0 and initial state 0 is the same formula)
    rowwise_adagrad:  s_row += mean(g*g);  w -= lr * g / (sqrt(s_row) + eps)  (FBGEMM
                      EXACT_ROWWISE_ADAGRAD; torchrec.optim.RowWiseAdagrad is the same formula)
    Rows not in the batch have g = 0 and stay unchanged under all three, as in FBGEMM.
    """
    lr = EMBEDDING_LR[name]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=EPS)
    if name == "rowwise_adagrad":
        return RowWiseAdagrad(params, lr=lr, eps=EPS)
    raise ValueError(name)


@dataclass
class ReferenceStep:
    logits: torch.Tensor  # (N,)
    losses: List[float]  # L_r: mean over rank r's samples
    grads: Dict[str, torch.Tensor]  # of the global-batch mean loss, every parameter
    state: Dict[str, torch.Tensor]  # state_dict after the step
    embedding_state: Dict[str, torch.Tensor]  # table weight key -> Adagrad sum (empty for SGD)


def run_reference(case: Case, world_size: int) -> Tuple[Dict[str, torch.Tensor], List[ReferenceStep]]:
    """(initial state_dict, what each step produced) for the unsharded model."""
    torch.manual_seed(SEED)
    ref = build_model(model_config(case), torch.device("cpu"), sparse_device="cpu")
    initial = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    named = dict(ref.named_parameters())
    emb_opt = reference_embedding_optimizer(case.optimizer, [p for n, p in named.items() if is_embedding(n)])
    dense_opt = torch.optim.SGD([p for n, p in named.items() if not is_embedding(n)], lr=DENSE_OPTIMIZER.lr)

    steps = []
    for step in range(STEPS):
        batch = make_batch(*global_arrays(world_size, step))
        assert_ids_in_range(batch.sparse_features, TABLE_SIZES)
        # DLRMTrain returns detached logits: call the inner DLRM for a differentiable copy.
        logits = ref.model(batch.dense_features, batch.sparse_features).squeeze(-1)
        losses = [
            F.binary_cross_entropy_with_logits(logits[rank_slice(r)], batch.labels[rank_slice(r)])
            for r in range(world_size)
        ]
        # Every parameter's gradient is averaged over ranks (see the module
        # docstring): back-propagate the global-batch mean, (1/W) sum_r L_r.
        torch.stack(losses).mean().backward()
        grads = {n: p.grad.clone() for n, p in named.items()}
        emb_opt.step()
        dense_opt.step()
        emb_opt.zero_grad()
        dense_opt.zero_grad()
        emb_state = {}
        if case.optimizer != "sgd":
            # Row-wise Adagrad keeps one value per row: (rows, 1) here, (rows,) in FBGEMM.
            emb_state = {
                n: emb_opt.state[p]["sum"].clone().view(-1 if case.optimizer == "rowwise_adagrad" else p.shape)
                for n, p in named.items()
                if is_embedding(n)
            }
        steps.append(
            ReferenceStep(
                logits=logits.detach(),
                losses=[l.item() for l in losses],
                grads=grads,
                state={k: v.detach().clone() for k, v in ref.state_dict().items()},
                embedding_state=emb_state,
            )
        )
    return initial, steps


# --------------------------------------------------------------------------- #
# Moving between full (reference) tensors and this rank's pieces of DMP tensors


def local_pieces(value: torch.Tensor) -> Iterator[Tuple[torch.Tensor, Tuple[slice, ...]]]:
    """(local tensor, index of the full tensor it holds) for each piece on this rank.

    TorchRec 1.8 gives ShardedTensors for sharded tables (row blocks, column
    blocks or whole tables, placed by shard metadata; none on a rank that holds
    no shard) and plain replicated tensors for data_parallel tables and the MLPs.
    """
    if isinstance(value, ShardedTensor):
        for shard in value.local_shards():
            md = shard.metadata
            yield shard.tensor, tuple(slice(o, o + s) for o, s in zip(md.shard_offsets, md.shard_sizes))
    elif isinstance(value, DTensor):  # not produced by torchrec 1.8 here; fail clearly if it appears
        raise NotImplementedError(f"DTensor in the DMP state ({value.placements}): extend local_pieces")
    else:
        yield value, tuple(slice(None) for _ in value.shape)


def load_full_state(dmp: torch.nn.Module, full: Dict[str, torch.Tensor]) -> None:
    """Copy the reference tensors into the DMP, each rank into its own pieces (in place:
    the state_dict's local tensors are views of the fused kernel's weights)."""
    state = dmp.state_dict()
    assert set(state) == set(full), f"state_dict keys differ: {sorted(set(state) ^ set(full))}"
    with torch.no_grad():
        for key, value in state.items():
            for local, index in local_pieces(value):
                local.copy_(full[key][index])


def assert_pieces_cover(dmp: torch.nn.Module, world_size: int) -> None:
    """Every element of every sharded table is held by exactly one rank (replicated
    tensors by every rank), so comparing local pieces compares whole tables."""
    for key, value in dmp.state_dict().items():
        count = torch.zeros(value.shape, dtype=torch.int32)
        for _, index in local_pieces(value):
            count[index] += 1
        dist.all_reduce(count)
        expected = 1 if isinstance(value, ShardedTensor) else world_size
        assert bool((count == expected).all()), f"{key}: elements held {count.unique().tolist()} times"


def assert_pieces_close(actual: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor], what: str) -> None:
    # A subset: a rank's fused optimizer state covers only its own tables
    # (assert_optimizer_split checks that the ranks' tables add up to all of them).
    assert set(actual) <= set(expected), f"{what} unexpected keys: {sorted(set(actual) - set(expected))}"
    for key, value in actual.items():
        scale = float(expected[key].abs().max())  # of the whole tensor, not of this piece
        for local, index in local_pieces(value):
            assert_close(local, expected[key][index], f"{what} {key}{list(index)}", scale)


# --------------------------------------------------------------------------- #
# Checks on the plan and on the optimizers


def assert_plan_has_type(plan, sharding_type: str, world_size: int, local_world_size: Optional[int] = None) -> None:
    """Every table got the requested type, and the sharding is not degenerate (a
    "column_wise" table in one column block, or every table on one rank, would
    let the test pass without exercising the sharding).

    table_row_wise splits a table over the ranks of one host: each table must
    cover exactly one host's ranks, and the tables together every host."""
    local_world_size = local_world_size or world_size
    types = plan_sharding_types(plan)
    assert set(types) == {table_name(f) for f in SPARSE_FEATURE_NAMES}, sorted(types)
    wrong = {t: st for t, st in types.items() if st != sharding_type}
    assert not wrong, f"asked for {sharding_type} on every table, plan has {wrong}"
    everyone = set(range(world_size))
    hosts = [set(range(h, h + local_world_size)) for h in range(0, world_size, local_world_size)]
    used = set()
    for ps in plan.plan[EBC_PATH].values():
        used |= set(ps.ranks)
        on = {s.placement.rank() for s in ps.sharding_spec.shards} if ps.sharding_spec else set(ps.ranks)
        if sharding_type in ("row_wise", "column_wise"):
            assert on == everyone, f"{ps}: not split over all ranks"
        elif sharding_type == "table_row_wise":
            assert on in hosts, f"{ps}: shards on ranks {sorted(on)}, not on exactly one host's {hosts}"
    assert used == everyone, f"{sharding_type}: tables only on ranks {sorted(used)}"


def assert_optimizer_split(optimizer) -> None:
    """MLPs in the dense optimizer, every table with the embedding optimizer: fused,
    or (data_parallel: TorchRec's unfused dense kernel) in its own wrapper. A rank's
    fused optimizer holds only its own tables: check the union over ranks."""
    parts = {key: set(opt.params) for key, opt in optimizer.optimizers}
    tables = {f"{EBC_PATH}.embedding_bags.{table_name(f)}.weight" for f in SPARSE_FEATURE_NAMES}
    assert parts["dense"] and not parts["dense"] & tables, (
        f"dense optimizer holds tables {sorted(parts['dense'] & tables)}"
    )
    local = parts["embedding"] | parts.get("embedding_dp", set())
    everywhere: List[set] = [set() for _ in range(dist.get_world_size())]
    dist.all_gather_object(everywhere, local)
    covered = set().union(*everywhere)
    assert covered == tables, f"tables without the embedding optimizer: {sorted(tables - covered)}"


def embedding_optimizer_state(dmp: torch.nn.Module, optimizer) -> Dict[str, torch.Tensor]:
    """Table weight key -> its Adagrad accumulator, wherever it lives: the fused
    optimizer's ``momentum1`` (sharded tables; a rank sees only its own tables)
    or the unfused wrapper's ``sum`` (data_parallel tables)."""
    state = {}
    for key, per_param in dmp.fused_optimizer.state_dict()["state"].items():
        (accumulator,) = [v for k, v in per_param.items() if k.endswith("momentum1")]
        state[key] = accumulator
    for key, opt in optimizer.optimizers:
        if key == "embedding_dp":
            for name, p in opt.params.items():
                accumulator = opt.state[p]["sum"]  # RowWiseAdagrad's is (rows, 1): make it (rows,)
                state[name] = accumulator if accumulator.shape == p.shape else accumulator.view(-1)
    return state


# --------------------------------------------------------------------------- #
# One rank


def parity_worker(case: Case) -> None:
    env = init_distributed(DistConfig(device="cpu", backend="gloo"))
    rank, world = env.rank, env.world_size
    initial, reference = run_reference(case, world)  # same seed on every rank: the same reference

    model = build_model(model_config(case), env.device, sparse_device="meta")
    embedding_cfg = OptimizerConfig(name=case.optimizer, lr=EMBEDDING_LR[case.optimizer], eps=EPS)
    apply_embedding_optimizer(model, embedding_cfg)  # before sharding: picks the fused kernel
    plan = build_plan(model, ShardingConfig(sharding_types=[case.sharding_type]), env, LOCAL_BATCH)
    assert_plan_has_type(plan, case.sharding_type, world, env.local_world_size)
    dmp = shard_model(model, plan, env)
    load_full_state(dmp, initial)
    assert_pieces_cover(dmp, world)
    optimizer = build_optimizer(dmp, DENSE_OPTIMIZER, embedding_cfg)
    assert_optimizer_split(optimizer)

    rows = rank_slice(rank)
    for step, ref in enumerate(reference):
        dense, ids, labels = global_arrays(world, step)
        batch = make_batch(dense[rows], [i[rows] for i in ids], labels[rows])
        assert_ids_in_range(batch.sparse_features, TABLE_SIZES)
        at = f"step {step}, {case}, rank {rank}:"

        # Forward: this rank's logits are the reference's rows for this rank.
        loss, (_, logits, _) = dmp(batch)
        assert_close(logits, ref.logits[rows], f"{at} logits")
        assert_close(loss.detach(), torch.tensor(ref.losses[rank]), f"{at} loss")

        # Backward: fused tables are updated right here; DDP averages the gradients
        # of the replicated parameters (MLPs, data_parallel tables): they wait in .grad.
        loss.backward()
        for name, p in in_backward_optimizer_filter(dmp.named_parameters()):
            assert_close(p.grad.view(ref.grads[name].shape), ref.grads[name], f"{at} grad {name}")

        # Step: the other optimizers move what the fused one did not.
        optimizer.step()
        optimizer.zero_grad()
        assert_pieces_close(dmp.state_dict(), ref.state, f"{at} after the step,")
        if case.optimizer != "sgd":
            assert_pieces_close(embedding_optimizer_state(dmp, optimizer), ref.embedding_state, f"{at} Adagrad sum")


# --------------------------------------------------------------------------- #
# Tests


@pytest.mark.parametrize("case", CASES, ids=str)
def test_sharded_matches_unsharded(case: Case):
    run_on_ranks(parity_worker, case, world_size=WORLD_SIZE, timeout_s=240)


# Across hosts: 2 hosts x 1 rank, two torchrun agents meeting through c10d. The
# planner sees one rank per host (LOCAL_WORLD_SIZE 1 < WORLD_SIZE 2) and the
# hand-built table_row_wise puts each table on one host. One launch runs all the
# cases (each rank imports torchrec once, the costly part).
HOSTS_CASES = [Case("table_wise"), Case("row_wise", "adagrad"), Case("table_row_wise")]


def hosts_worker(*case_names: str) -> None:
    """Entry of each rank under tests.distributed.hosts: the parity cases, in turn."""
    import os
    import socket

    assert int(os.environ["LOCAL_WORLD_SIZE"]) == 1 and int(os.environ["WORLD_SIZE"]) == 2, dict(os.environ)
    torch.set_num_threads(1)
    by_name = {str(c): c for c in HOSTS_CASES}
    for name in case_names:
        parity_worker(by_name[name])
        print(f"parity ok: {name} on rank {os.environ['RANK']} of host {socket.gethostname()}", flush=True)


def test_sharded_matches_unsharded_across_two_hosts():
    from tests.distributed.hosts import run_as_hosts

    names = [str(c) for c in HOSTS_CASES]
    outputs = run_as_hosts("tests.distributed.test_sharding_parity:hosts_worker", names, nnodes=2, nproc_per_node=1, timeout_s=400)
    for name in names:
        assert sum(f"parity ok: {name} on rank" in o for o in outputs) == 2, (name, outputs)


@pytest.mark.parametrize("sharding_type", ["row_wise", "table_row_wise"])
@pytest.mark.parametrize("world_size,local_world_size", [(2, 2), (4, 2), (2, 1)], ids=["1x2", "2x2", "2x1"])
def test_cpu_gets_hand_built_plan_for_cuda_only_types(sharding_type: str, world_size: int, local_world_size: int):
    """build_plan on CPU honours a pinned row_wise / table_row_wise on every table
    (TorchRec's CPU planner would refuse them), on one host and across hosts:
    table_row_wise keeps each table on one host's ranks and spreads the tables over
    all hosts. The hand-built plan needs no process group: one process, a DistEnv."""
    env = DistEnv(rank=0, world_size=world_size, local_rank=0, local_world_size=local_world_size,
                  device=torch.device("cpu"), backend="gloo")
    model = build_model(model_config(Case(sharding_type)), env.device, sparse_device="meta")
    plan = build_plan(model, ShardingConfig(sharding_types=[sharding_type]), env, LOCAL_BATCH)
    assert_plan_has_type(plan, sharding_type, env.world_size, local_world_size)


def test_out_of_range_id_is_caught():
    """The guard the parity test relies on: an id == rows must fail, not map to row 0."""
    dense, ids, labels = global_arrays(1, step=0)
    ids[3][2, 0] = TABLE_SIZES[3]
    with pytest.raises(AssertionError, match="cat_3"):
        assert_ids_in_range(make_batch(dense, ids, labels).sparse_features, TABLE_SIZES)
