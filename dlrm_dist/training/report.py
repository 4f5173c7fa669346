"""``dlrm-dist report RUN_DIR [RUN_DIR ...]``: read finished runs at a glance.

Prints one row per run from its ``summary.json`` (AUC, logloss, steps, world
size, throughput, peak RSS) and draws ``metrics.jsonl`` with matplotlib:
training loss and validation AUC against the step, one line per run, saved as
``report.png`` (or ``--output``). A run directory without ``summary.json`` is
reported as unfinished rather than skipped, so a crashed run is never mistaken
for a missing one. A resumed run is drawn as one curve: the training writes its
file so (``metrics.MetricsSink(resumed_from=...)``), and :func:`one_curve` also
reads files written before it did, where the redone steps appear twice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

from dlrm_dist.core.errors import UserError, entry_point
from dlrm_dist.core.units import MiB

COLUMNS = [  # (summary key, header, format)
    ("val_auc", "val AUC", "{:.4f}"),
    ("test_auc", "test AUC", "{:.4f}"),
    ("val_logloss", "val logloss", "{:.4f}"),
    ("teacher_val_auc", "teacher AUC", "{:.4f}"),
    ("steps", "steps", "{:,}"),
    ("world_size", "ranks", "{}"),
    ("global_batch_size", "global batch", "{:,}"),
    ("samples_per_s_per_rank", "samples/s/rank", "{:,.0f}"),
    ("peak_rss_bytes", "peak RSS MiB", "{:,.0f}"),
]


def load_run(run_dir: Path) -> Dict:
    """``{"summary": dict | None, "events": [...]}`` of one run directory."""
    if not run_dir.is_dir():
        raise UserError(f"no run directory {run_dir}")
    summary_path, metrics_path = run_dir / "summary.json", run_dir / "metrics.jsonl"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    events = []
    if metrics_path.is_file():
        for n, line in enumerate(metrics_path.read_text().splitlines(), 1):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{metrics_path}:{n}: not a JSON object") from None
    return {"summary": summary, "events": events}


def one_curve(events: List[Dict]) -> List[Dict]:
    """Events of one kind (train, val ...) as one curve: an event whose step is not
    after the previous one's starts a redone stretch (a resumed attempt), which
    replaces the earlier events from that step on."""
    curve: List[Dict] = []
    for event in events:
        if event.get("superseded_at_resume") is not None:
            continue
        while curve and curve[-1]["step"] >= event["step"]:
            curve.pop()
        curve.append(event)
    return curve


def format_table(runs: Dict[str, Dict]) -> str:
    headers = ["run"] + [h for _, h, _ in COLUMNS]
    rows = []
    for name, run in runs.items():
        s = run["summary"]
        if s is None:
            rows.append([name, "unfinished (no summary.json)"] + [""] * (len(COLUMNS) - 1))
            continue
        cells = []
        for key, _, fmt in COLUMNS:
            value = s.get(key)
            if key == "peak_rss_bytes" and value is not None:
                value = value / MiB
            cells.append("-" if value is None else fmt.format(value))
        rows.append([name] + cells)
    widths = [max(len(r[i]) for r in rows + [headers]) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [headers] + rows]
    return "\n".join(lines)


def plot(runs: Dict[str, Dict], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training hosts
    import matplotlib.pyplot as plt

    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in runs.items():
        train = one_curve([e for e in run["events"] if e.get("event") == "train"])
        val = one_curve([e for e in run["events"] if e.get("event") == "val"])
        if train:
            loss_ax.plot([e["step"] for e in train], [e["loss"] for e in train], marker=".", label=name)
        if val:
            auc_ax.plot([e["step"] for e in val], [e["auc"] for e in val], marker="o", label=name)
        teacher = (run["summary"] or {}).get("teacher_val_auc")
        if teacher is not None:
            auc_ax.axhline(teacher, linestyle="--", linewidth=1, color="gray")
    loss_ax.set(title="training loss (BCE)", xlabel="step", ylabel="loss")
    auc_ax.set(title="validation AUC (dashed: synthetic teacher's own)", xlabel="step", ylabel="AUC")
    for ax in (loss_ax, auc_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)


@entry_point("dlrm-dist report")
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="dlrm-dist report", description=__doc__.split("\n")[0])
    p.add_argument("run_dirs", nargs="+", type=Path, help="run directories of dlrm-dist train")
    p.add_argument("--output", type=Path, default=Path("report.png"), help="plot file (PNG)")
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    runs = {str(d): load_run(d) for d in args.run_dirs}  # a UserError: entry_point, exit 2
    print(format_table(runs))
    if not args.no_plot:
        plot(runs, args.output)
        print(f"plot written to {args.output}")
    return 0 if all(r["summary"] is not None for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
