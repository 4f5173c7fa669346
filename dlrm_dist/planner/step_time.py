"""How long one training step takes per rank, term by term, on a hardware profile.

The terms (ms per step, the slowest rank for each, since every collective waits
for it):

* ``dense_compute``: the MLPs' and the interaction's FLOPs, forward and backward,
  counted from the model by ``FlopCounterMode`` (not typed in), at the profile's
  rate for the dtype; plus the activations' elementwise traffic (at the profile's
  measured rate for the dense step's non-matmul work, else the memory bandwidth) and
  the dense optimizer's update at the memory bandwidth.
* ``embedding_lookup`` / ``embedding_backward_update``: bytes per shard
  (``traffic.embedding_bytes``: rows x dim x bytes, pooling factors, optimizer
  state) at the bandwidth of the shard's memory tier, which TorchRec's own
  ``kernel_bw_lookup`` gives for its compute kernel (HBM; UVM over PCIe with its
  1/10 random-access factor; UVM caching mixed by the cache's load factor);
  plus the profile's fixed cost per fused-kernel call.
* ``input_all_to_all``, ``pooled_all_to_all_fwd`` / ``_bwd``: bytes per rank on
  each link (``traffic``), at the intra-host and inter-host bandwidths, the two
  links in parallel, plus a latency per collective call.
* ``all_reduce``: DDP's ring all-reduce of the dense gradients (and of any
  data_parallel table): 2 (W-1)/W x bytes per rank at the slowest link it crosses.
* ``host_input``: the batch built on the host, at the profile's measured rate.
* ``step_overhead``: the profile's host cost per step of the framework (KJT handling,
  Python, the pipeline, ranks waiting for each other): a fixed part and a part per
  sample, which ``dlrm-dist calibrate`` measures on a minimal DLRM.

How they overlap (:func:`combine`) depends on the device and ``train.pipeline``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from torchrec.distributed.planner.constants import kernel_bw_lookup

from dlrm_dist.hardware.profiles import HardwareProfile
from dlrm_dist.planner import traffic as tr
from dlrm_dist.planner.dense_flops import dense_flops_per_sample, dense_gemms  # noqa: F401 - re-exported
from dlrm_dist.planner.traffic import LinkBytes, TableLayout, Topo

FP32 = 4
GB = 1e9


@dataclass(frozen=True)
class StepInputs:
    """What the model needs to know about a job: the plan's layout and the step's shape."""

    batch: int
    topo: Topo
    tables: Tuple[TableLayout, ...]
    embedding_optimizer: str
    embedding_elem_bytes: int
    dense_params: int
    dense_optimizer_state: float
    """Dense optimizer state per parameter (Adagrad 1, Adam 2, SGD 0)."""
    flops_fwd_per_sample: float
    flops_bwd_per_sample: float
    activation_bytes: int
    """fp32 activations autograd keeps at this batch (``capacity.activation_bytes``)."""
    pipeline: str
    input_kind: Optional[str]
    """one_hot / multi_hot for data read from disk; None when batches are ready-made."""
    gemms: Tuple[Tuple[float, int, str], ...] = ()
    """Every matmul of forward + backward as (FLOPs per sample, smallest weight-side dim,
    mm | bmm), for profiles that measured the rate by GEMM shape; empty: the flat rate."""


@dataclass
class Performance:
    """The ``performance`` object of ``dlrm-dist plan --json``."""

    hardware: str
    dense_dtype: str
    pipeline: str
    samples_per_s_per_rank: float
    samples_per_s: float
    step_ms: float
    terms_ms: Dict[str, float]
    exposed_ms: Dict[str, float]
    """Each term's share of the step after overlap (sums to step_ms)."""
    bottleneck: str
    epoch_s: Optional[float]
    dataset: Optional[str]
    train_rows: Optional[int]
    flops_per_sample: float
    bytes_per_rank: Dict[str, float]
    torchrec_embedding_ms: Optional[float] = None
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


