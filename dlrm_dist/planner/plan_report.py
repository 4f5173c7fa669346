"""The human-readable report of ``dlrm-dist plan``: aligned tables in one binary
unit throughout (GiB, or MiB for jobs under 1 GiB per host), with decimal GB only
beside the table and job totals, where published figures use it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from dlrm_dist.core.units import GB, GiB

@dataclass
class Estimate:
    """Everything ``dlrm-dist plan`` reports; ``--json`` prints it as is (bytes, ms)."""

    config: str
    overrides: List[str]
    nodes: int
    gpus_per_node: int
    world_size: int
    compute_device: str
    hbm_per_rank: int
    host_ram_per_node: int
    ddr_per_rank: int
    batch_size: int
    global_batch_size: int
    embedding_optimizer: str
    embedding_dtype: str
    embedding_dim: int
    tables: Dict[str, int]
    planner: Dict[str, object]
    plan: List[Dict[str, object]]
    ranks: List[Dict[str, Dict[str, float]]]
    hosts: List[Dict[str, int]]
    step_ms: Optional[float]
    samples_per_s_per_gpu: Optional[float]
    preprocess: Dict[str, object]
    floor: Dict[str, int]
    """What a rank's device and a host need before any table: no table change helps below it."""
    fits: bool
    reasons: List[str] = field(default_factory=list)
    remedy: Optional[Dict[str, object]] = None
    sweep: List[Dict[str, object]] = field(default_factory=list)


MAX_COLUMNS = 8
UNIT = ["GiB", GiB]  # [name, bytes], set per report by format_report


def gib(n: float) -> str:
    """``n`` bytes as a number in the report's unit."""
    return f"{n / UNIT[1]:.2f}"


def mem(n: float) -> str:
    """``n`` bytes with the report's unit."""
    return f"{gib(n)} {UNIT[0]}"


def _numeric(cell: str) -> bool:
    return cell.replace(",", "").replace(".", "").replace("-", "").lstrip().isdigit()


