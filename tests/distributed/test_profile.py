"""train.profile_steps: a one-process run writes a Chrome trace under the run directory
and logs the top-ops table; here with train.pipeline=base, whose evaluation needs no detach."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import run_cmd


def test_profile_window_writes_a_trace_and_logs_top_ops(tmp_path: Path):
    run_dir = tmp_path / "run"
    proc = run_cmd(
        [sys.executable, "-m", "dlrm_dist.train", "--config", "configs/smoke.yaml", "--run-dir", str(run_dir),
         "train.max_steps=6", "train.profile_steps=[2,4]", "train.pipeline=base", "train.batch_size=64",
         "data.val_samples=256", "data.test_samples=256", "metrics.progress_bar=false", "metrics.log_every=3"],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    traces = list((run_dir / "profile").glob("rank0.*.pt.trace.json"))
    assert len(traces) == 1, list((run_dir / "profile").iterdir())
    events = json.loads(traces[0].read_text())["traceEvents"]
    names = {e.get("name", "") for e in events}
    steps = sorted(n for n in names if n.startswith("ProfilerStep#"))
    assert steps == ["ProfilerStep#0", "ProfilerStep#1"], steps  # steps 2 and 3: the window is [start, stop)
    assert "aten::addmm" in names  # the MLPs' GEMMs are in it
    log = proc.stdout + proc.stderr
    assert "profile of steps 2-3, top 25 ops" in log
    assert "Self CPU" in log and "aten::addmm" in log  # key_averages().table
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 6