# ---- times ------------------------------------------------------------------- #


def _bw_bytes_per_s(profile: HardwareProfile, t: TableLayout) -> float:
    """The shard's memory tier bandwidth by TorchRec's ``kernel_bw_lookup`` (bytes/ms
    in, bytes/s out), fed the profile's bandwidths instead of TorchRec's defaults: the
    embedding kernel's measured rate when the profile has one (calibrated), else the
    memory bandwidth x the memory efficiency."""
    eff = profile.efficiency.get("memory", 1.0)
    mem = (profile.embedding_gb_per_s or profile.hbm_gb_per_s * eff) * GB / 1000
    bw = kernel_bw_lookup(profile.device, t.compute_kernel, hbm_mem_bw=mem, ddr_mem_bw=mem,
                          hbm_to_ddr_mem_bw=profile.host_link_gb_per_s * GB / 1000,
                          caching_ratio=t.cache_load_factor)
    if bw is None:
        raise ValueError(f"no bandwidth for kernel {t.compute_kernel} on {profile.device}")
    return bw * 1000


def embedding_seconds(inp: StepInputs, profile: HardwareProfile) -> Tuple[float, float, float]:
    """(forward, backward + update) seconds of the slowest rank, and its bytes moved."""
    W = inp.topo.world_size
    fwd, bwd, moved = [0.0] * W, [0.0] * W, [0.0] * W
    groups: List[set] = [set() for _ in range(W)]
    for t in inp.tables:
        bw = _bw_bytes_per_s(profile, t)
        shards = t.shards if t.sharding_type != "data_parallel" else [tr.Shard(r, t.rows, t.dim) for r in range(W)]
        for s in shards:
            f, b = tr.embedding_bytes(t, s, inp.batch, inp.topo, inp.embedding_elem_bytes, inp.embedding_optimizer)
            if t.sharding_type == "data_parallel":
                # not fused: the dense optimizer reads the whole gradient and updates every row
                b += s.rows * (s.cols * (FP32 + 2 * inp.embedding_elem_bytes)
                               + 2 * tr.state_bytes_per_row(inp.embedding_optimizer, s.cols))
            fwd[s.rank] += f / bw
            bwd[s.rank] += b / bw
            moved[s.rank] += f + b
            groups[s.rank].add((t.sharding_type, t.compute_kernel))
    fixed = [len(g) * profile.embedding_fixed_ms / 1000 for g in groups]
    slow = max(range(W), key=lambda r: fwd[r] + bwd[r] + fixed[r])
    return fwd[slow] + fixed[slow] / 3, bwd[slow] + 2 * fixed[slow] / 3, moved[slow]


def link_seconds(lb: LinkBytes, profile: HardwareProfile, calls: int) -> float:
    """One rank's time in one collective phase: a latency per call (inter-host when any
    byte crosses hosts), then both links at once, each full duplex, so the busier of
    sent / received bytes counts on each link and the slower link sets the time."""
    if not (lb.sent_intra or lb.recv_intra or lb.sent_inter or lb.recv_inter):
        return 0.0
    eff = profile.efficiency.get("link", 1.0)
    intra = max(lb.sent_intra, lb.recv_intra) / (profile.intra_host_gb_per_s * GB * eff)
    inter_bytes = max(lb.sent_inter, lb.recv_inter)
    inter = 0.0
    if inter_bytes:
        if profile.inter_host_gb_per_s is None:
            raise ValueError(f"profile {profile.name} has no inter-host bandwidth: calibrate across hosts")
        inter = inter_bytes / (profile.inter_host_gb_per_s * GB * eff)
    lat = profile.latency_us["inter_host" if inter_bytes else "intra_host"] * 1e-6 * calls
    return lat + max(intra, inter)


