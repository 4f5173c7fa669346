"""One host x 2 ranks (torchx local_cwd) against 2 hosts x 1 rank (torchx slurm), same job.

    sudo launchers/local_slurm.sh up && eval "$(launchers/local_slurm.sh env)"
    python benchmarks/multihost.py [--config configs/smoke.yaml] [--json OUT] [section.key=value ...]
    sudo .venv/bin/python benchmarks/multihost.py --link-mbit 0,1000,100,20 --json OUT   # 2x1 per limit

Runs ``dist.ddp -j 1x2`` on local_cwd, then ``dist.ddp -j 2x1`` on the Slurm
cluster ``$SLURM_CONF`` points at (launchers/local_slurm.sh on one machine: the
two "hosts" share its cores, so this measures the cross-host path's overhead,
not a speed-up), and reports each run's summary.json figures (samples/s, AUC,
hosts) with the load average at the start and end of each run.

``--link-mbit N,M,...`` (root) runs the slurm 2x1 case once per link limit instead, setting
each with ``launchers/local_slurm.sh up --link-mbit N`` (0: unlimited) on the running cluster
and lifting it at the end: cross-host cost as the network shrinks. Add ``--with-local`` for
the local_cwd 1x2 case as well.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {"local_cwd 1x2": ("local_cwd", "1x2"), "slurm 2x1": ("slurm", "2x1")}


def run_case(scheduler: str, j: str, config: str, overrides: list, work: Path) -> dict:
    run_dir = work / f"{scheduler}-{j}"
    # One intra-op thread per rank in both cases: torchrun sets it only for nproc_per_node > 1,
    # so 2x1 ranks would otherwise each take every core (sbatch exports this environment).
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    proc = subprocess.run(
        ["torchx", "run", "--wait", "-s", scheduler, "dist.ddp", "-j", j, "-m", "dlrm_dist.train", "--",
         "--config", config, "--run-dir", str(run_dir), "metrics.progress_bar=false", *overrides],
        cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"multihost: {scheduler} {j} failed:\n{proc.stderr[-3000:]}")
    s = json.loads((run_dir / "summary.json").read_text())
    return {"scheduler": scheduler, "j": j, "wall_s": time.monotonic() - t0,
            "train_samples_per_s": s["train_samples_per_s"], "samples_per_s_per_rank": s["samples_per_s_per_rank"],
            "val_auc": s["val_auc"], "test_auc": s["test_auc"], "steps": s["steps"], "hosts": s["hosts"],
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def set_link(mbit: int) -> None:
    """Each node's link of the local cluster at ``mbit`` Mbit/s each way (0: unlimited)."""
    subprocess.run([str(ROOT / "launchers" / "local_slurm.sh"), "up", "--link-mbit", str(mbit)], check=True,
                   capture_output=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "smoke.yaml"))
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("overrides", nargs="*", help="section.key=value for both runs")
    p.add_argument("--link-mbit", default=None,
                   help="comma-separated link limits in Mbit/s (0: unlimited): the slurm 2x1 case at each")
    p.add_argument("--with-local", action="store_true", help="with --link-mbit: also the local_cwd 1x2 case")
    args = p.parse_args()
    if not os.environ.get("SLURM_CONF"):
        raise SystemExit('multihost: SLURM_CONF is unset: eval "$(launchers/local_slurm.sh env)" first')
    config = str(Path(args.config).resolve())
    with tempfile.TemporaryDirectory(prefix="multihost-") as work:
        if args.link_mbit is None:
            cases = [{"name": name, **run_case(s, j, config, args.overrides, Path(work))}
                     for name, (s, j) in CASES.items()]
        else:
            cases = [{"name": "local_cwd 1x2", **run_case("local_cwd", "1x2", config, args.overrides, Path(work))}
                     ] if args.with_local else []
            try:
                for mbit in [int(m) for m in args.link_mbit.split(",")]:
                    set_link(mbit)
                    (Path(work) / f"link{mbit}").mkdir()  # Slurm's job dir: its slurm-*.out per case
                    case = run_case("slurm", "2x1", config, args.overrides, Path(work) / f"link{mbit}")
                    cases.append({"name": f"slurm 2x1 link {mbit or 'unlimited'}", "link_mbit": mbit, **case})
            finally:
                set_link(0)
    result = {"config": args.config, "overrides": args.overrides, "cases": cases}
    for c in cases:
        print(f"{c['name']:<26} {c['train_samples_per_s']:8.0f} samples/s  val AUC {c['val_auc']:.5f}  "
              f"hosts {c['hosts']}  load {c['load_before']:.1f} -> {c['load_after']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
