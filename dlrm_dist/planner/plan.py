"""``dlrm-dist plan``: will this job fit, where does memory go, what to change if not.

    dlrm-dist plan --config FILE --nodes N --gpus-per-node G [--hbm-gb H]
        [--host-ram-gb R] [--device cuda|cpu] [--json] [--min-gpus]
        [--hardware NAME|FILE] [--dense-dtype fp32|tf32|bf16] [--epoch-hours H]
        [--plot PNG] [--dataset criteo_1tb|criteo_kaggle] [--days D] [section.key=value ...]

It runs TorchRec's sharding planner as a dry run for the cluster described (on
any host: the model is on the meta device), then adds up per rank and per host
what the planner does not model (see ``dlrm_dist.planner.capacity``). Capacities are
GiB (2**30 bytes), like ``sharding.hbm_gb``: pass what nvidia-smi / free show.

The job fits when the planner finds a plan, every rank's HBM total is within
--hbm-gb and every host's RAM total within --host-ram-gb. If it does not fit,
single changes are tried in order and the first that fits is reported: more
GPUs, UVM caching, RowWiseAdagrad, fp16 tables, smaller tables. Exit code 0
when it fits, 1 when it does not, 2 on a bad config. docs/planning.md explains
how to read the report.

With ``--hardware`` (a shipped profile: a100_80gb, h100_sxm, h200, b200; or the
YAML ``dlrm-dist calibrate`` writes) it also predicts the step time term by term,
samples/s per rank and per job, the bottleneck and the time per epoch
(``dlrm_dist.planner.step_time``); ``--epoch-hours`` finds the fewest nodes that
train one epoch within that time, ``--plot`` draws the predicted scaling curve.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from torch import nn

from dlrm_dist.planner import capacity as cap
from dlrm_dist.core import criteo
from dlrm_dist.planner import preprocess_cost
from dlrm_dist.config import Config, apply_overrides, load_config
from dlrm_dist.core.errors import entry_point
from dlrm_dist.hardware.profiles import DENSE_DTYPES, HardwareProfile, load_profile
from dlrm_dist.planner import performance as perf_model
from dlrm_dist.planner.plan_report import Estimate, format_report
from dlrm_dist.planner.traffic import Topo
from dlrm_dist.core.units import GiB

MAX_GPUS = 512


@dataclass(frozen=True)
class Cluster:
    """The hardware asked about: hosts, ranks per host and their memory (GiB)."""

    nodes: int
    gpus_per_node: int
    hbm_gb: float = 80.0
    host_ram_gb: float = 1024.0
    device: str = "cuda"
    hardware: Optional[HardwareProfile] = None
    """The profile the step-time model uses; None: memory only (no performance)."""
    dense_dtype: str = "fp32"
    """The dense part's matmul dtype for the model (training runs fp32)."""

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def hbm_bytes(self) -> int:
        return int(self.hbm_gb * GiB) if self.device == "cuda" else 0

    @property
    def host_ram_bytes(self) -> int:
        return int(self.host_ram_gb * GiB)


@dataclass(frozen=True)
class Job:
    """The job asked about: its config, loaded once, and how it was given (for the report)."""

    cfg: Config
    config_path: str
    overrides: List[str] = field(default_factory=list)
    dataset: Optional[str] = None
    """For the preprocessing estimate; None infers it from the table sizes."""
    days: int = 0
    """Days to preprocess; 0 means all."""

    def with_overrides(self, extra: List[str]) -> "Job":
        """The same job with more overrides (a remedy to try), without rereading the YAML."""
        return dataclasses.replace(self, cfg=apply_overrides(self.cfg, extra, self.config_path),
                                   overrides=self.overrides + extra)


def _plan_rows(run: cap.PlannerRun) -> List[Dict[str, object]]:
    rows = []
    for so in run.options:
        rows.append({
            "table": so.name, "rows": int(so.tensor.shape[0]), "dim": int(so.tensor.shape[1]),
            "sharding_type": so.sharding_type, "compute_kernel": so.compute_kernel,
            "ranks": sorted({int(s.rank) for s in so.shards}),
        })
    return sorted(rows, key=lambda r: int(str(r["table"]).rsplit("_", 1)[-1]))


