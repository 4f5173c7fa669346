"""Fused embedding lookup + backward + optimizer update, per sharding type, in
rows/s and bytes/s over table sizes, embedding dims and pooling factors.

    python benchmarks/embedding.py [--ranks 2] [--tables 8] [--batch-size 2048]
        [--rows 10000,100000,1000000] [--dims 16,64,128] [--pooling 1,8,32]
        [--sharding-types table_wise,column_wise,row_wise,table_row_wise,data_parallel]
        [--optimizer adagrad] [--steps 5] [--windows 5] [--machine NAME] [--json OUT] [--no-plots]

An ``EmbeddingBagCollection`` of ``--tables`` equal tables is sharded by
``DistributedModelParallel`` over ``--ranks`` local ranks (torchrun; gloo on
CPU, nccl on GPUs) with every table pinned to one sharding type through a plan
built with ``torchrec.distributed.sharding_plan`` (the CPU planner refuses
row_wise and table_row_wise; the kernels run on CPU all the same). The
optimizer is fused into the backward (``apply_optimizer_in_backward``), as in
training; data_parallel tables are not fused, so their step runs an optimizer
after the backward and is timed with it.

One step = forward (input all-to-all, lookup, pooled all-to-all) + backward
(gradient all-to-all, fused update) of ``--batch-size`` samples per rank, each
feature with ``pooling`` ids. Sweeps vary one axis at a time around the first
value of the others (rows x dims x pooling would be 27 points per type). Per
point: median and spread over ``--windows`` windows of ``--steps`` steps, and

* rows/s per rank: embedding rows looked up (and updated) per second,
  ``batch x tables x pooling / step time``;
* bytes/s per rank: those rows' traffic as ``ceiling.embedding_bytes_per_sample``
  counts it (row read, row write back, optimizer state read and write, pooled
  output and its gradient) per second: compare it with the copy bandwidth
  ``benchmarks/throughput.py`` reports.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ceiling import spread  # noqa: E402
from common import (RESULTS, ROOT, default_nproc, environment, machine_name, pyplot,  # noqa: E402
                    relaunch_under_torchrun, write_json)

class PooledLookup(nn.Module):
    """The EBC and nothing else: KJT -> pooled embeddings (B, F*D)."""

    def __init__(self, ebc: nn.Module) -> None:
        super().__init__()
        self.ebc = ebc

    def forward(self, features):  # noqa: ANN001, ANN201 - KeyedJaggedTensor -> Tensor
        return self.ebc(features).values()


SHARDING_TYPES = ("table_wise", "column_wise", "row_wise", "table_row_wise", "data_parallel")


def points(args: argparse.Namespace) -> List[Dict[str, int]]:
    """One-axis-at-a-time sweep around (rows[0], dims[0], pooling[0])."""
    base = {"rows": args.rows[0], "dim": args.dims[0], "pooling": args.pooling[0]}
    out = [dict(base)]
    for key, values in (("rows", args.rows), ("dim", args.dims), ("pooling", args.pooling)):
        out += [{**base, key: v} for v in values[1:]]
    return out


def build_sharded_ebc(point: Dict[str, int], tables: int, sharding_type: str, optimizer: str, env):  # noqa: ANN001
    """DMP over an EBC of equal tables, all pinned to ``sharding_type``, fused optimizer."""
    import torch
    import torch.distributed as dist
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.sharding_plan import (column_wise, construct_module_sharding_plan, data_parallel,
                                                    get_default_sharders, row_wise, table_row_wise, table_wise)
    from torchrec.distributed.types import ShardingEnv, ShardingPlan
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    configs = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=point["dim"], num_embeddings=point["rows"],
                                  feature_names=[f"f{i}"]) for i in range(tables)]
    holder = PooledLookup(EmbeddingBagCollection(tables=configs, device=torch.device("meta")))
    opt_cls = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}[optimizer]
    apply_optimizer_in_backward(opt_cls, holder.ebc.parameters(), {"lr": 0.01})
    spec = {
        "table_wise": lambda i: table_wise(rank=i % env.world_size),
        "column_wise": lambda i: column_wise(ranks=list(range(env.world_size))),
        "row_wise": lambda i: row_wise(),
        "table_row_wise": lambda i: table_row_wise(host_index=0),
        "data_parallel": lambda i: data_parallel(),
    }[sharding_type]
    module_plan = construct_module_sharding_plan(
        holder.ebc, per_param_sharding={c.name: spec(i) for i, c in enumerate(configs)},
        local_size=env.local_world_size, world_size=env.world_size, device_type=env.device.type)
    dmp = DistributedModelParallel(holder, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
                                   device=env.device, plan=ShardingPlan({"ebc": module_plan}),
                                   sharders=get_default_sharders())
    unfused = [p for _, p in dmp.named_parameters() if not hasattr(p, "_in_backward_optimizers")]
    dense_opt = opt_cls(unfused, lr=0.01) if unfused else None  # data_parallel tables
    return dmp, dense_opt


def make_inputs(point: Dict[str, int], tables: int, batch: int, device, n: int = 4):  # noqa: ANN001
    """``n`` KJTs of ``batch`` samples, ``pooling`` uniform ids per feature."""
    import torch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    g = torch.Generator().manual_seed(0)
    total = tables * batch * point["pooling"]
    return [KeyedJaggedTensor.from_lengths_sync(
        keys=[f"f{i}" for i in range(tables)],
        values=torch.randint(0, point["rows"], (total,), generator=g),
        lengths=torch.full((tables * batch,), point["pooling"], dtype=torch.int32),
    ).to(device) for _ in range(n)]


def time_point(point: Dict[str, int], sharding_type: str, args: argparse.Namespace, env) -> List[float]:  # noqa: ANN001
    """Seconds per step of each window (one untimed warm-up window first)."""
    import torch
    import torch.distributed as dist

    dmp, dense_opt = build_sharded_ebc(point, args.tables, sharding_type, args.optimizer, env)
    inputs = make_inputs(point, args.tables, args.batch_size, env.device)
    grad = torch.ones(args.batch_size, args.tables * point["dim"], device=env.device)
    per_step = []
    for w in range(args.windows + 1):
        dist.barrier()
        if env.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for s in range(args.steps):
            pooled = dmp(inputs[s % len(inputs)])  # (B, F*D) of this rank's samples
            pooled.backward(grad)
            if dense_opt is not None:
                dense_opt.step()
                dense_opt.zero_grad()
        if env.device.type == "cuda":
            torch.cuda.synchronize()
        if w:
            per_step.append((time.perf_counter() - start) / args.steps)
    worst = torch.tensor(per_step, dtype=torch.float64, device=env.device)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)  # the step is as slow as its slowest rank
    del dmp, dense_opt
    return worst.tolist()


def bytes_per_sample(point: Dict[str, int], tables: int, optimizer: str) -> float:
    from ceiling import embedding_bytes_per_sample

    from dlrm_dist.config import ModelConfig, OptimConfig, OptimizerConfig

    model = ModelConfig(embedding_dim=point["dim"], num_embeddings_per_feature=[point["rows"]] * tables)
    return embedding_bytes_per_sample(model, OptimConfig(embedding=OptimizerConfig(name=optimizer)),
                                      [point["pooling"]] * tables)


def worker(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from dlrm_dist.config import DistConfig
    from dlrm_dist.training.distributed import init_distributed

    env = init_distributed(DistConfig())
    rows: List[Dict[str, Any]] = []
    for sharding_type in args.sharding_types:
        for point in points(args):
            times = time_point(point, sharding_type, args, env)
            t = statistics.median(times)
            lookups = args.batch_size * args.tables * point["pooling"]
            row = {"sharding_type": sharding_type, **point, "seconds_per_step": spread(times),
                   "rows_per_s_per_rank": lookups / t,
                   "bytes_per_s_per_rank": args.batch_size * bytes_per_sample(point, args.tables, args.optimizer) / t,
                   "samples_per_s_per_rank": args.batch_size / t}
            rows.append(row)
            if env.is_main:
                print(f"{sharding_type:<15} rows {point['rows']:>8} dim {point['dim']:>4} pooling {point['pooling']:>3}: "
                      f"{row['rows_per_s_per_rank'] / 1e6:7.2f} M rows/s  {row['bytes_per_s_per_rank'] / 1e9:6.2f} GB/s "
                      f"per rank  ({t * 1e3:.1f} ms/step)", flush=True)
    if env.is_main:
        machine = machine_name(args.machine)
        out = Path(args.json) if args.json else RESULTS / machine / "embedding.json"
        result = {"machine": machine, **environment(), "backend": env.backend, "world_size": env.world_size,
                  "tables": args.tables, "batch_size_per_rank": args.batch_size, "optimizer": args.optimizer,
                  "steps": args.steps, "windows": args.windows, "results": rows}
        out.parent.mkdir(parents=True, exist_ok=True)
        if not args.no_plots:
            result["plots"] = [plot(result, out.parent / "embedding.png", args)]
        write_json(out, result)
        print(f"written to {out}")
    dist.barrier()
    dist.destroy_process_group()
    return 0


def plot(result: Dict[str, Any], path: Path, args: argparse.Namespace) -> str:
    """rows/s per rank against each swept axis, one line per sharding type."""
    plt = pyplot()
    base = points(args)[0]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    for ax, key in zip(axes, ("rows", "dim", "pooling")):
        others = [k for k in ("rows", "dim", "pooling") if k != key]
        for st in args.sharding_types:
            rs = sorted((r for r in result["results"] if r["sharding_type"] == st
                         and all(r[o] == base[o] for o in others)), key=lambda r: r[key])
            ax.plot([r[key] for r in rs], [r["rows_per_s_per_rank"] / 1e6 for r in rs], "o-", label=st)
        ax.set_xscale("log", base=2)
        ax.set_xlabel({"rows": "rows per table", "dim": "embedding dim", "pooling": "ids per feature"}[key])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("M rows/s per rank (lookup + backward + update)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"fused embedding step, {result['tables']} tables, batch {result['batch_size_per_rank']}/rank, "
                 f"{result['world_size']} ranks ({result['backend']}), {result['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", type=int, default=None, help="local ranks (default 2 on CPU, #GPUs on CUDA)")
    p.add_argument("--tables", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=2048, help="samples per rank per step")
    p.add_argument("--rows", type=ints, default=[100000, 10000, 1000000])
    p.add_argument("--dims", type=ints, default=[16, 64, 128])
    p.add_argument("--pooling", type=ints, default=[1, 8, 32])
    p.add_argument("--sharding-types", type=lambda s: [x for x in s.split(",") if x], default=list(SHARDING_TYPES))
    p.add_argument("--optimizer", choices=("sgd", "adagrad"), default="adagrad")
    p.add_argument("--steps", type=int, default=5, help="steps per timed window")
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--machine", default=None)
    p.add_argument("--json", default=None, help="default benchmarks/results/<machine>/embedding.json")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    bad = [t for t in args.sharding_types if t not in SHARDING_TYPES]
    if bad:
        p.error(f"--sharding-types: unknown {bad}; choose from {', '.join(SHARDING_TYPES)}")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if "RANK" in os.environ:
        return worker(args)
    return relaunch_under_torchrun(__file__, args.ranks or default_nproc(),
                                   argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
