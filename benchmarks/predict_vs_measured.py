"""The step-time model against the trainer on this machine: predicted and measured
samples/s per rank, case by case, from one calibrated profile and nothing else.

    python benchmarks/predict_vs_measured.py --json OUT [--profile FILE | --calibrate | --calibrate-each]
        [--measured A.json,B.json] [--link-mbits 100,1000,10000] [--two-node-only] [--no-plots]

1. The profile: ``--profile FILE`` (what ``dlrm-dist calibrate`` wrote), or with
   ``--calibrate`` it runs calibrate first (``OUT``'s folder / profile.yaml); with
   ``--calibrate-each`` it calibrates right before each case and predicts that case
   from that profile (on a machine shared with others, whose speed swings by 2-5x
   within the hour, a profile from one moment describes another machine later).
2. The measured side: ``benchmarks/throughput.py`` (the real trainer under torchrun,
   median of 5 windows per case) over the Kaggle-shaped model: 1 and 2 ranks x batch
   512 / 2048 / 8192 with the planner's plan, table-, column- and row-wise pinned and
   the ``base`` pipeline at batch 2048 on 2 ranks, and DCNv2 on 1 and 2 ranks; or the
   cases of earlier throughput.py JSONs (``--measured``).
3. The 2-node cases (2 hosts x 1 rank on the local Slurm cluster, one per link limit
   of ``--link-mbits``) run only when ``launchers/local_slurm.sh status`` says the
   cluster is up; otherwise they are listed under ``skipped`` with that reason. At each
   limit ``dlrm-dist calibrate`` runs across the two hosts first (torchx, 2x1), and the
   case is predicted from that profile: the link as measured, not its nominal rate.
4. The prediction: ``dlrm_dist.planner.performance`` on each case's config and the
   plan the trainer actually used (recorded by throughput.py), on the profile. No
   per-case fitting: the profile is the only input measured on this machine.

Written: per case predicted / measured samples/s per rank, their ratio, the model's
terms, the measured fraction of the in-process GEMM ceiling beside the model's
(GEMM time / predicted step); the median and worst |error|; the load average before
and after; and ``predict_vs_measured.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ROOT, environment, machine_name, pyplot, write_json  # noqa: E402

CONFIG = ROOT / "benchmarks/configs/kaggle_shape.yaml"
SWEEPS = [
    # (throughput.py arguments, overrides for every case of the sweep)
    (["--batch-sizes", "512,2048,8192", "--nprocs", "1,2", "--sharding-types", "table_wise,column_wise,row_wise",
      "--pipelines", "base,sparse_dist"], []),
    (["--batch-sizes", "2048", "--nprocs", "1,2", "--sharding-types", "", "--pipelines", "sparse_dist"],
     ["model.interaction=dcn"]),
]


CASES = [  # (nproc, batch per rank, pipeline, pinned sharding type, overrides)
    (1, 512, "sparse_dist", "", []), (1, 2048, "sparse_dist", "", []), (1, 8192, "sparse_dist", "", []),
    (2, 512, "sparse_dist", "", []), (2, 2048, "sparse_dist", "", []), (2, 8192, "sparse_dist", "", []),
    (2, 2048, "sparse_dist", "table_wise", []), (2, 2048, "sparse_dist", "column_wise", []),
    (2, 2048, "sparse_dist", "row_wise", []), (2, 2048, "base", "", []),
    (1, 2048, "sparse_dist", "", ["model.interaction=dcn"]), (2, 2048, "sparse_dist", "", ["model.interaction=dcn"]),
]


def run_calibrated_cases(folder: Path, seconds: float) -> List[Dict[str, Any]]:
    """On a machine whose speed swings with other people's work, a profile taken once
    describes another machine an hour later: here each case is measured right after its
    own ``dlrm-dist calibrate`` (still the only input the prediction gets), through
    throughput.py's ``run_case`` (the real trainer under torchrun)."""
    import throughput

    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for nproc, batch, pipeline, kind, overrides in CASES:
        case = throughput.Case(nproc, batch, pipeline, kind)
        name = case.name + ("-dcn" if overrides else "")
        profile = folder / f"profile-{name}.yaml"
        subprocess.run([sys.executable, "-m", "dlrm_dist.cli", "calibrate", "--output", str(profile),
                        "--seconds", str(seconds)], cwd=ROOT, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        args = argparse.Namespace(config=str(CONFIG), window_steps=5, windows=5, warmup_steps=5, ceiling_seconds=1.0,
                                  overrides=list(overrides))
        with tempfile.TemporaryDirectory(prefix="pvm-") as tmp:
            try:
                r = throughput.run_case(case, args, Path(tmp))
            except RuntimeError as e:
                print(f"[{name}] FAILED: {str(e)[-500:]}", flush=True)
                continue
        results.append({**r, "overrides": list(overrides), "profile": str(profile)})
        print(f"[{name}] {r['samples_per_s_per_rank']['median']:.0f} samples/s per rank", flush=True)
        write_json(folder / "cases.json", {"cases": results})  # --singles re-predicts them later
    return results


def run_sweeps(tmp: Path) -> List[Dict[str, Any]]:
    """The measured side: each sweep is one throughput.py run (one torchrun job per case)."""
    tmp.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (args, overrides) in enumerate(SWEEPS):
        out = tmp / f"sweep{i}.json"
        cmd = [sys.executable, str(ROOT / "benchmarks/throughput.py"), "--config", str(CONFIG), *args,
               "--json", str(out), "--no-plots", *overrides]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=False)
        if out.exists():
            files.append(json.loads(out.read_text()))
    return files