def _hosts(ranks: List[cap.RankMemory], gpus_per_node: int) -> List[Dict[str, int]]:
    """Per host: its ranks' host memory summed by category."""
    hosts = []
    for start in range(0, len(ranks), gpus_per_node):
        h: Dict[str, int] = {}
        for r in ranks[start:start + gpus_per_node]:
            for k, v in r.host.items():
                h[k] = h.get(k, 0) + v
        hosts.append(h)
    return hosts


def _floor(cfg: Config, model: nn.Module, device: str, gpus_per_node: int) -> Dict[str, int]:
    """A rank without tables: the dense part, activations, batches, the process."""
    bare = cap.rank_memory(cfg, model, cap.PlannerRun(None, []), 1, device)[0]
    return {"device": bare.device_total, "host_per_node": bare.host_total * gpus_per_node}


def _verdict(est: Estimate, ranks: List[cap.RankMemory]) -> List[str]:
    """Why it does not fit; empty when it does."""
    reasons = []
    if est.planner["error"]:
        lines = [ln.strip().rstrip(",") for ln in str(est.planner["error"]).strip().splitlines()]
        detail = [ln[:-1] if ln.count(")") > ln.count("(") else ln  # TorchRec's text closes a list here
                  for ln in lines if ln.startswith("Global storage ")]  # available vs required
        reasons.append("TorchRec's planner found no plan: " + "; ".join([lines[0][:200]] + detail))
    if ranks and est.compute_device == "cuda":
        r = max(range(len(ranks)), key=lambda i: ranks[i].device_total)
        if ranks[r].device_total > est.hbm_per_rank:
            reasons.append(f"rank {r} needs {ranks[r].device_total / GiB:.2f} GiB of HBM, "
                           f"has {est.hbm_per_rank / GiB:.2f} GiB")
    if est.hosts:
        h = max(range(len(est.hosts)), key=lambda i: sum(est.hosts[i].values()))
        need = sum(est.hosts[h].values())
        if need > est.host_ram_per_node:
            reasons.append(f"host {h} needs {need / GiB:.2f} GiB of RAM, has {est.host_ram_per_node / GiB:.2f} GiB")
    return reasons


def estimate(job: Job, cluster: Cluster) -> Estimate:
    """Plan one cluster size and add everything up."""
    cfg, g, world = job.cfg, cluster.gpus_per_node, cluster.world_size
    hbm, host_ram = cluster.hbm_bytes, cluster.host_ram_bytes
    ddr = host_ram // g
    model = cap.meta_model(cfg.model, cfg.optim.embedding)
    stats = cap.table_stats(model, cfg.optim.embedding)
    run = cap.run_planner(cfg, model, world, g, cluster.device, hbm, ddr)
    ranks = cap.rank_memory(cfg, model, run, world, cluster.device) if run.error is None else []
    slowest = max((sum(r.perf_ms.values()) for r in ranks), default=None)
    dataset = job.dataset or criteo.infer_dataset(cfg.model.table_sizes())
    days = job.days or len(criteo.DATASET_ROWS[dataset])
    pre = preprocess_cost.preprocess_estimate(dataset, days, max(cfg.model.table_sizes()))
    est = Estimate(
        config=job.config_path, overrides=list(job.overrides), nodes=cluster.nodes, gpus_per_node=g,
        world_size=world, compute_device=cluster.device, hbm_per_rank=hbm, host_ram_per_node=host_ram,
        ddr_per_rank=ddr, batch_size=cfg.train.batch_size, global_batch_size=cfg.train.batch_size * world,
        embedding_optimizer=cfg.optim.embedding.name, embedding_dtype=cfg.model.embedding_dtype,
        embedding_dim=cfg.model.embedding_dim,
        tables={"count": len(cfg.model.table_sizes()), "rows": stats.rows, "weight_bytes": stats.weight_bytes,
                "optimizer_bytes": stats.optimizer_bytes, "dense_params": stats.dense_params},
        planner={"seconds": round(run.seconds, 2), "error": run.error, "kjt_bytes": run.kjt_bytes,
                 "dense_reserved_bytes": run.dense_reserved_bytes,
                 "reserved_fraction": cfg.sharding.storage_reservation},
        plan=_plan_rows(run),
        ranks=[{"device": r.device, "host": r.host, "perf_ms": r.perf_ms} for r in ranks],
        hosts=_hosts(ranks, g),
        step_ms=slowest,
        samples_per_s_per_gpu=(cfg.train.batch_size / (slowest / 1000.0)) if slowest else None,
        preprocess=dataclasses.asdict(pre) | {"inferred": job.dataset is None},
        floor=_floor(cfg, model, cluster.device, g),
        fits=False,
    )
    if cluster.hardware is not None and run.error is None:
        topo = Topo(world, g)
        p = perf_model.performance(cfg, perf_model.layout_from_options(cfg, run.options), topo,
                                   stats.dense_params, cluster.hardware, cluster.dense_dtype, job.dataset)
        p.torchrec_embedding_ms = perf_model.torchrec_embedding_ms(cfg, run.options, topo, cluster.hardware)
        est.performance = p.to_dict()
    est.reasons = _verdict(est, ranks)
    est.fits = not est.reasons
    return est


