"""What ``dlrm-dist calibrate`` measures, one figure per function, in the calling
process: matmul rates (flat, by GEMM shape, batched per-sample products), copy and
host-link bandwidth, FBGEMM's fused embedding kernel, collectives over a process
group, and the framework's cost per training step. ``calibrate`` runs them in one
process and in N ranks at once and turns them into a profile.

Timing follows the benchmarks (``benchmarks/ceiling.py``: ``torch.utils.benchmark``
timers; ``benchmarks/comm.py``: windows of collective calls, the slowest rank's median).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable, Dict, Iterator, List

import torch
import torch.distributed as dist

from dlrm_dist.core.units import GiB, MiB

KiB = 1024

EMB_TABLES, EMB_ROWS, EMB_DIM = 8, 250_000, 32
EMB_BATCHES = (16, 4096)
A2A_SMALL, A2A_LARGE = 4 * KiB, 8 * MiB


_LOCKSTEP: List[Callable[[], None]] = []


@contextlib.contextmanager
def lockstep(barrier: Callable[[], None]) -> Iterator[None]:
    """Inside it, every timing starts with ``barrier()``: ranks measuring together time the
    same work at the same moment, as training's ranks run it (not one rank's GEMM while
    its neighbour sits between figures, or has finished)."""
    _LOCKSTEP.append(barrier)
    try:
        yield
    finally:
        _LOCKSTEP.pop()


def _time(fn, seconds: float) -> float:  # noqa: ANN001
    """Seconds per call: the best of 3 medians (torch.utils.benchmark: syncs CUDA, honours
    the thread count). The best, not the mean: on a machine others share, a slow
    repeat measures them, not this machine. Under :func:`lockstep`, each repeat starts
    at a barrier."""
    from torch.utils.benchmark import Timer

    fn()  # warm-up: allocations, kernel selection
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    times = []
    for _ in range(3):
        for barrier in _LOCKSTEP:
            barrier()
        times.append(timer.blocked_autorange(min_run_time=seconds / 3).median)
    return min(times)


def gemm_tflops(device: torch.device, dtype: torch.dtype, seconds: float) -> float:
    """Forward + backward of 3 Linear(512, 512) at batch 2048: FLOPs / time."""
    from torch.utils.flop_counter import FlopCounterMode

    layers = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(3)]).to(device, dtype)
    x = torch.randn(2048, 512, device=device, dtype=dtype, requires_grad=True)

    grad = torch.randn(2048, 512, device=device, dtype=dtype)

    def step() -> None:
        layers(x).backward(grad)

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops() / _time(step, seconds) / 1e12


GEMM_DIMS = (1, 16, 64, 256, 1024)


def gemm_tflops_by_min_dim(device: torch.device, seconds: float) -> Dict[int, float]:
    """fp32 rate of forward + backward of Linear(512, d) at batch 2048 for d in GEMM_DIMS:
    each of its three GEMMs has d as its smallest weight-side dimension, the quantity
    the step-time model looks the rate up by (an MLP's 13-wide input or 1-wide output
    layer runs at a small fraction of a 512-wide one's rate on a CPU). The backward gets
    a dense gradient, as in training (``.sum().backward()`` would hand it a stride-0
    expanded one, which some kernels take a slow path for)."""
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    for d in GEMM_DIMS:
        layer = torch.nn.Linear(512, d, bias=False).to(device)
        x = torch.randn(2048, 512, device=device, requires_grad=True)
        grad = torch.randn(2048, d, device=device)

        def step() -> None:
            layer(x).backward(grad)

        counter = FlopCounterMode(display=False)
        with counter:
            step()
        out[d] = counter.get_total_flops() / _time(step, seconds) / 1e12
    return out


BMM_DIMS = (8, 16, 64, 128)


def bmm_tflops_by_min_dim(device: torch.device, seconds: float) -> Dict[int, float]:
    """fp32 rate of forward + backward of 2048 per-sample products (32 x d) @ (d x 32),
    d in BMM_DIMS: the dot interaction's shape ((F+1) x D against its transpose), a batch
    of tiny matrices that runs at a small fraction of an MLP layer's rate on a CPU. A
    dense gradient, as in training: with ``.sum().backward()``'s stride-0 one the CPU's
    bmm backward ran 2-10x slower, and the model charged the interaction for it."""
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    for d in BMM_DIMS:
        x = torch.randn(2048, 32, d, device=device, requires_grad=True)
        grad = torch.randn(2048, 32, 32, device=device)

        def step() -> None:
            torch.bmm(x, x.transpose(1, 2)).backward(grad)

        counter = FlopCounterMode(display=False)
        with counter:
            step()
        out[d] = counter.get_total_flops() / _time(step, seconds) / 1e12
    return out


def copy_gb_per_s(device: torch.device, seconds: float) -> float:
    """Bytes read + written per second by ``dst.copy_(src)`` (64 MiB; 1 GiB on a GPU)."""
    nbytes = GiB if device.type == "cuda" else 64 * MiB
    src = torch.empty(nbytes // 4, device=device).uniform_()
    dst = torch.empty_like(src)
    return 2.0 * nbytes / _time(lambda: dst.copy_(src), seconds) / 1e9


REFERENCE_BOTTOM, REFERENCE_TOP, REFERENCE_DIM = (128, 64, 16), (256, 64, 1), 16
"""The reference dense step of :func:`elementwise_gb_per_s`: a small DLRM's MLPs and dot
interaction, none of the shipped configs' or the benchmarks' (no model it predicts is
its own reference)."""


def elementwise_gb_per_s(device: torch.device, seconds: float, gemm_by_dim: Dict[int, float],
                         bmm_by_dim: Dict[int, float]) -> float:
    """The rate the dense step's work other than its matmuls runs at (ReLUs, biases,
    the interaction's concatenations and gathers, the loss, autograd's buffers), by the
    step-time model's byte count: forward + backward of a reference DLRM's dense step at
    batch 2048 (the pooled embeddings a leaf, as the lookup's all-to-all hands them
    over), less its matmuls at the rates just measured (``gemm_by_dim``, ``bmm_by_dim``),
    over 3 passes of its activations (``capacity.activation_bytes``): the byte count the
    model charges at this rate, so the two are defined together."""
    from dlrm_dist.config import ModelConfig
    from dlrm_dist.core.criteo import NUM_DENSE_FEATURES, NUM_SPARSE_FEATURES
    from dlrm_dist.model import build_model
    from dlrm_dist.planner.capacity import activation_bytes
    from dlrm_dist.planner.dense_flops import dense_gemms
    from dlrm_dist.planner.step_time import matmul_seconds

    batch = 2048
    cfg = ModelConfig(embedding_dim=REFERENCE_DIM, num_embeddings=2, bottom_mlp=list(REFERENCE_BOTTOM),
                      top_mlp=list(REFERENCE_TOP), interaction="dot")
    dlrm = build_model(cfg, device, sparse_device="cpu").model
    dense = torch.randn(batch, NUM_DENSE_FEATURES, device=device)
    pooled = torch.randn(batch, NUM_SPARSE_FEATURES, REFERENCE_DIM, device=device, requires_grad=True)
    labels = torch.rand(batch, device=device)

    def step() -> None:
        logits = dlrm.over_arch(dlrm.inter_arch(dense_features=dlrm.dense_arch(dense), sparse_features=pooled))
        torch.nn.functional.binary_cross_entropy_with_logits(logits.squeeze(-1), labels).backward()

    seconds_per_step = _time(step, seconds)
    fwd, bwd = dense_gemms(cfg)
    gemm = matmul_seconds((*fwd, *bwd), batch, gemm_by_dim, bmm_by_dim)
    # at least a tenth of the step: a GEMM rate measured high must not make this infinite
    return 3 * activation_bytes(cfg, batch) / max(seconds_per_step - gemm, seconds_per_step / 10) / 1e9


def embedding_kernel(device: torch.device, seconds: float) -> Dict[str, float]:
    """FBGEMM's table-batched kernel, forward + backward + fused exact Adagrad, at two
    batch sizes: time = fixed + bytes / bandwidth, bytes as the step-time model counts
    them for these rows (a table_wise shard on one rank)."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (ComputeDevice,
                                                                         SplitTableBatchedEmbeddingBagsCodegen)

    from dlrm_dist.planner import traffic as tr

    on_gpu = device.type == "cuda"
    spec = (EMB_ROWS, EMB_DIM, EmbeddingLocation.DEVICE if on_gpu else EmbeddingLocation.HOST,
            ComputeDevice.CUDA if on_gpu else ComputeDevice.CPU)
    tbe = SplitTableBatchedEmbeddingBagsCodegen([spec] * EMB_TABLES, optimizer=EmbOptimType.EXACT_ADAGRAD,
                                                learning_rate=0.01, device=device)
    layout = tr.TableLayout("t", EMB_ROWS, EMB_DIM, "table_wise", "fused", 1.0, (tr.Shard(0, EMB_ROWS, EMB_DIM),))
    points = []
    for batch in EMB_BATCHES:
        ids = torch.randint(0, EMB_ROWS, (EMB_TABLES * batch,), device=device)
        offsets = torch.arange(EMB_TABLES * batch + 1, device=device)

        def step() -> None:
            out = tbe(ids, offsets)
            out.backward(torch.ones_like(out))

        fwd, bwd = tr.embedding_bytes(layout, layout.shards[0], batch, tr.Topo(1, 1), 4, "adagrad")
        points.append((EMB_TABLES * (fwd + bwd), _time(step, seconds)))
    (b1, t1), (b2, t2) = points
    # The tiny batch is nearly all fixed cost and the large one nearly all bytes, so each
    # figure comes mostly from one timing (a slope between two mid-sized timings is what
    # a shared machine's noise ruins).
    per_byte = max((t2 - t1) / (b2 - b1), 1e-15)
    fixed = max(0.0, t1 - b1 * per_byte)
    return {"embedding_gb_per_s": b2 / max(t2 - fixed, 1e-9) / 1e9, "embedding_fixed_ms": fixed * 1000}