def cluster_status() -> str:
    """``launchers/local_slurm.sh status``'s first line ("down ..." when it is not up)."""
    script = ROOT / "launchers/local_slurm.sh"
    if not script.exists():
        return "down (no launchers/local_slurm.sh)"
    proc = subprocess.run([str(script), "status"], capture_output=True, text=True)
    first = (proc.stdout.strip().splitlines() or ["down"])[0]
    # up: one line per daemon ("munged: running ...") and the nodes; down: "down (...)"
    return first if proc.returncode != 0 or first.startswith("down") else "up"


def two_node_cases(link_mbits: List[int], folder: Path) -> Dict[str, Any]:
    """2 hosts x 1 rank on the local Slurm cluster at each link limit: run when the cluster
    is up (each limit restarts it with ``up --link-mbit N``), else listed as skipped. At
    each limit ``dlrm-dist calibrate`` first runs across the two hosts (torchx, 2x1), so
    the case is predicted from the link as measured, as a user would calibrate a cluster,
    not from the limit's nominal rate (TCP through tc's token bucket gets less)."""
    status = cluster_status()
    if not status.startswith("up"):
        return {"cases": [], "skipped": [{"name": f"2x1-slurm-{m}mbit", "reason": f"local Slurm cluster: {status}; "
                                          "start it with launchers/local_slurm.sh up --link-mbit N"}
                                         for m in link_mbits]}
    cases, skipped = [], []
    folder = folder.resolve()  # the torchx job runs in a folder of its own
    folder.mkdir(parents=True, exist_ok=True)
    for mbit in link_mbits:
        up = subprocess.run([str(ROOT / "launchers/local_slurm.sh"), "up", "--link-mbit", str(mbit)],
                            capture_output=True, text=True)
        if up.returncode != 0:
            skipped.append({"name": f"2x1-slurm-{mbit}mbit", "reason": f"up --link-mbit failed: {up.stderr[-300:]}"})
            continue
        profile = folder / f"profile-2x1-{mbit}mbit.yaml"
        _torchx_slurm(["-m", "dlrm_dist.hardware.calibrate", "--", "--output", str(profile)])
        cases.append({**_slurm_case(mbit), "profile": str(profile)})
        print(f"[2x1-slurm-{mbit}mbit] {cases[-1]['samples_per_s_per_rank']['median']:.0f} samples/s per rank",
              flush=True)
    return {"cases": cases, "skipped": skipped}