# ---- searching for a configuration that fits ------------------------------ #


def smallest_fitting(fits: Callable[[int], bool], lo: int, hi: int) -> Optional[int]:
    """Smallest n in [lo, hi] with fits(n), assuming more is never worse: doubling
    steps up, then bisection back, so 512 GPUs cost a handful of planner runs."""
    last_bad, n = lo - 1, lo
    while not fits(n):
        last_bad = n
        if n >= hi:
            return None
        n = min(hi, n * 2)
    while n - last_bad > 1:
        mid = (n + last_bad) // 2
        if fits(mid):
            n = mid
        else:
            last_bad = mid
    return n


def _node_search(job: Job, cluster: Cluster, lo: int, sweep: List[Dict[str, object]],
                 ok: Callable[[Estimate], bool] = lambda e: e.fits) -> Optional[Estimate]:
    """The smallest node count from ``lo`` (up to MAX_GPUS) whose estimate is ``ok``
    (fits, by default), recording each try."""
    seen: Dict[int, Estimate] = {}

    def good(nodes: int) -> bool:
        if nodes not in seen:
            seen[nodes] = e = estimate(job, dataclasses.replace(cluster, nodes=nodes))
            epoch = (e.performance or {}).get("epoch_s")
            sweep.append({"nodes": nodes, "gpus": e.world_size, "fits": e.fits, "reasons": e.reasons,
                          "epoch_s": epoch, "ok": ok(e)})
        return ok(seen[nodes])

    hi = max(lo, MAX_GPUS // cluster.gpus_per_node)
    best = smallest_fitting(good, lo, hi)
    return seen[best] if best is not None else None


def within_epoch_time(hours: float) -> Callable[[Estimate], bool]:
    """Fits, and the predicted epoch takes at most ``hours``."""
    def ok(e: Estimate) -> bool:
        epoch = (e.performance or {}).get("epoch_s")
        return e.fits and epoch is not None and float(epoch) <= hours * 3600  # type: ignore[arg-type]
    return ok


def _table_caps(cfg: Config) -> List[List[str]]:
    """Overrides capping every table at half, a quarter ... of the largest (>= 1M rows)."""
    sizes = cfg.model.table_sizes()
    out, limit = [], max(sizes) // 2
    while limit >= 1_000_000:
        capped = [min(s, limit) for s in sizes]
        out.append([f"model.num_embeddings_per_feature=[{','.join(map(str, capped))}]"])
        limit //= 2
    return out


def _remedies(cfg: Config, cluster: Cluster) -> List[Tuple[str, List[List[str]]]]:
    """The single changes to try, in order, each as candidate override lists."""
    kernels = cfg.sharding.compute_kernels
    out: List[Tuple[str, List[List[str]]]] = []
    if cluster.device == "cuda" and kernels and "fused_uvm_caching" not in kernels:
        out.append(("UVM caching: tables that do not fit in HBM live in host RAM with an HBM cache",
                    [["sharding.compute_kernels=[" + ",".join(dict.fromkeys(kernels + ["fused_uvm_caching"])) + "]"]]))
    if cfg.optim.embedding.name in ("adagrad", "adam"):
        out.append(("RowWiseAdagrad: one optimizer float per row instead of per element",
                    [["optim.embedding.name=rowwise_adagrad"]]))
    if cfg.model.embedding_dtype == "fp32":
        out.append(("fp16 tables: half the row bytes (optimizer state stays fp32)",
                    [["model.embedding_dtype=fp16"]]))
    out.append(("smaller tables: a lower --max-ind-range at preprocessing (costs accuracy)", _table_caps(cfg)))
    return out


def find_remedy(job: Job, cluster: Cluster, est: Estimate) -> Optional[Dict[str, object]]:
    """The first single change (in the documented order) that makes the job fit."""
    sweep: List[Dict[str, object]] = []
    if (est.floor["device"] > est.hbm_per_rank and cluster.device == "cuda"
            or est.floor["host_per_node"] > est.host_ram_per_node):
        return None  # not even a rank without tables fits: no table change helps
    lo = max(cluster.nodes + 1, lower_bound_nodes(job.cfg, cluster))
    if lo * cluster.gpus_per_node <= MAX_GPUS:
        more = _node_search(job, cluster, lo, sweep)
        if more is not None:
            return {"change": "more GPUs", "nodes": more.nodes, "gpus": more.world_size,
                    "overrides": [], "summary": f"{more.nodes} nodes x {cluster.gpus_per_node} GPUs "
                    f"= {more.world_size} GPUs"}
    for what, candidates in _remedies(job.cfg, cluster):
        for extra in candidates:
            if estimate(job.with_overrides(extra), cluster).fits:
                return {"change": what, "nodes": cluster.nodes, "gpus": cluster.world_size,
                        "overrides": extra, "summary": " ".join(extra)}
    return None


# ---- the command ------------------------------------------------------------ #


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dlrm-dist plan", description=__doc__.split("\n\n")[0],
                                epilog="Exit code 0: fits; 1: does not fit; 2: bad config. See docs/planning.md.")
    p.add_argument("--config", required=True, help="YAML config (model, optim, train.batch_size, sharding)")
    p.add_argument("--nodes", type=int, default=1, help="hosts in the job")
    p.add_argument("--gpus-per-node", type=int, default=None,
                   help="ranks per host (GPUs, or processes with --device cpu); default: the profile's, else 8")
    p.add_argument("--hbm-gb", type=float, default=None, help="HBM per GPU, GiB (default: the profile's, else 80)")
    p.add_argument("--host-ram-gb", type=float, default=None, help="RAM per host, GiB (default: the profile's, else 1024)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="compute device of the ranks (default cuda)")
    p.add_argument("--hardware", default=None,
                   help="hardware profile for the step-time prediction: a100_80gb, h100_sxm, h200, b200, "
                        "or a YAML file (dlrm-dist calibrate --output FILE)")
    p.add_argument("--dense-dtype", choices=DENSE_DTYPES, default="fp32",
                   help="matmul dtype of the MLPs for the prediction (training runs fp32)")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON (bytes, ms)")
    p.add_argument("--min-gpus", action="store_true", help="find the smallest GPU count (multiple of --gpus-per-node) that fits")
    p.add_argument("--epoch-hours", type=float, default=None,
                   help="find the fewest nodes that fit and train one epoch within this many hours (needs --hardware)")
    p.add_argument("--plot", default=None, help="write the predicted scaling curve (1 ... --plot-max-nodes nodes) to this PNG")
    p.add_argument("--plot-max-nodes", type=int, default=64, help="largest node count of --plot (powers of 2)")
    p.add_argument("--dataset", choices=sorted(criteo.DATASET_ROWS), help="for the preprocessing estimate and the epoch (default: from table sizes)")
    p.add_argument("--days", type=int, default=0, help="days to preprocess (default: all)")
    p.add_argument("--verbose", action="store_true", help="keep TorchRec's planner logs")
    p.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    args = p.parse_args(argv)
    if (args.nodes < 1 or (args.gpus_per_node or 1) < 1 or (args.hbm_gb or 0) < 0
            or (args.host_ram_gb is not None and args.host_ram_gb <= 0)):
        p.error("--nodes and --gpus-per-node must be >= 1, --hbm-gb >= 0, --host-ram-gb > 0")
    if (args.epoch_hours is not None or args.plot) and not args.hardware:
        p.error("--epoch-hours and --plot predict speed: they need --hardware NAME|FILE")
    if args.min_gpus and args.epoch_hours is not None:
        p.error("--min-gpus and --epoch-hours are two searches: pick one")
    return args


def _quiet(verbose: bool) -> None:
    """TorchRec warns on every dry run (a Topology built directly, the heuristic
    reservation); they say nothing about this job, so hide them unless asked."""
    if not verbose:
        logging.getLogger("torchrec").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)


