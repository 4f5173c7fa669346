"""``dlrm-dist calibrate``: measure this machine into a hardware profile the plan reads.

    dlrm-dist calibrate --output FILE [--ranks N] [--name NAME] [--seconds S]
    torchrun --nnodes H --nproc-per-node G -m dlrm_dist.hardware.calibrate --output FILE

It measures what the step-time model (``dlrm_dist.planner.step_time``) needs, the
way the benchmarks measure it (``benchmarks/ceiling.py``: ``torch.utils.benchmark``
timers, a copy of 64 MiB for the memory bandwidth; ``benchmarks/comm.py``: windows
of collective calls, the slowest rank's median), first in one process with every
core, then in ``--ranks`` processes at once (they share cores, caches and memory
as training's ranks do; each gets the threads training would give it: OMP_NUM_THREADS,
else cores / ranks, as ``dist.num_threads=0`` does):

* the dense matmul rate: forward + backward of three 512 x 512 linear layers at
  batch 2048 (FLOPs counted by ``FlopCounterMode``), fp32 (and bf16 on a GPU); by a
  GEMM's smallest weight-side dimension (Linear(512, d)); and of batched per-sample
  products like the dot interaction's (bmm);
* the copy bandwidth (bytes read + written per second), and the rate of the dense
  step's work beside its matmuls (a reference DLRM's dense step less its matmuls, per
  3 passes of its activations);
* FBGEMM's fused embedding kernel (lookup, backward, exact Adagrad update) on 8
  tables of 250k x 32 at batch 16 (nearly all fixed cost) and 4096 (nearly all
  bytes): the fixed cost per call and the bandwidth by the step-time model's own
  byte count (``traffic.embedding_bytes``);
* all-to-all and all-reduce between the ranks: latency (4 KiB) and bandwidth
  (8 MiB per rank), within a host; under torchrun across hosts, also between
  ranks of different hosts (``inter_host_gb_per_s``; None when run on one host).
* the framework's cost per step: a minimal DLRM trained as training trains it, as
  one rank alone and as the ranks together, less the model's terms for it.

Quick by default (``--seconds 0.3`` per figure: about a minute on 2 cores). The
profile records the load average, time and versions; measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import psutil
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dlrm_dist.core.units import GiB
from dlrm_dist.hardware.measure import (BMM_DIMS, EMB_BATCHES, EMB_DIM, EMB_ROWS, EMB_TABLES, GEMM_DIMS, TINY_BATCHES,
                                        framework_step, host_link_gb_per_s, link, lockstep,
                                        minimal_config, process_figures, REFERENCE_BOTTOM, REFERENCE_TOP)
from dlrm_dist.hardware.profiles import HardwareProfile, write_profile


def _groups(world: int, local: int) -> tuple:
    """(this host's ranks, the ranks of this local index on every host) as process groups;
    every rank creates every group in the same order, as torch.distributed requires."""
    rank = dist.get_rank()
    intra = inter = None
    for h in range(world // local):
        g = dist.new_group(list(range(h * local, (h + 1) * local)))
        intra = g if rank // local == h else intra
    for j in range(local):
        g = dist.new_group(list(range(j, world, local)))
        inter = g if rank % local == j else inter
    return intra, inter


def rank_figures(world: int, local: int, device: torch.device, seconds: float) -> Optional[Dict[str, Any]]:
    """Run on every rank at once (process group initialised): per-rank figures with the
    machine shared as in training, then the links. Rank 0 returns the result."""
    if device.type == "cpu":  # as training sets them: OMP_NUM_THREADS, else the cores / local ranks
        from dlrm_dist.config import DistConfig
        from dlrm_dist.training.distributed import cpu_threads

        torch.set_num_threads(cpu_threads(DistConfig(), local))
    with lockstep(dist.barrier):
        mine = process_figures(device, seconds)
    figs: List[Dict[str, Any]] = [{} for _ in range(world)]
    dist.all_gather_object(figs, mine)
    intra, inter = _groups(world, local)
    links = {"intra_host": link(intra, device, seconds) if local > 1 else None,
             "inter_host": link(inter, device, seconds) if world > local else None}
    tiny = {b: framework_step(world, local, device, b) for b in TINY_BATCHES}
    worst = torch.tensor([tiny[b]["seconds"] for b in TINY_BATCHES], dtype=torch.float64, device=device)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    if dist.get_rank() != 0:
        return None
    per_rank = {
        "peak_tflops": {k: statistics.median(f["peak_tflops"][k] for f in figs) for k in mine["peak_tflops"]},
        **{key: {d: statistics.median(f[key][d] for f in figs) for d in mine[key]}
           for key in ("gemm_tflops_by_min_dim", "bmm_tflops_by_min_dim")},
        **{k: statistics.median(f[k] for f in figs)
           for k in ("hbm_gb_per_s", "elementwise_gb_per_s", "embedding_gb_per_s", "embedding_fixed_ms")},
    }
    return {"per_rank": per_rank, "links": links, "threads": torch.get_num_threads(),
            "tiny_step_s": {str(b): float(w) for b, w in zip(TINY_BATCHES, worst)},
            "tiny_plan": {str(b): tiny[b]["plan"] for b in TINY_BATCHES}}


def _spawned(rank: int, world: int, local: int, port: int, seconds: float, out: str) -> None:
    """One of ``--ranks`` local processes (torch.multiprocessing), gloo on CPU, nccl on GPUs.
    ``local`` < ``world`` treats blocks of ``local`` ranks as hosts (over loopback: how
    the tests exercise the inter-host measurement on one machine)."""
    import json

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world)
    result = rank_figures(world, local, device, seconds)
    if result is not None:
        Path(out).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def _spawned_alone(rank: int, port: int, out: str) -> None:
    """The minimal DLRM's step as one rank alone (a process group of one): the framework's
    cost per step without a peer, for the one-process figures."""
    import json

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    tiny = {b: framework_step(1, 1, device, b) for b in TINY_BATCHES}
    Path(out).write_text(json.dumps({"tiny_step_s": {str(b): tiny[b]["seconds"] for b in TINY_BATCHES},
                                     "tiny_plan": {str(b): tiny[b]["plan"] for b in TINY_BATCHES}}))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__}
    for name in ("fbgemm-gpu", "fbgemm-gpu-cpu", "torchrec"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


SOURCE = "measured by dlrm-dist calibrate on this machine"


def _framework_cost(prof: HardwareProfile, tiny: Dict[str, Any], world: int, local: int) -> Tuple[float, float]:
    """(ms per step, us per sample): the minimal DLRM's measured step at each of
    ``TINY_BATCHES`` less what the step-time model predicts for it from every other figure
    of ``prof`` (collective latencies and bytes, the embedding kernel, the GEMMs), so
    nothing is counted twice; the line through the two residuals (clamped at 0)."""
    from dlrm_dist.model import build_model, dense_parameter_count
    from dlrm_dist.planner import performance as pf
    from dlrm_dist.planner.traffic import Topo

    residual = {}
    dense = dense_parameter_count(build_model(minimal_config(TINY_BATCHES[0]).model, torch.device("cpu"), "meta"))
    for b in TINY_BATCHES:
        cfg = minimal_config(b)
        tables = pf.layout_from_table(cfg, tiny["tiny_plan"][str(b)])
        model_ms = pf.performance(cfg, tables, Topo(world, local), dense, prof, "fp32", "criteo_kaggle").step_ms
        residual[b] = tiny["tiny_step_s"][str(b)] * 1000 - model_ms
    (b0, r0), (b1, r1) = sorted(residual.items())
    per_sample_ms = max(0.0, (r1 - r0) / (b1 - b0))
    return max(0.0, r0 - per_sample_ms * b0), per_sample_ms * 1000


def with_step_overhead(prof: HardwareProfile, ranks: Dict[str, Any], world: int, local: int,
                       alone: Optional[Dict[str, Any]] = None) -> HardwareProfile:
    """``step_overhead_ms`` and ``step_overhead_us_per_sample`` (:func:`_framework_cost`):
    with ``local`` ranks for the per-rank figures, and for the one-process figures from
    the minimal DLRM as one rank alone (``alone``; without it, the ranks' figures)."""
    import dataclasses

    fixed, per_sample = _framework_cost(prof, ranks, world, local)
    by_local = {k: {**v, "step_overhead_ms": fixed, "step_overhead_us_per_sample": per_sample}
                for k, v in prof.by_local_ranks.items()}
    top = _framework_cost(prof, alone, 1, 1) if alone else (fixed, per_sample)
    return dataclasses.replace(prof, step_overhead_ms=top[0], step_overhead_us_per_sample=top[1],
                               by_local_ranks=by_local)


def build_profile(name: str, device: torch.device, single: Optional[Dict[str, Any]], ranks: Dict[str, Any],
                  local: int, measured: Dict[str, Any]) -> HardwareProfile:
    """The profile: the one-process figures on top (a rank alone on the host), the
    per-rank figures under ``by_local_ranks[local]``, the links between the ranks."""
    top = single or ranks["per_rank"]
    intra, inter = ranks["links"]["intra_host"], ranks["links"]["inter_host"]
    cuda = device.type == "cuda"
    what = torch.cuda.get_device_name(device) if cuda else f"{os.cpu_count()} CPU cores"
    return HardwareProfile(
        name=name, description=f"{what} on {socket.gethostname()}, measured {measured['date']}",
        device=device.type, gpus_per_node=local,
        hbm_gb=torch.cuda.get_device_properties(device).total_memory / GiB if cuda else 0.0,
        host_ram_gb=psutil.virtual_memory().total / GiB,
        peak_tflops=dict(top["peak_tflops"]), hbm_gb_per_s=top["hbm_gb_per_s"],
        elementwise_gb_per_s=top["elementwise_gb_per_s"],
        gemm_tflops_by_min_dim={int(d): r for d, r in top["gemm_tflops_by_min_dim"].items()},
        bmm_tflops_by_min_dim={int(d): r for d, r in top["bmm_tflops_by_min_dim"].items()},
        host_link_gb_per_s=measured["host_link_gb_per_s"],
        intra_host_gb_per_s=intra["all_to_all_gb_per_s"] if intra else top["hbm_gb_per_s"],
        inter_host_gb_per_s=inter["all_to_all_gb_per_s"] if inter else None,
        efficiency={"gemm": 1.0, "memory": 1.0, "link": 1.0},
        latency_us={"intra_host": intra["all_to_all_latency_us"] if intra else 0.0,
                    "inter_host": (inter or intra or {}).get("all_to_all_latency_us", 0.0)},
        input_samples_per_s_per_rank={}, step_overhead_ms=0.0,
        embedding_gb_per_s=top["embedding_gb_per_s"], embedding_fixed_ms=top["embedding_fixed_ms"],
        by_local_ranks={local: {**ranks["per_rank"], **{key: {int(d): r for d, r in ranks["per_rank"][key].items()}
                                                         for key in ("gemm_tflops_by_min_dim", "bmm_tflops_by_min_dim")}}}
        if single and local > 1 else {},
        sources={
            "peak_tflops": f"{SOURCE}: forward + backward of 3 Linear(512, 512) at batch 2048",
            "gemm_tflops_by_min_dim": f"{SOURCE}: forward + backward of Linear(512, d) at batch 2048, d in {GEMM_DIMS}",
            "bmm_tflops_by_min_dim": f"{SOURCE}: forward + backward of 2048 x (32 x d) @ (d x 32), d in {BMM_DIMS}",
            "hbm_gb_per_s": f"{SOURCE}: copy bandwidth (read + write) of 64 MiB (1 GiB on a GPU)",
            "elementwise_gb_per_s": f"{SOURCE}: a reference DLRM's dense step (MLPs {REFERENCE_BOTTOM} / "
                                    f"{REFERENCE_TOP}, dot interaction, batch 2048) less its matmuls at the rates "
                                    "above, over 3 passes of its activations",
            "embedding_gb_per_s": f"{SOURCE}: FBGEMM fused lookup + exact Adagrad update, "
                                  f"{EMB_TABLES} tables x {EMB_ROWS} x {EMB_DIM}, batch {EMB_BATCHES}",
            "intra_host_gb_per_s": f"{SOURCE}: all_to_all_single of 8 MiB per rank between the local ranks",
            "inter_host_gb_per_s": f"{SOURCE}: all_to_all_single between hosts" if inter
                                   else "not measured: run calibrate under torchrun across hosts",
            "latency_us": f"{SOURCE}: all_to_all_single of 4 KiB",
            "input_samples_per_s_per_rank": "not measured by calibrate: benchmarks/loader.py measures it",
            "step_overhead_ms": f"{SOURCE}: a training step of a minimal DLRM (26 tables x 100k rows x dim 8, "
                                f"8-wide MLPs, batch {TINY_BATCHES} per rank, TorchRec's DMP and "
                                "TrainPipelineSparseDist), minus the model's prediction for it: the fixed part; one "
                                "rank alone on top, the local ranks together under by_local_ranks",
            "step_overhead_us_per_sample": f"{SOURCE}: as step_overhead_ms, the part that grows with the batch",
            "efficiency": "1.0: every rate above is measured, not a datasheet peak",
        },
        measured=measured,
    )


def calibrate(name: str, ranks: int, seconds: float, hosts: int = 1) -> HardwareProfile:
    """Measure one process with every core, then ``ranks`` processes at once (split into
    ``hosts`` blocks, which only tests use: the real inter-host link needs torchrun)."""
    import json
    import tempfile

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    load_before = list(os.getloadavg())
    start = time.perf_counter()
    single = process_figures(device, seconds)
    link_bw = host_link_gb_per_s(device, seconds)
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "ranks.json")
        mp.spawn(_spawned, args=(ranks, ranks // hosts, _free_port(), seconds, out), nprocs=ranks, join=True)
        per_ranks = json.loads(Path(out).read_text())
        mp.spawn(_spawned_alone, args=(_free_port(), out), nprocs=1, join=True)
        alone = json.loads(Path(out).read_text())
    measured = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "load_average_before": load_before, "load_average_after": list(os.getloadavg()),
                "seconds": round(time.perf_counter() - start, 1), "versions": _versions(),
                "host_link_gb_per_s": link_bw, "one_process": {**single, "tiny_step_s": alone["tiny_step_s"]},
                "ranks": per_ranks, "local_ranks": ranks}
    prof = build_profile(name, device, single, per_ranks, ranks // hosts, measured)
    return with_step_overhead(prof, per_ranks, ranks, ranks // hosts, alone)


def calibrate_under_torchrun(name: str, seconds: float) -> Optional[HardwareProfile]:
    """Every rank of a torchrun job (one or more hosts) measures together; rank 0 builds
    the profile, with the inter-host link when the job spans hosts."""
    cuda = torch.cuda.is_available()
    local, world = int(os.environ["LOCAL_WORLD_SIZE"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    load_before = list(os.getloadavg())
    result = rank_figures(world, local, device, seconds)
    dist.barrier()
    dist.destroy_process_group()
    if result is None:
        return None
    measured = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "load_average_before": load_before, "load_average_after": list(os.getloadavg()),
                "versions": _versions(), "host_link_gb_per_s": host_link_gb_per_s(device, seconds),
                "ranks": result, "local_ranks": local, "hosts": world // local}
    return with_step_overhead(build_profile(name, device, None, result, local, measured), result, world, local)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="dlrm-dist calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, help="profile YAML to write (dlrm-dist plan --hardware FILE)")
    p.add_argument("--ranks", type=int, default=None, help="local ranks measured together (default: GPUs, or 2 on CPU)")
    p.add_argument("--name", default=None, help="profile name (default: calibrated-HOSTNAME)")
    p.add_argument("--seconds", type=float, default=0.3, help="minimum timing per figure (default 0.3)")
    args = p.parse_args(argv)
    name = args.name or f"calibrated-{socket.gethostname()}"
    if "RANK" in os.environ and "LOCAL_WORLD_SIZE" in os.environ:
        prof = calibrate_under_torchrun(name, args.seconds)
    else:
        ranks = args.ranks or (torch.cuda.device_count() if torch.cuda.is_available() else 2)
        prof = calibrate(name, max(1, ranks), args.seconds)
    if prof is not None:
        write_profile(prof, Path(args.output))
        print(f"{prof.name}: fp32 {prof.peak_tflops['fp32'] * 1000:.1f} GFLOPS, copy {prof.hbm_gb_per_s:.1f} GB/s, "
              f"embedding kernel {prof.embedding_gb_per_s:.2f} GB/s + {prof.embedding_fixed_ms:.2f} ms a call, "
              f"all-to-all {prof.intra_host_gb_per_s:.2f} GB/s + {prof.latency_us['intra_host']:.0f} us "
              f"(load {prof.measured['load_average_before'][0]:.1f}) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
