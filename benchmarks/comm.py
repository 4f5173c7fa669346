"""All-to-all and all-reduce bandwidth and latency over the active backend, at the
message sizes a DLRM step sends.

    python benchmarks/comm.py [--ranks 2] [--config benchmarks/configs/kaggle_shape.yaml]
        [--batch-sizes 512,1024,2048,4096,8192] [--min-bytes 4096] [--max-bytes 67108864]
        [--iters 10] [--windows 5] [--machine NAME] [--json OUT] [--no-plots]

Started by hand it relaunches itself under torchrun with ``--ranks`` local ranks
(gloo on CPU, nccl on GPUs: ``dlrm_dist.training.distributed.init_distributed`` picks
them as training does). Two kinds of sizes:

* a geometric sweep ``--min-bytes`` ... ``--max-bytes`` (x4), for the curve;
* the sizes of one DLRM step of the config: the pooled-embedding all-to-all
  (``B x F x D`` fp32 per rank, for each batch size B of ``--batch-sizes``; the
  forward and the backward send it once each) and the dense gradients'
  all-reduce (every MLP parameter, fp32; DDP buckets it, 25 MB each).

Per op and size: the median over ``--windows`` windows of ``--iters`` calls each
of the time per call (the smallest size gives the latency), the algorithm
bandwidth (bytes per rank / time) and the bus bandwidth (NCCL-tests' convention:
x 2(n-1)/n for all-reduce, x (n-1)/n for all-to-all), which is what the link
carries and comparable across world sizes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (RESULTS, ROOT, default_nproc, environment, machine_name, pyplot,  # noqa: E402
                    relaunch_under_torchrun, write_json)  # noqa: E402

from dlrm_dist.hardware.collectives import bus_factor, slowest_median, time_op  # noqa: E402  (shared with doctor)


def dlrm_sizes(config: str, batch_sizes: List[int]) -> Dict[str, Any]:
    """Bytes of the step's messages: pooled embeddings per batch size, dense gradients."""
    import torch

    from dlrm_dist.config import ModelConfig, load_config
    from dlrm_dist.model import build_model
    from dlrm_dist.model.dlrm import dense_parameter_count

    cfg = load_config(config)
    features, dim = len(cfg.model.table_sizes()), cfg.model.embedding_dim
    tiny = ModelConfig(**{**cfg.model.__dict__, "num_embeddings_per_feature": None, "num_embeddings": 2})
    dense_params = dense_parameter_count(build_model(tiny, torch.device("cpu"), sparse_device="cpu"))
    return {
        "features": features, "embedding_dim": dim, "dense_parameters": dense_params,
        "pooled_embeddings_bytes": {str(b): b * features * dim * 4 for b in batch_sizes},
        "dense_gradient_bytes": dense_params * 4,
    }


def worker(args: argparse.Namespace) -> int:
    """One rank: time every op and size; rank 0 gathers the slowest rank's times."""
    import torch.distributed as dist

    from dlrm_dist.config import DistConfig
    from dlrm_dist.training.distributed import init_distributed

    env = init_distributed(DistConfig())
    step = dlrm_sizes(args.config, args.batch_sizes)
    sweep = []
    size = args.min_bytes
    while size <= args.max_bytes:
        sweep.append(("sweep", size))
        size *= 4
    points = sweep + [(f"pooled_embeddings_B{b}", s) for b, s in step["pooled_embeddings_bytes"].items()]
    points.append(("dense_gradients", step["dense_gradient_bytes"]))
    rows = []
    for op in ("all_to_all", "all_reduce"):
        for label, nbytes in points:
            if label.startswith("pooled") and op != "all_to_all" or label == "dense_gradients" and op != "all_reduce":
                continue
            times = time_op(op, nbytes, env.world_size, env.device, args.iters, args.windows)
            t = slowest_median(times, env.device)  # a collective is as slow as its slowest rank
            factor = bus_factor(op, env.world_size)
            rows.append({"op": op, "label": label, "bytes_per_rank": nbytes, "seconds_median": t,
                         "seconds_windows": times, "latency_us": t * 1e6, "algbw_gb_per_s": nbytes / t / 1e9,
                         "busbw_gb_per_s": nbytes / t / 1e9 * factor})
            if env.is_main:
                print(f"{op:<11} {label:<24} {nbytes:>11} B  {t * 1e6:10.1f} us  "
                      f"{rows[-1]['algbw_gb_per_s']:7.3f} GB/s alg  {rows[-1]['busbw_gb_per_s']:7.3f} GB/s bus", flush=True)
    if env.is_main:
        machine = machine_name(args.machine)
        out = Path(args.json) if args.json else RESULTS / machine / "comm.json"
        result = {"machine": machine, **environment(), "backend": env.backend, "world_size": env.world_size,
                  "config": os.path.relpath(args.config, ROOT), "dlrm_step": step,
                  "iters": args.iters, "windows": args.windows, "results": rows}
        out.parent.mkdir(parents=True, exist_ok=True)
        if not args.no_plots:
            result["plots"] = [plot(result, out.parent / "comm_bandwidth.png")]
        write_json(out, result)
        print(f"written to {out}")
    dist.barrier()
    dist.destroy_process_group()
    return 0


def plot(result: Dict[str, Any], path: Path) -> str:
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for op, color in (("all_to_all", "tab:blue"), ("all_reduce", "tab:orange")):
        sweep = [r for r in result["results"] if r["op"] == op and r["label"] == "sweep"]
        step = [r for r in result["results"] if r["op"] == op and r["label"] != "sweep"]
        x = [r["bytes_per_rank"] for r in sweep]
        ax.plot(x, [r["busbw_gb_per_s"] for r in sweep], "o-", color=color, label=f"{op} (bus bandwidth)")
        ax2.plot(x, [r["latency_us"] for r in sweep], "o-", color=color, label=op)
        ax.plot([r["bytes_per_rank"] for r in step], [r["busbw_gb_per_s"] for r in step], "*", ms=12,
                color=color, label=f"{op}: DLRM step sizes")
        for r in step:
            ax.annotate(r["label"].replace("pooled_embeddings_", "").replace("dense_gradients", "grads"),
                        (r["bytes_per_rank"], r["busbw_gb_per_s"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    for a, ylabel in ((ax, "GB/s"), (ax2, "time per call (us)")):
        a.set_xscale("log", base=2)
        a.set_xlabel("bytes per rank")
        a.set_ylabel(ylabel)
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    ax2.set_yscale("log")
    fig.suptitle(f"{result['backend']} collectives, {result['world_size']} ranks, {result['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", type=int, default=None, help="local ranks (default 2 on CPU, #GPUs on CUDA)")
    p.add_argument("--config", default=str(ROOT / "benchmarks/configs/kaggle_shape.yaml"))
    p.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[512, 1024, 2048, 4096, 8192])
    p.add_argument("--min-bytes", type=int, default=4096)
    p.add_argument("--max-bytes", type=int, default=64 << 20)
    p.add_argument("--iters", type=int, default=10, help="calls per timed window")
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--machine", default=None)
    p.add_argument("--json", default=None, help="default benchmarks/results/<machine>/comm.json")
    p.add_argument("--no-plots", action="store_true")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if "RANK" in os.environ:
        return worker(args)
    return relaunch_under_torchrun(__file__, args.ranks or default_nproc(),
                                   argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