def lower_bound_nodes(cfg: Config, cluster: Cluster) -> int:
    """Nodes below which the tables and their optimizer state cannot fit even if
    every byte of HBM and host RAM held them: where the --min-gpus sweep starts."""
    stats = cap.table_stats(cap.meta_model(cfg.model, cfg.optim.embedding), cfg.optim.embedding)
    per_rank = cluster.host_ram_bytes / cluster.gpus_per_node
    if cluster.device == "cuda":
        per_rank += cluster.hbm_bytes * (1 - cfg.sharding.storage_reservation)
    sparse = stats.weight_bytes + stats.optimizer_bytes
    return max(1, math.ceil(sparse / (per_rank * cluster.gpus_per_node)))


def run(job: Job, cluster: Cluster, min_gpus: bool = False, epoch_hours: Optional[float] = None) -> Estimate:
    """The report for ``cluster``, with a remedy when it does not fit; or, with
    ``min_gpus``, the smallest node count that fits and the sweep that found it; or,
    with ``epoch_hours``, the fewest nodes that fit and train one epoch in that time
    (more nodes are assumed never slower for the job, as the bisection needs)."""
    if min_gpus or epoch_hours is not None:
        sweep: List[Dict[str, object]] = []
        ok = within_epoch_time(epoch_hours) if epoch_hours is not None else (lambda e: e.fits)
        best = _node_search(job, cluster, lower_bound_nodes(job.cfg, cluster), sweep, ok)
        est = best if best is not None else estimate(
            job, dataclasses.replace(cluster, nodes=math.ceil(MAX_GPUS / cluster.gpus_per_node)))
        est.sweep = sorted(sweep, key=lambda s: int(s["nodes"]))  # type: ignore[arg-type]
        est.sweep_goal = f"epoch within {epoch_hours:g} h" if epoch_hours is not None else "fits"
        return est
    est = estimate(job, cluster)
    if not est.fits:
        est.remedy = find_remedy(job, cluster, est)
    return est