def _torchx_slurm(args: List[str], cwd: Optional[str] = None) -> None:
    """``torchx run -s slurm dist.ddp -j 2x1 ARGS`` on the local cluster, waiting for it."""
    env_lines = subprocess.run([str(ROOT / "launchers/local_slurm.sh"), "env"], capture_output=True, text=True).stdout
    # this interpreter's bin/ first: torchx, torchrun and python of the same virtualenv
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    for line in env_lines.splitlines():
        if line.startswith("export ") and "=" in line:
            k, v = line[len("export "):].split("=", 1)
            env[k] = v.strip("'\"")
    with tempfile.TemporaryDirectory(prefix="pvm-slurm-") as work:
        subprocess.run(["torchx", "run", "--wait", "-s", "slurm", "dist.ddp", "-j", "2x1", *args],
                       cwd=cwd or work, env=env, check=True, capture_output=True)


SLURM_BATCH = 2048


def _slurm_case(mbit: int) -> Dict[str, Any]:
    """One 2x1 training job on the Slurm cluster (torchx), its summary as a measured case."""
    with tempfile.TemporaryDirectory(prefix="pvm-slurm-") as work:
        run_dir = Path(work) / "run"
        overrides = [f"train.batch_size={SLURM_BATCH}", "train.max_steps=30", "data.train_samples=122880",
                     "metrics.progress_bar=false", "train.eval_every=0"]
        _torchx_slurm(["-m", "dlrm_dist.train", "--", "--config", str(CONFIG), "--run-dir", str(run_dir), *overrides],
                      cwd=work)
        s = json.loads((run_dir / "summary.json").read_text())
        plan = json.loads((run_dir / "plan.json").read_text()) if (run_dir / "plan.json").exists() else None
        events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # steady state: from the first train log event (step 10: the model's rewrite, the
    # first all-to-alls and the pipeline's fill are behind) to the last
    t = {e["step"]: e["time"] for e in events if e.get("event") == "train"}
    steps = sorted(t)
    rate = (SLURM_BATCH * (steps[-1] - steps[0]) / (t[steps[-1]] - t[steps[0]]) if len(steps) >= 2
            else s["samples_per_s_per_rank"])
    return {"name": f"2x1-slurm-{mbit}mbit", "nproc": 2, "nodes": 2, "link_mbit": mbit, "batch_size": SLURM_BATCH,
            "pipeline": "sparse_dist", "sharding_type": "", "overrides": [],
            "samples_per_s_per_rank": {"median": rate, "whole_run": s["samples_per_s_per_rank"],
                                       "from_step": steps[0] if steps else None}, "plan": plan}


