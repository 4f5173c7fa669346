"""The capacity planner against reality: the host memory it predicts per rank is
within 25% of the peak RSS the trainer measures (``summary.json``'s
``peak_rss_bytes``, the kernel's high-water mark) on CPU runs whose tables range
from ~60 MB to ~3.3 GB with their Adagrad state, one process and two ranks.

Each run is a real ``python -m dlrm_dist.train`` subprocess of 10 steps on
random data (cheap to generate, so the tables' memory is what varies), and the
sharding plan it wrote must be the one the capacity planner predicted from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List

import pytest

from dlrm_dist.planner import capacity as cap
from dlrm_dist.planner import host_check
from dlrm_dist.training.sharding import detect_capacity
from dlrm_dist.config import load_config
from dlrm_dist.training.sharding import describe_plan
from tests.conftest import ROOT, run_cmd

CONFIG = ROOT / "configs" / "smoke.yaml"
TOLERANCE = 0.25
COMMON = ["train.max_steps=10", "data.source=random", "data.val_samples=4096",
          "data.test_samples=4096", "metrics.progress_bar=false", "dist.device=cpu"]
CASES = {
    # rows per table, dim: 26 tables x rows x dim x 4 B, the same again for Adagrad
    "20k_rows_dim16": (["model.num_embeddings=20000"], 1),
    "200k_rows_dim32": (["model.num_embeddings=200000", "model.embedding_dim=32", "model.bottom_mlp=[64,32]"], 1),
    "1M_rows_dim16": (["model.num_embeddings=1000000"], 1),
    "200k_rows_dim32_2_ranks": (["model.num_embeddings=200000", "model.embedding_dim=32",
                                 "model.bottom_mlp=[64,32]"], 2),
}


def train(run_dir: Path, overrides: List[str], ranks: int) -> dict:
    if ranks == 1:
        launcher = [sys.executable, "-m", "dlrm_dist.train"]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={ranks}", "-m", "dlrm_dist.train"]
    proc = run_cmd(launcher + ["--config", str(CONFIG), "--run-dir", str(run_dir)] + overrides, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("case", list(CASES))
def test_predicted_host_memory_matches_peak_rss(case: str, tmp_path: Path) -> None:
    extra, ranks = CASES[case]
    overrides = COMMON + extra
    cfg = load_config(CONFIG, overrides)
    predicted = host_check.host_memory_by_rank(cfg, ranks, ranks, "cpu")
    summary = train(tmp_path / case, overrides, ranks)
    measured = summary["peak_rss_bytes_per_rank"]
    print(f"\n{case}: predicted {[round(p / 2**20) for p in predicted]} MiB, "
          f"measured peak RSS {[round(m / 2**20) for m in measured]} MiB")
    assert len(measured) == ranks
    for p, m in zip(predicted, measured):
        assert abs(p - m) <= TOLERANCE * m, (case, p, m)
    # ... and it predicted from the very plan the trainer made.
    model = cap.meta_model(cfg.model, cfg.optim.embedding)
    run = cap.run_planner(cfg, model, ranks, ranks, "cpu", *detect_capacity(cfg.sharding, "cpu", ranks))
    trained_plan = (tmp_path / case / "plan.txt").read_text()
    assert trained_plan.split("\n\n")[0] == describe_plan(run.plan).split("\n\n")[0]