def job_and_cluster(args: argparse.Namespace) -> Tuple[Job, Cluster]:
    """The command line as the objects the planner works on (the YAML is read once).
    A hardware profile supplies HBM, host RAM, GPUs per node and the device unless
    the command line gives them."""
    job = Job(load_config(args.config, args.overrides), args.config, list(args.overrides), args.dataset, args.days)
    hw = load_profile(args.hardware) if args.hardware else None

    def pick(given: object, from_profile: object, default: object) -> object:
        return given if given is not None else (from_profile if hw is not None else default)

    cluster = Cluster(
        args.nodes, int(pick(args.gpus_per_node, hw and hw.gpus_per_node, 8)),  # type: ignore[arg-type]
        float(pick(args.hbm_gb, hw and hw.hbm_gb, 80.0)),  # type: ignore[arg-type]
        float(pick(args.host_ram_gb, hw and hw.host_ram_gb, 1024.0)),  # type: ignore[arg-type]
        str(pick(args.device, hw and hw.device, "cuda")), hw, args.dense_dtype)
    return job, cluster


@entry_point("dlrm-dist plan")
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    _quiet(args.verbose)
    job, cluster = job_and_cluster(args)  # a ConfigError is reported by entry_point: exit 2
    est = run(job, cluster, args.min_gpus, args.epoch_hours)
    if args.plot:
        points = perf_model.scaling_curve(lambda n: estimate(job, dataclasses.replace(cluster, nodes=n)),
                                          args.plot_max_nodes)
        est.scaling = {"plot": perf_model.plot_scaling(points, f"{job.config_path} on {cluster.hardware.name} "
                                                       f"x{cluster.gpus_per_node} per node (predicted)", args.plot),
                       "points": points}
    if args.json:
        print(json.dumps(dataclasses.asdict(est), indent=1))
    else:
        print(format_report(est))
    return 0 if est.fits else 1

if __name__ == "__main__":
    sys.exit(main())