def predict(case: Dict[str, Any], overrides: List[str], profile) -> Dict[str, Any]:  # noqa: ANN001
    """The model on the case's config and the plan the trainer used (the planner's when unrecorded)."""
    import dataclasses

    from dlrm_dist.config import load_config
    from dlrm_dist.core.units import GiB
    from dlrm_dist.model import build_model, dense_parameter_count
    from dlrm_dist.planner import capacity as cap
    from dlrm_dist.planner import performance as pf
    from dlrm_dist.planner.traffic import Topo

    import torch

    case_over = [f"train.batch_size={case['batch_size']}", f"train.pipeline={case['pipeline']}"]
    if case.get("sharding_type"):
        case_over.append(f"sharding.sharding_types=[{case['sharding_type']}]")
    cfg = load_config(str(CONFIG), overrides + case_over)
    nodes = case.get("nodes", 1)
    topo = Topo(case["nproc"], case["nproc"] // nodes)
    if case.get("plan"):
        tables = pf.layout_from_table(cfg, case["plan"])
    else:
        model = cap.meta_model(cfg.model, cfg.optim.embedding)
        run = cap.run_planner(cfg, model, topo.world_size, topo.local_world_size, "cpu", 0, 8 * GiB)
        tables = pf.layout_from_options(cfg, run.options)
    prof = profile
    if case.get("link_mbit") and not prof.inter_host_gb_per_s:
        # no link measured across the hosts: the limit's nominal rate
        prof = dataclasses.replace(profile, inter_host_gb_per_s=case["link_mbit"] / 8 / 1000)
    dense = dense_parameter_count(build_model(cfg.model, torch.device("cpu"), "meta"))
    perf = pf.performance(cfg, tables, topo, dense, prof, "fp32", "criteo_kaggle")
    from dlrm_dist.planner import step_time

    inp = pf.step_inputs(cfg, tables, topo, dense)
    gemm_ms = step_time.gemm_seconds(inp, prof.for_local_ranks(topo.local_world_size), "fp32") * 1000
    return {"samples_per_s_per_rank": perf.samples_per_s_per_rank, "step_ms": perf.step_ms,
            "terms_ms": perf.terms_ms, "exposed_ms": perf.exposed_ms, "bottleneck": perf.bottleneck,
            "gemm_fraction_of_step": gemm_ms / perf.step_ms}


def compare(measured_files: List[Dict[str, Any]], extra: List[Dict[str, Any]], profile) -> List[Dict[str, Any]]:  # noqa: ANN001
    """Rows for throughput.py JSONs (one profile for all) and for single cases (each with
    its own ``profile`` when it was calibrated just before it)."""
    from dlrm_dist.hardware.profiles import load_profile

    rows = []
    for f in measured_files:
        for c in f["cases"]:
            case = {**c, "overrides": f.get("overrides", [])}
            rows.append(_row(case, case["overrides"], profile, f.get("load_average_1_5_15")))
    for c in extra:
        prof = load_profile(c["profile"]) if c.get("profile") else profile
        rows.append(_row(c, c.get("overrides", []), prof, None))
    return rows


def _row(case: Dict[str, Any], overrides: List[str], profile, load) -> Dict[str, Any]:  # noqa: ANN001
    p = predict(case, overrides, profile)
    measured = case["samples_per_s_per_rank"]["median"]
    name = case["name"] + ("-dcn" if "model.interaction=dcn" in overrides and not case["name"].endswith("-dcn") else "")
    return {"name": name, "world_size": case["nproc"], "batch_size_per_rank": case["batch_size"],
            "pipeline": case["pipeline"], "sharding_type": case.get("sharding_type") or "planner",
            "interaction": "dcn" if "model.interaction=dcn" in overrides else "dot",
            "measured_samples_per_s_per_rank": measured, "measured_windows": case["samples_per_s_per_rank"],
            "predicted_samples_per_s_per_rank": p["samples_per_s_per_rank"],
            "ratio_predicted_over_measured": p["samples_per_s_per_rank"] / measured,
            "error": p["samples_per_s_per_rank"] / measured - 1,
            "measured_fraction_of_gemm_ceiling": case.get("fraction_of_gemm_ceiling"),
            "predicted_gemm_fraction_of_step": p["gemm_fraction_of_step"],
            "predicted": p, "sweep_load_average_at_start": load, "profile": case.get("profile"),
            "profile_load_average": (profile.measured or {}).get("load_average_before")}


def summary(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    errors = [abs(r["error"]) for r in rows]
    if not errors:
        return {}
    return {"cases": len(rows), "median_abs_error": statistics.median(errors), "worst_abs_error": max(errors),
            "worst_case": max(rows, key=lambda r: abs(r["error"]))["name"],
            "target": "median |error| <= 15%, worst <= 35%",
            "met": statistics.median(errors) <= 0.15 and max(errors) <= 0.35}


def plot(rows: List[Dict[str, Any]], path: Path) -> str:
    """Left: predicted against measured (y = x, +-15% and +-35% bands). Right: each
    case's predicted step split into its exposed terms."""
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    m = [r["measured_samples_per_s_per_rank"] for r in rows]
    p = [r["predicted_samples_per_s_per_rank"] for r in rows]
    lo, hi = min(m + p) * 0.7, max(m + p) * 1.4
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    for f, style in ((0.15, "--"), (0.35, ":")):
        ax.plot([lo, hi], [lo * (1 + f), hi * (1 + f)], "k" + style, lw=0.6)
        ax.plot([lo, hi], [lo * (1 - f), hi * (1 - f)], "k" + style, lw=0.6)
    ax.scatter(m, p, c=["tab:blue" if r["world_size"] == 1 else "tab:orange" for r in rows])
    for r, x, y in zip(rows, m, p):
        ax.annotate(r["name"].replace("-sparse_dist", ""), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel="measured samples/s per rank", ylabel="predicted samples/s per rank",
           title="predicted vs measured (dashed +-15%, dotted +-35%; blue 1 rank, orange 2)")
    terms = list(rows[0]["predicted"]["exposed_ms"])
    bottom = [0.0] * len(rows)
    for t in terms:
        share = [r["predicted"]["exposed_ms"][t] / r["predicted"]["step_ms"] for r in rows]
        if any(share):
            ax2.barh(range(len(rows)), share, left=bottom, label=t.replace("_", " "))
            bottom = [b + s for b, s in zip(bottom, share)]
    ax2.set_yticks(range(len(rows)), [r["name"] for r in rows], fontsize=7)
    ax2.set(xlabel="share of the predicted step", title="where the model says the step goes")
    ax2.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None, help="default benchmarks/results/<machine>/predict_vs_measured.json")
    p.add_argument("--profile", default=None, help="calibrated profile YAML (dlrm-dist calibrate --output)")
    p.add_argument("--calibrate", action="store_true", help="run dlrm-dist calibrate first (profile.yaml beside --json)")
    p.add_argument("--measured", default="", help="comma-separated throughput.py JSONs to use instead of running it")
    p.add_argument("--calibrate-each", action="store_true",
                   help="calibrate right before each case and predict it from that profile (a machine others share)")
    p.add_argument("--calibrate-seconds", type=float, default=0.3, help="calibrate --seconds")
    p.add_argument("--singles", default=None, help="cases.json of an earlier --calibrate-each run: predict them again")
    p.add_argument("--link-mbits", default="100,1000,10000", help="link limits of the 2-node cases")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--two-node-only", action="store_true",
                   help="only the 2-node Slurm cases (with --profile or --calibrate), none of the local sweeps")
    args = p.parse_args(argv)
    out = Path(args.json) if args.json else RESULTS / machine_name() / "predict_vs_measured.json"
    from dlrm_dist.hardware.profiles import load_profile

    load_start = list(os.getloadavg())
    profile_path = args.profile
    if args.calibrate_each or args.singles:
        singles = (json.loads(Path(args.singles).read_text())["cases"] if args.singles
                   else run_calibrated_cases(out.parent / "predict_vs_measured_profiles", args.calibrate_seconds))
        return finish(args, out, load_start, None, [], singles, "a profile per case, calibrated just before it")
    if args.calibrate or not profile_path:
        profile_path = str(out.parent / "profile.yaml")
        subprocess.run([sys.executable, "-m", "dlrm_dist.cli", "calibrate", "--output", profile_path],
                       cwd=ROOT, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    profile = load_profile(profile_path)
    if args.two_node_only:
        return finish(args, out, load_start, profile, [], [], profile_path)
    # the sweeps' own JSONs stay beside the result, so --measured can re-predict them later
    measured = ([json.loads(Path(f).read_text()) for f in args.measured.split(",") if f]
                or run_sweeps(out.parent / "predict_vs_measured_sweeps"))
    return finish(args, out, load_start, profile, measured, [], profile_path)


def finish(args: argparse.Namespace, out: Path, load_start: List[float], profile, measured: List[Dict[str, Any]],  # noqa: ANN001
           singles: List[Dict[str, Any]], profile_note: str) -> int:
    """Add the 2-node cases, predict every case, write the JSON and the plot, print the table."""
    cluster = two_node_cases([int(x) for x in args.link_mbits.split(",") if x], out.parent / "predict_vs_measured_profiles")
    rows = compare(measured, singles + cluster["cases"], profile)
    result = {"machine": machine_name(), **environment(), "load_average_at_start": load_start,
              "load_average_at_end": list(os.getloadavg()), "profile": profile_note,
              "profile_measured": profile.measured if profile else None,
              "measured_from": [m.get("command") for m in measured],
              "summary": summary(rows), "cases": rows, "skipped": cluster["skipped"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    if rows and not args.no_plots:
        result["plot"] = plot(rows, out.with_suffix(".png"))
    write_json(out, result)
    for r in rows:
        print(f"{r['name']:<34} measured {r['measured_samples_per_s_per_rank']:8.0f}  predicted "
              f"{r['predicted_samples_per_s_per_rank']:8.0f}  ratio {r['ratio_predicted_over_measured']:.2f}  "
              f"{r['predicted']['bottleneck']}")
    print(json.dumps(result["summary"]), "\nskipped:", [s["name"] for s in cluster["skipped"]], f"\nwritten to {out}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
