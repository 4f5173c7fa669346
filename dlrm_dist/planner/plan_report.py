"""The human-readable report of ``dlrm-dist plan``: aligned tables in one binary
unit throughout (GiB, or MiB for jobs under 1 GiB per host), with decimal GB only
beside the table and job totals, where published figures use it.

The unit is chosen once per report (:func:`report_unit`) and passed to every
function that prints bytes: nothing here keeps state between reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence

from dlrm_dist.core.units import GB, GiB, MiB

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
    sweep_goal: str = "fits"
    """What the sweep searched for: "fits" (--min-gpus) or "epoch within H h" (--epoch-hours)."""
    performance: Optional[Dict[str, object]] = None
    """The step-time model's prediction (``step_time.Performance``) with --hardware."""
    scaling: Optional[Dict[str, object]] = None
    """--plot: the predicted scaling curve's points and the PNG's path."""


MAX_COLUMNS = 8


class Unit(NamedTuple):
    """The binary unit a report prints bytes in."""

    name: str
    nbytes: int


def report_unit(est: Estimate) -> Unit:
    """GiB, or MiB when the biggest host total and the tables are both under 1 GiB."""
    biggest = max([sum(h.values()) for h in est.hosts] + [est.tables["weight_bytes"]], default=0)
    return Unit("GiB", GiB) if biggest >= GiB else Unit("MiB", MiB)


def number_in(n: float, unit: Unit) -> str:
    """``n`` bytes as a number in ``unit``, two decimals."""
    return f"{n / unit.nbytes:.2f}"


def with_unit(n: float, unit: Unit) -> str:
    """``n`` bytes as a number and the unit's name."""
    return f"{number_in(n, unit)} {unit.name}"


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


def _memory_table(title: str, parts: List[Dict[str, int]], label: str, capacity: int, unit: Unit) -> List[str]:
    totals = [sum(p.values()) for p in parts]
    names, groups = _columns(len(parts), totals, label)
    # Categories that are zero everywhere (no UVM tables, say) stay in --json only.
    keys = [k for k in dict.fromkeys(k for p in parts for k in p) if any(p.get(k) for p in parts)]

    def cell(key: str, group: List[int]) -> str:
        return number_in(sum(parts[i].get(key, 0) for i in group) / len(group), unit)

    rows = [[k] + [cell(k, g) for g in groups] for k in keys]
    rows.append(["total"] + [number_in(sum(totals[i] for i in g) / len(g), unit) for g in groups])
    rows.append(["capacity"] + [number_in(capacity, unit)] * len(groups))
    rows.append(["free"] + [number_in(capacity - sum(totals[i] for i in g) / len(g), unit) for g in groups])
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


def duration(seconds: float) -> str:
    """Seconds as the largest two units (1 h 05 min, 4 min 09 s, 12.3 s)."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds:.1f} s"


EMBEDDING_AND_A2A = ("embedding_lookup", "embedding_backward_update", "input_all_to_all",
                     "pooled_all_to_all_fwd", "pooled_all_to_all_bwd")


def performance_lines(est: Estimate) -> List[str]:
    """The step-time model's prediction: terms, overlap, rates, bottleneck, epoch."""
    p = est.performance
    if not p:
        return []
    per = "GPU" if est.compute_device == "cuda" else "rank"
    terms, exposed = p["terms_ms"], p["exposed_ms"]  # type: ignore[index]
    rows = [[k.replace("_", " "), f"{v:.3f}", f"{exposed[k]:.3f}"] for k, v in terms.items()]  # type: ignore[union-attr]
    rows.append(["step", "", f"{p['step_ms']:.3f}"])
    out = [f"Predicted step on {p['hardware']} ({p['dense_dtype']} dense, train.pipeline="
           f"{p['pipeline']}; dlrm_dist/planner/step_time.py), ms per step, slowest rank"]
    out += table(["term", "alone", "exposed"], rows)
    out.append(f"  -> {p['samples_per_s_per_rank']:,.0f} samples/s per {per}, {p['samples_per_s']:,.0f} samples/s "
               f"for the job; bottleneck: {p['bottleneck']}")
    if p.get("epoch_s"):
        out.append(f"  one epoch of {p['dataset']} ({p['train_rows']:,} samples): {duration(float(p['epoch_s']))}")
    if p.get("torchrec_embedding_ms") is not None:
        ours = sum(terms[k] for k in EMBEDDING_AND_A2A)  # type: ignore[index]
        out.append(f"  TorchRec's EmbeddingPerfEstimator on this plan at the same bandwidths: "
                   f"{p['torchrec_embedding_ms']:.3f} ms (lookups + all-to-alls; ours {ours:.3f} ms)")
    out += [f"  note: {n}" for n in p.get("notes", [])]  # type: ignore[union-attr]
    return out + [""]