def phase_seconds(ranks: Sequence[LinkBytes], profile: HardwareProfile, calls_per_group: int) -> float:
    """A collective phase ends when its slowest rank does."""
    return max((link_seconds(r, profile, calls_per_group * max(1, len(r.groups))) for r in ranks), default=0.0)


def all_reduce_seconds(nbytes: float, topo: Topo, profile: HardwareProfile) -> float:
    """Ring all-reduce: 2 (W-1)/W x bytes through every rank, at the slowest link on the
    ring (NVLink within a node; the NIC per GPU once the ring spans nodes)."""
    if topo.world_size == 1:
        return 0.0
    per_rank = tr.ring_all_reduce_bytes(nbytes, topo.world_size)
    multi = topo.nodes > 1
    bw = profile.intra_host_gb_per_s if not multi else min(profile.intra_host_gb_per_s, profile.inter_host_gb_per_s or 0.0)
    if bw <= 0:
        raise ValueError(f"profile {profile.name} has no inter-host bandwidth: calibrate across hosts")
    lat = profile.latency_us["inter_host" if multi else "intra_host"] * 1e-6 * tr.all_reduce_calls(nbytes)
    return lat + per_rank / (bw * GB * profile.efficiency.get("link", 1.0))


def gemm_seconds(inp: StepInputs, profile: HardwareProfile, dtype: str) -> float:
    """The dense step's matmuls: at the profile's measured rate for each GEMM's smallest
    weight-side dimension when it has one (fp32; interpolated in log-space between the
    measured dimensions; batched per-sample products at the bmm rate), else all FLOPs
    at the flat rate for ``dtype``."""
    by_dim = profile.gemm_tflops_by_min_dim
    if not (by_dim and dtype == "fp32" and inp.gemms):
        return inp.batch * (inp.flops_fwd_per_sample + inp.flops_bwd_per_sample) / (profile.dense_tflops(dtype) * 1e12)
    return matmul_seconds(inp.gemms, inp.batch, by_dim, profile.bmm_tflops_by_min_dim or by_dim)


def matmul_seconds(gemms: Sequence[Tuple[float, int, str]], batch: int, by_dim: Dict[int, float],
                   bmm_by_dim: Dict[int, float]) -> float:
    """Seconds of ``gemms`` ((FLOPs per sample, smallest weight-side dimension, mm | bmm))
    at ``batch``, each at its measured rate (TFLOPS) by dimension (:func:`rate_at`)."""
    return sum(batch * f / (rate_at(bmm_by_dim if kind == "bmm" else by_dim, d) * 1e12) for f, d, kind in gemms)


def rate_at(by_dim: Dict[int, float], d: int) -> float:
    """Piecewise log-linear interpolation of a rate measured at a few dimensions
    (clamped at the smallest and largest measured)."""
    dims = sorted(by_dim)
    if d <= dims[0]:
        return by_dim[dims[0]]
    if d >= dims[-1]:
        return by_dim[dims[-1]]
    hi = next(i for i, x in enumerate(dims) if x >= d)
    lo_d, hi_d = dims[hi - 1], dims[hi]
    w = (math.log(d) - math.log(lo_d)) / (math.log(hi_d) - math.log(lo_d))
    return math.exp((1 - w) * math.log(by_dim[lo_d]) + w * math.log(by_dim[hi_d]))


def dense_seconds(inp: StepInputs, profile: HardwareProfile, dtype: str) -> Dict[str, float]:
    """GEMM time (:func:`gemm_seconds`, split forward / backward by FLOPs), plus
    elementwise traffic: the saved activations are written in the forward and read in
    the backward, which writes gradients as large (3 passes), at the profile's measured
    elementwise rate (ops writing fresh tensors) when it has one, else at memory speed;
    the dense optimizer reads parameter and gradient and writes the parameter, and
    reads and writes its state, in place: at memory speed."""
    gemm = gemm_seconds(inp, profile, dtype)
    total = inp.flops_fwd_per_sample + inp.flops_bwd_per_sample
    fwd_share = inp.flops_fwd_per_sample / total if total else 0.0
    mem = profile.hbm_gb_per_s * GB * profile.efficiency.get("memory", 1.0)
    elementwise = profile.elementwise_gb_per_s * GB if profile.elementwise_gb_per_s else mem
    act = inp.activation_bytes
    opt_bytes = inp.dense_params * FP32 * (3 + 2 * inp.dense_optimizer_state)
    return {
        "fwd": gemm * fwd_share + act / elementwise,
        "bwd": gemm * (1 - fwd_share) + 2 * act / elementwise,
        "optimizer": opt_bytes / mem,
    }


