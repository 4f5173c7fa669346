"""End to end on Criteo-format data: raw TSV days -> preprocess -> 2-rank training.

The raw days come from ``dlrm-dist synth`` with the same config the training
uses (tables, seed, teacher), so a model trained through the whole Criteo path
(parser, npy days, memory-mapped loader, rank slices, last-day validation
split) must get close to the teacher's own AUC on the validation rows.

It trains the smoke config (26 x 100-row tables, batch 256 per rank) on two
training days of the same size as the smoke run's synthetic epoch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dlrm_dist.config import load_config, to_yaml
from tests.conftest import ROOT, run_cmd

ROWS_PER_DAY = 262144  # 2 training days: 1024 steps of 256 x 2 ranks; validation: 131072 rows


def test_synth_tsv_preprocess_and_train_two_ranks_reaches_the_teacher(tmp_path: Path):
    raw, npy, run_dir, config = tmp_path / "raw", tmp_path / "npy", tmp_path / "run", tmp_path / "config.yaml"
    config.write_text(to_yaml(load_config(ROOT / "configs" / "smoke.yaml", ["train.eval_every=0"])))
    steps = [
        [sys.executable, "-m", "dlrm_dist.cli", "synth", "--format", "tsv", "--days", "3",
         "--rows-per-day", str(ROWS_PER_DAY), "--output", str(raw), "--config", str(config)],
        [sys.executable, "-m", "dlrm_dist.cli", "preprocess", "--dataset", "criteo_1tb", "--input", str(raw),
         "--output", str(npy), "--workers", "2", "--no-progress"],
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "dlrm_dist.train", "--config", str(config), "--run-dir", str(run_dir),
         "data.source=criteo", f"data.path={npy}", "metrics.progress_bar=false", "dist.device=cpu"],
    ]
    for cmd in steps:
        proc = run_cmd(cmd, timeout=1200)
        assert proc.returncode == 0, f"{cmd[3:5]}\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
    teacher = json.loads((raw / "teacher.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["criteo_days"] == 3
    assert summary["steps"] == 2 * ROWS_PER_DAY // summary["global_batch_size"]
    assert summary["val_rows"] == teacher["val_rows"] == ROWS_PER_DAY // 2
    assert teacher["val_auc"] - summary["val_auc"] < 0.05, (teacher, summary)
    assert teacher["val_auc"] - summary["test_auc"] < 0.06, summary  # test rows: same distribution