def table(header: Sequence[str], rows: List[Sequence[str]]) -> List[str]:
    """Columns padded to their widest cell; numeric columns right-aligned."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    right = [bool(rows) and all(_numeric(str(r[i])) for r in rows) for i in range(len(header))]
    out = []
    for r in cells:
        parts = [c.rjust(w) if right[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  " + "  ".join(parts).rstrip())
    return out


def _columns(n: int, totals: List[int], label: str) -> tuple[List[str], List[List[int]]]:
    """Every rank / host when there are few; else the fullest, the emptiest and the mean."""
    if n <= MAX_COLUMNS:
        return [f"{label} {i}" for i in range(n)], [[i] for i in range(n)]
    hi = max(range(n), key=lambda i: totals[i])
    lo = min(range(n), key=lambda i: totals[i])
    return [f"fullest ({label} {hi})", f"emptiest ({label} {lo})", f"mean of {n}"], [[hi], [lo], list(range(n))]


def _memory_table(title: str, parts: List[Dict[str, int]], label: str, capacity: int) -> List[str]:
    totals = [sum(p.values()) for p in parts]
    names, groups = _columns(len(parts), totals, label)
    # Categories that are zero everywhere (no UVM tables, say) stay in --json only.
    keys = [k for k in dict.fromkeys(k for p in parts for k in p) if any(p.get(k) for p in parts)]

    def cell(key: str, group: List[int]) -> str:
        return gib(sum(parts[i].get(key, 0) for i in group) / len(group))

    rows = [[k] + [cell(k, g) for g in groups] for k in keys]
    rows.append(["total"] + [gib(sum(totals[i] for i in g) / len(g)) for g in groups])
    rows.append(["capacity"] + [gib(capacity)] * len(groups))
    rows.append(["free"] + [gib(capacity - sum(totals[i] for i in g) / len(g)) for g in groups])
    return [title] + table([""] + names, rows)


def _plan_lines(est: Estimate) -> List[str]:
    p = est.planner
    head = f"Sharding plan (TorchRec EmbeddingShardingPlanner, {p['seconds']} s)"
    if p["error"]:
        return [head, "  no plan: " + str(p["error"]).strip().splitlines()[0][:400]]
    rows = [[r["table"], f"{r['rows']:,}", r["dim"], r["sharding_type"], r["compute_kernel"],
             _ranks(r["ranks"])] for r in est.plan]
    return [head] + table(["table", "rows", "dim", "sharding_type", "compute_kernel", "ranks"], rows)


def _ranks(ranks: List[int]) -> str:
    if len(ranks) > 2 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ",".join(map(str, ranks))


def _perf_lines(est: Estimate) -> List[str]:
    if est.step_ms is None:
        return []
    perfs = [sum(r["perf_ms"].values()) for r in est.ranks]
    slow = max(range(len(perfs)), key=lambda i: perfs[i])
    pm = est.ranks[slow]["perf_ms"]
    parts = " + ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in pm.items() if v)
    rate = est.samples_per_s_per_gpu or 0.0
    return [
        f"Step time (TorchRec's perf estimate, slowest rank {slow}): {est.step_ms:.3f} ms = {parts}",
        f"  -> {rate:,.0f} samples/s per {'GPU' if est.compute_device == 'cuda' else 'rank'}, "
        f"{rate * est.world_size:,.0f} samples/s for the job",
        "  (embedding lookups and all-to-alls only, at TorchRec's default bandwidths; the MLPs and",
        "   the input pipeline are not in this model, so measured throughput is lower)",
    ]


def _header(est: Estimate) -> List[str]:
    t = est.tables
    unit = "GPU" if est.compute_device == "cuda" else "rank"
    hbm = f"HBM {mem(est.hbm_per_rank)} per GPU; " if est.compute_device == "cuda" else ""
    over = f" {' '.join(est.overrides)}" if est.overrides else ""
    return [
        f"dlrm-dist plan: {est.config}{over}",
        f"cluster  {est.nodes} node(s) x {est.gpus_per_node} {unit}s = {est.world_size} ranks ({est.compute_device}); "
        f"{hbm}host RAM {mem(est.host_ram_per_node)} per node (DDR {mem(est.ddr_per_rank)} per rank)",
        f"tables   {t['count']} tables, {t['rows']:,} rows x dim {est.embedding_dim} {est.embedding_dtype}: "
        f"{mem(t['weight_bytes'])} ({t['weight_bytes'] / GB:.1f} GB); {est.embedding_optimizer} state "
        f"{mem(t['optimizer_bytes'])} ({t['optimizer_bytes'] / GB:.1f} GB)",
        f"dense    {t['dense_params']:,} parameters; batch {est.batch_size:,} per rank, {est.global_batch_size:,} global",
    ]


def _totals(est: Estimate) -> List[str]:
    if not est.ranks:
        return []
    dev = sum(sum(r["device"].values()) for r in est.ranks)
    host = sum(sum(h.values()) for h in est.hosts)
    lines = ["Job totals"]
    rows = []
    if est.compute_device == "cuda":
        rows.append(["HBM", gib(dev), gib(est.hbm_per_rank * est.world_size), f"{dev / GB:.1f}"])
    rows.append(["host RAM", gib(host), gib(est.host_ram_per_node * est.nodes), f"{host / GB:.1f}"])
    return lines + table(["", f"used {UNIT[0]}", f"capacity {UNIT[0]}", "used GB"], rows)


def _verdict(est: Estimate) -> List[str]:
    if est.fits:
        lines = ["Verdict: FITS"]
    else:
        lines = ["Verdict: DOES NOT FIT"] + [f"  - {r}" for r in est.reasons]
        r = est.remedy
        if r:
            lines.append(f"Smallest change that fits: {r['change']}: {r['summary']}")
        elif _floor_fails(est):
            lines.append(f"Even a rank without tables needs {mem(est.floor['device'])} of HBM and a host "
                         f"{mem(est.floor['host_per_node'])} of RAM: use fewer GPUs per host, more RAM, "
                         "or a smaller batch / MLP.")
        elif not est.sweep:
            lines.append("No single change tried (more GPUs up to 512, UVM caching, RowWiseAdagrad, fp16, "
                         "smaller tables) makes it fit.")
    if est.sweep:
        best = [s for s in est.sweep if s["fits"]]
        lines.append("GPU sweep: " + ", ".join(f"{s['gpus']} {'fits' if s['fits'] else 'no'}" for s in est.sweep))
        lines.append(f"Smallest GPU count that fits: {min(int(s['gpus']) for s in best)}" if best
                     else "No GPU count up to 512 fits.")
    return lines


def _floor_fails(est: Estimate) -> bool:
    dev = est.compute_device == "cuda" and est.floor["device"] > est.hbm_per_rank
    return dev or est.floor["host_per_node"] > est.host_ram_per_node


def _preprocess(est: Estimate) -> List[str]:
    p = est.preprocess
    how = " (dataset inferred from table sizes; --dataset to choose)" if p["inferred"] else ""
    return [
        f"Preprocessing {p['dataset']}, {p['days']} day(s){how}:",
        f"  {p['rows']:,} rows x {p['bytes_per_row']} B "
        f"(ids int{8 * int(p['sparse_id_bytes'])}) = {p['disk_bytes'] / GB:,.1f} GB ({mem(p['disk_bytes'])}) "
        f"of npy output; RAM {mem(p['worker_ram_bytes'])} per worker",
    ]


def format_report(est: Estimate) -> str:
    biggest = max([sum(h.values()) for h in est.hosts] + [est.tables["weight_bytes"]], default=0)
    UNIT[:] = ["GiB", GiB] if biggest >= GiB else ["MiB", 1024**2]
    out = _header(est) + [""] + _plan_lines(est) + [""]
    if est.ranks:
        if est.compute_device == "cuda":
            out += _memory_table(f"HBM per rank, {UNIT[0]}", [r["device"] for r in est.ranks], "rank", est.hbm_per_rank) + [""]
        out += _memory_table(f"Host RAM per rank, {UNIT[0]}", [r["host"] for r in est.ranks], "rank", est.ddr_per_rank) + [""]
        if est.gpus_per_node > 1:
            out += _memory_table(f"Host RAM per host, {UNIT[0]}", est.hosts, "host", est.host_ram_per_node) + [""]
        out += _totals(est) + [""] + _perf_lines(est) + [""]
    out += _preprocess(est) + [""] + _verdict(est)
    return "\n".join(out)