def step_terms(inp: StepInputs, profile: HardwareProfile, dtype: str) -> Tuple[Dict[str, float], Dict[str, float]]:
    """Every term in ms (the slowest rank's), and the bytes behind them."""
    dense = dense_seconds(inp, profile, dtype)
    emb_fwd, emb_bwd, emb_bytes = embedding_seconds(inp, profile)
    ids = tr.input_all_to_all(inp.tables, inp.batch, inp.topo)
    pooled = tr.pooled_all_to_all(inp.tables, inp.batch, inp.topo)
    # KJTAllToAll exchanges lengths, then ids: 2 calls per sharding-type group; pooled: 1.
    t_ids = phase_seconds(ids, profile, 2)
    t_fwd = phase_seconds(pooled, profile, 1)
    t_bwd = phase_seconds(tr.reversed_bytes(pooled), profile, 1)
    grad_bytes = inp.dense_params * FP32 + sum(
        t.rows * t.dim * inp.embedding_elem_bytes for t in inp.tables if t.sharding_type == "data_parallel")
    t_ar = all_reduce_seconds(grad_bytes, inp.topo, profile)
    rate = profile.input_samples_per_s_per_rank.get(inp.input_kind or "", 0.0)
    host = inp.batch / rate if inp.input_kind and rate else 0.0
    ms = {
        "dense_compute": 1000 * (dense["fwd"] + dense["bwd"] + dense["optimizer"]),
        "embedding_lookup": 1000 * emb_fwd,
        "embedding_backward_update": 1000 * emb_bwd,
        "input_all_to_all": 1000 * t_ids,
        "pooled_all_to_all_fwd": 1000 * t_fwd,
        "pooled_all_to_all_bwd": 1000 * t_bwd,
        "all_reduce": 1000 * t_ar,
        "host_input": 1000 * host,
        "step_overhead": profile.step_overhead_ms + inp.batch * profile.step_overhead_us_per_sample / 1000,
    }

    def busiest(ranks: Sequence[LinkBytes], attr: str) -> float:
        return max((getattr(r, attr) for r in ranks), default=0.0)

    nbytes = {
        "dense_flops": inp.batch * (inp.flops_fwd_per_sample + inp.flops_bwd_per_sample),
        "embedding_bytes": emb_bytes,
        "input_all_to_all_intra": busiest(ids, "sent_intra"), "input_all_to_all_inter": busiest(ids, "sent_inter"),
        "pooled_all_to_all_intra": busiest(pooled, "sent_intra"),
        "pooled_all_to_all_inter": busiest(pooled, "sent_inter"),
        "all_reduce": tr.ring_all_reduce_bytes(grad_bytes, inp.topo.world_size),
    }
    return ms, nbytes


BOTTLENECK_NAMES = {
    "dense_compute": "dense compute (MLPs + interaction)",
    "embedding_lookup": "embedding lookups and updates",
    "embedding_backward_update": "embedding lookups and updates",
    "input_all_to_all": "all-to-all communication",
    "pooled_all_to_all_fwd": "all-to-all communication",
    "pooled_all_to_all_bwd": "all-to-all communication",
    "all_reduce": "DDP all-reduce",
    "host_input": "host input pipeline",
    "step_overhead": "per-step framework overhead",
}