def collective(op: str, nbytes: int, group, device: torch.device, seconds: float) -> float:  # noqa: ANN001
    """Seconds per call of ``op`` on ``nbytes`` per rank: median of 5 windows, then the
    slowest rank's (a collective is as slow as its slowest member), as benchmarks/comm.py."""
    world = dist.get_world_size(group)
    n = max(world, (nbytes // 4) // world * world)
    src, dst = torch.rand(n, device=device), torch.empty(n, device=device)

    def call() -> None:
        if op == "all_to_all":
            dist.all_to_all_single(dst, src, group=group)
        else:
            dist.all_reduce(src, group=group)

    call()
    iters = 1
    windows = []
    for _ in range(5):
        dist.barrier(group=group)
        start = time.perf_counter()
        for _ in range(iters):
            call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        windows.append((time.perf_counter() - start) / iters)
        # every rank must make the same number of calls: rank 0's choice for all
        plan = torch.tensor([max(1, min(50, int(seconds / 5 / max(windows[-1], 1e-6))))], device=device)
        dist.broadcast(plan, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
        iters = int(plan)
    worst = torch.tensor([statistics.median(windows)], dtype=torch.float64, device=device)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX, group=group)
    return float(worst)


def link(group, device: torch.device, seconds: float) -> Dict[str, float]:  # noqa: ANN001
    """Latency (4 KiB) and bandwidth (8 MiB per rank) of both collectives, in the step-time
    model's terms: an all-to-all moves (W-1)/W of its bytes per rank, a ring all-reduce 2 (W-1)/W."""
    w = dist.get_world_size(group)
    out = {}
    for op, share in (("all_to_all", (w - 1) / w), ("all_reduce", 2 * (w - 1) / w)):
        small = collective(op, A2A_SMALL, group, device, seconds)
        large = collective(op, A2A_LARGE, group, device, seconds)
        out[f"{op}_latency_us"] = small * 1e6
        out[f"{op}_gb_per_s"] = A2A_LARGE * share / max(large - small, 1e-9) / 1e9
    return out


def host_link_gb_per_s(device: torch.device, seconds: float) -> float:
    """Pinned host -> GPU copy (256 MiB): what UVM tables' rows come over. On a CPU
    device the "host link" is memory itself: the copy bandwidth."""
    if device.type != "cuda":
        return copy_gb_per_s(device, seconds)
    src = torch.empty(256 * MiB // 4, pin_memory=True).uniform_()
    dst = torch.empty(256 * MiB // 4, device=device)
    return src.numel() * 4 / _time(lambda: dst.copy_(src, non_blocking=True), seconds) / 1e9


def process_figures(device: torch.device, seconds: float) -> Dict[str, Any]:
    """What one process measures with its threads: matmul rate, memory, embedding kernel."""
    tflops = {"fp32": gemm_tflops(device, torch.float32, seconds)}
    if device.type == "cuda":
        tflops["bf16"] = gemm_tflops(device, torch.bfloat16, seconds)
    by_dim, bmm = gemm_tflops_by_min_dim(device, seconds), bmm_tflops_by_min_dim(device, seconds)
    return {"peak_tflops": tflops, "gemm_tflops_by_min_dim": by_dim, "bmm_tflops_by_min_dim": bmm,
            "hbm_gb_per_s": copy_gb_per_s(device, seconds),
            "elementwise_gb_per_s": elementwise_gb_per_s(device, seconds, by_dim, bmm),
            **embedding_kernel(device, seconds)}


TINY_BATCHES, TINY_WINDOWS, TINY_STEPS, TINY_ROWS = (64, 2048), 5, 8, 100_000
"""The minimal DLRM's batches per rank (nearly all fixed cost; a training-sized one) and
its rows per table: big enough that lookups miss the caches as real tables do, so the
model's embedding term (timed at the kernel's measured DRAM rate) fits it; with tables
that sit in cache the model over-counted the lookups and hid the per-sample cost."""


def framework_step(world: int, local: int, device: torch.device, batch: int) -> Dict[str, Any]:
    """Seconds per step of a minimal DLRM (26 tables of 100k rows x dim 8, 8-wide MLPs)
    at ``batch`` per rank, trained as training trains it (TorchRec's planner, DMP, fused
    optimizer, TrainPipelineSparseDist): next to no FLOPs, so beyond the model's own terms
    the step is the framework's cost (KJT handling, the interaction's gathers, the
    pipeline, DDP, Python, ranks waiting for each other), which the caller turns into
    ``step_overhead_ms`` and ``step_overhead_us_per_sample`` by subtracting the model's
    terms at two batches."""
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

    from dlrm_dist.data.random_source import RandomSplit
    from dlrm_dist.model import build_model
    from dlrm_dist.training.distributed import DistEnv
    from dlrm_dist.training.optim import apply_embedding_optimizer, build_optimizer
    from dlrm_dist.training.sharding import build_plan, shard_model

    cfg = minimal_config(batch)
    rank = dist.get_rank()
    env = DistEnv(rank, world, rank % local, local, device, dist.get_backend())
    model = build_model(cfg.model, device)
    apply_embedding_optimizer(model, cfg.optim.embedding)
    plan = build_plan(model, cfg.sharding, env, batch)
    dmp = shard_model(model, plan, env)
    pipe = TrainPipelineSparseDist(dmp, build_optimizer(dmp, cfg.optim.dense, cfg.optim.embedding), device,
                                   execute_all_batches=True)
    batches = iter(RandomSplit(batch, TINY_WINDOWS * TINY_STEPS + 10, cfg.model.table_sizes(), None, seed=0))
    for _ in range(5):
        pipe.progress(batches)
    windows = []
    for _ in range(TINY_WINDOWS):
        dist.barrier()
        start = time.perf_counter()
        for _ in range(TINY_STEPS):
            pipe.progress(batches)
        windows.append((time.perf_counter() - start) / TINY_STEPS)
    seconds = statistics.median(windows)  # a window that others' work slowed does not count
    table = {name: {"sharding_type": ps.sharding_type, "compute_kernel": ps.compute_kernel, "ranks": ps.ranks}
             for module_plan in plan.plan.values() for name, ps in module_plan.items()}  # type: ignore[union-attr]
    return {"seconds": seconds, "plan": table}


def minimal_config(batch: int):  # noqa: ANN201 - Config
    """The minimal DLRM of :func:`framework_step` at ``batch`` per rank."""
    from dlrm_dist.config import Config, ModelConfig

    cfg = Config(model=ModelConfig(embedding_dim=8, num_embeddings=TINY_ROWS, bottom_mlp=[8], top_mlp=[8, 1]))
    cfg.train.batch_size = batch
    return cfg