def _header(est: Estimate, unit: Unit) -> List[str]:
    t = est.tables
    per = "GPU" if est.compute_device == "cuda" else "rank"
    hbm = f"HBM {with_unit(est.hbm_per_rank, unit)} per GPU; " if est.compute_device == "cuda" else ""
    over = f" {' '.join(est.overrides)}" if est.overrides else ""
    return [
        f"dlrm-dist plan: {est.config}{over}",
        f"cluster  {est.nodes} node(s) x {est.gpus_per_node} {per}s = {est.world_size} ranks ({est.compute_device}); "
        f"{hbm}host RAM {with_unit(est.host_ram_per_node, unit)} per node (DDR {with_unit(est.ddr_per_rank, unit)} per rank)",
        f"tables   {t['count']} tables, {t['rows']:,} rows x dim {est.embedding_dim} {est.embedding_dtype}: "
        f"{with_unit(t['weight_bytes'], unit)} ({t['weight_bytes'] / GB:.1f} GB); {est.embedding_optimizer} state "
        f"{with_unit(t['optimizer_bytes'], unit)} ({t['optimizer_bytes'] / GB:.1f} GB)",
        f"dense    {t['dense_params']:,} parameters; batch {est.batch_size:,} per rank, {est.global_batch_size:,} global",
    ]


def _totals(est: Estimate, unit: Unit) -> List[str]:
    if not est.ranks:
        return []
    dev = sum(sum(r["device"].values()) for r in est.ranks)
    host = sum(sum(h.values()) for h in est.hosts)
    lines = ["Job totals"]
    rows = []
    if est.compute_device == "cuda":
        rows.append(["HBM", number_in(dev, unit), number_in(est.hbm_per_rank * est.world_size, unit), f"{dev / GB:.1f}"])
    rows.append(["host RAM", number_in(host, unit), number_in(est.host_ram_per_node * est.nodes, unit), f"{host / GB:.1f}"])
    return lines + table(["", f"used {unit.name}", f"capacity {unit.name}", "used GB"], rows)


def _verdict(est: Estimate, unit: Unit) -> List[str]:
    if est.fits:
        lines = ["Verdict: FITS"]
    else:
        lines = ["Verdict: DOES NOT FIT"] + [f"  - {r}" for r in est.reasons]
        r = est.remedy
        if r:
            lines.append(f"Smallest change that fits: {r['change']}: {r['summary']}")
        elif _floor_fails(est):
            lines.append(f"Even a rank without tables needs {with_unit(est.floor['device'], unit)} of HBM and a host "
                         f"{with_unit(est.floor['host_per_node'], unit)} of RAM: use fewer GPUs per host, more RAM, "
                         "or a smaller batch / MLP.")
        elif not est.sweep:
            lines.append("No single change tried (more GPUs up to 512, UVM caching, RowWiseAdagrad, fp16, "
                         "smaller tables) makes it fit.")
    if est.sweep and est.sweep_goal == "fits":
        best = [s for s in est.sweep if s["fits"]]
        lines.append("GPU sweep: " + ", ".join(f"{s['gpus']} {'fits' if s['fits'] else 'no'}" for s in est.sweep))
        lines.append(f"Smallest GPU count that fits: {min(int(s['gpus']) for s in best)}" if best
                     else "No GPU count up to 512 fits.")
    elif est.sweep:
        def tried(s: Dict[str, object]) -> str:
            epoch = duration(float(s["epoch_s"])) if s.get("epoch_s") else "no plan"  # type: ignore[arg-type]
            return f"{s['nodes']} node(s) {epoch}{'' if s['fits'] else ' (does not fit)'}"
        best = [s for s in est.sweep if s["ok"]]
        lines.append(f"Node sweep ({est.sweep_goal}): " + ", ".join(tried(s) for s in est.sweep))
        lines.append(f"Fewest nodes for one epoch within the time: {min(int(s['nodes']) for s in best)} "
                     f"({min(int(s['gpus']) for s in best)} GPUs)" if best
                     else "No node count up to 512 GPUs trains one epoch within the time.")
    return lines


def _floor_fails(est: Estimate) -> bool:
    dev = est.compute_device == "cuda" and est.floor["device"] > est.hbm_per_rank
    return dev or est.floor["host_per_node"] > est.host_ram_per_node


def _preprocess(est: Estimate, unit: Unit) -> List[str]:
    p = est.preprocess
    how = " (dataset inferred from table sizes; --dataset to choose)" if p["inferred"] else ""
    return [
        f"Preprocessing {p['dataset']}, {p['days']} day(s){how}:",
        f"  {p['rows']:,} rows x {p['bytes_per_row']} B "
        f"(ids int{8 * int(p['sparse_id_bytes'])}) = {p['disk_bytes'] / GB:,.1f} GB ({with_unit(p['disk_bytes'], unit)}) "
        f"of npy output; RAM {with_unit(p['worker_ram_bytes'], unit)} per worker",
    ]


def format_report(est: Estimate) -> str:
    unit = report_unit(est)
    out = _header(est, unit) + [""] + _plan_lines(est) + [""]
    if est.ranks:
        if est.compute_device == "cuda":
            out += _memory_table(f"HBM per rank, {unit.name}", [r["device"] for r in est.ranks], "rank",
                                 est.hbm_per_rank, unit) + [""]
        out += _memory_table(f"Host RAM per rank, {unit.name}", [r["host"] for r in est.ranks], "rank",
                             est.ddr_per_rank, unit) + [""]
        if est.gpus_per_node > 1:
            out += _memory_table(f"Host RAM per host, {unit.name}", est.hosts, "host", est.host_ram_per_node, unit) + [""]
        out += _totals(est, unit) + [""] + _perf_lines(est) + [""] + performance_lines(est)
    out += _preprocess(est, unit) + [""] + _verdict(est, unit)
    return "\n".join(out)