def combine(ms: Dict[str, float], pipeline: str, device: str) -> Dict[str, float]:
    """Each term's exposed share of the step under ``pipeline``; the step is their sum.

    CPU ranks (gloo): one pool of cores runs compute and communication, so terms add
    up; only the ids' all-to-all of the next batch is hidden under ``sparse_dist``
    (a few hundred kB that gloo's thread sends while the step computes).

    CUDA: the host (input + overhead) runs ahead of the GPU on its own cores, so the
    step is the longer of the host path and the device path. On the device, the ids'
    all-to-all is hidden under sparse_dist and semi_sync (TrainPipelineSparseDist
    starts it a batch ahead on its own stream); semi_sync also hides the next batch's
    lookup and forward all-to-all behind this batch's dense compute; DDP's all-reduce
    starts when the dense backward ends and runs beside the embedding backward and its
    all-to-all, so only what outlasts them is exposed."""
    out = {k: 0.0 for k in ms}
    hide_ids = pipeline in ("sparse_dist", "semi_sync")
    if device != "cuda":
        for k, v in ms.items():
            out[k] = 0.0 if (k == "input_all_to_all" and hide_ids) else v
        return out
    device_terms = ["dense_compute", "embedding_lookup", "pooled_all_to_all_fwd", "pooled_all_to_all_bwd",
                    "embedding_backward_update"]
    exposed = {k: ms[k] for k in device_terms}
    if not hide_ids:
        exposed["input_all_to_all"] = ms["input_all_to_all"]
    if pipeline == "semi_sync":
        ahead = ms["embedding_lookup"] + ms["pooled_all_to_all_fwd"]
        hidden = min(ahead, ms["dense_compute"])
        scale = (ahead - hidden) / ahead if ahead else 0.0
        exposed["embedding_lookup"] *= scale
        exposed["pooled_all_to_all_fwd"] *= scale
    exposed["all_reduce"] = max(0.0, ms["all_reduce"] - ms["pooled_all_to_all_bwd"] - ms["embedding_backward_update"])
    host = ms["host_input"] + ms["step_overhead"]
    device_ms = sum(exposed.values())
    if host > device_ms:  # the GPU waits for the host
        return {**out, "host_input": ms["host_input"], "step_overhead": ms["step_overhead"]}
    return {**out, **exposed}


def bottleneck(exposed: Dict[str, float]) -> str:
    """The category with the largest exposed time."""
    totals: Dict[str, float] = {}
    for k, v in exposed.items():
        totals[BOTTLENECK_NAMES[k]] = totals.get(BOTTLENECK_NAMES[k], 0.0) + v
    return max(totals, key=lambda k: totals[k])


def predict(inp: StepInputs, profile: HardwareProfile, dtype: str = "fp32") -> Performance:
    """The step and its terms for one rank of ``inp`` on ``profile`` (per-rank figures for
    a CPU profile come from its measurement with this many ranks per host)."""
    prof = profile.for_local_ranks(inp.topo.local_world_size)
    ms, nbytes = step_terms(inp, prof, dtype)
    exposed = combine(ms, inp.pipeline, prof.device)
    step = sum(exposed.values())
    per_rank = inp.batch / (step / 1000)
    return Performance(
        hardware=profile.name, dense_dtype=dtype, pipeline=inp.pipeline, samples_per_s_per_rank=per_rank,
        samples_per_s=per_rank * inp.topo.world_size, step_ms=step, terms_ms=ms, exposed_ms=exposed,
        bottleneck=bottleneck(exposed), epoch_s=None, dataset=None, train_rows=None,
        flops_per_sample=inp.flops_fwd_per_sample + inp.flops_bwd_per_sample, bytes_per_rank=nbytes,
    )


def epoch_seconds(train_rows: int, samples_per_s: float) -> float:
    return train_rows / samples_per_s if samples_per_s > 0 else math.inf
