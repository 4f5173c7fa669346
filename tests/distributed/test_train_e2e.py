"""End to end: the README's main job through real launchers, and one-process runs."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path


from dlrm_dist.config import load_config
from tests.conftest import run_cmd

SUMMARY_KEYS = {
    "val_auc", "test_auc", "val_logloss", "steps", "world_size", "global_batch_size",
    "train_samples_per_s", "samples_per_s_per_rank", "peak_rss_bytes", "hosts",
}


def _check_run_dir(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary), SUMMARY_KEYS - set(summary)
    events = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert events and all("step" in e for e in events)
    assert {"train", "val", "test"} <= {e["event"] for e in events}
    plan = (run_dir / "plan.txt").read_text()
    assert all(f"t_cat_{i} " in plan for i in range(26)), "plan.txt must list every table"
    load_config(run_dir / "config.yaml")  # the resolved config loads again
    return summary


def test_torchx_two_ranks_learns_the_synthetic_teacher(tmp_path: Path):
    """The README's first command, minus the install: torchx dist.ddp, 2 gloo ranks, smoke config."""
    run_dir = tmp_path / "smoke"
    proc = run_cmd(
        ["torchx", "run", "-s", "local_cwd", "dist.ddp", "-j", "1x2", "-m", "dlrm_dist.train", "--",
         "--config", "configs/smoke.yaml", "--run-dir", str(run_dir), "metrics.progress_bar=false",
         "dist.device=cpu"],  # 2 CPU ranks, on a GPU host too
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = _check_run_dir(run_dir)
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 512
    assert summary["val_auc"] > 0.65, summary
    # The trained model gets within 0.05 of the ceiling: the teacher's own AUC on the same split.
    assert summary["teacher_val_auc"] - summary["val_auc"] < 0.05, summary
    assert len(summary["peak_rss_bytes_per_rank"]) == 2
    assert summary["hosts"] == [socket.gethostname()] * 2  # both ranks on this host


def test_torchrun_dcn_multi_hot_and_row_wise(tmp_path: Path):
    """DLRM-DCNv2 with multi-hot bags, tables forced row-wise (the hand-built CPU plan), under torchrun."""
    run_dir = tmp_path / "dcn"
    proc = run_cmd(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "dlrm_dist.train", "--config", "configs/smoke.yaml", "--run-dir", str(run_dir),
         "model.interaction=dcn", "model.dcn_num_layers=2", "model.dcn_low_rank_dim=16",
         "data.multi_hot_sizes=[3,2,1,2,6,1,1,1,1,7,3,8,1,6,9,5,1,1,1,12,10,7,10,3,1,1]",
         "sharding.sharding_types=[row_wise]", "train.max_steps=40", "train.eval_every=20",
         "data.val_samples=8192", "data.test_samples=8192", "metrics.progress_bar=false", "dist.device=cpu"],
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = _check_run_dir(run_dir)
    assert summary["steps"] == 40 and summary["world_size"] == 2
    assert summary["val_auc"] > 0.55, summary
    assert "row_wise" in (run_dir / "plan.txt").read_text()


def test_single_process_without_a_launcher(tmp_path: Path):
    """`dlrm-dist train` started by hand is a job of one rank."""
    run_dir = tmp_path / "one"
    proc = run_cmd(
        [sys.executable, "-m", "dlrm_dist.cli", "train", "--config", "configs/smoke.yaml", "--run-dir", str(run_dir),
         "train.max_steps=30", "data.val_samples=4096", "data.test_samples=4096", "metrics.progress_bar=false",
         "data.source=random"],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = _check_run_dir(run_dir)
    assert summary["world_size"] == 1 and summary["steps"] == 30
    assert 0.4 < summary["val_auc"] < 0.6, "random labels cannot be learned"


def test_refuses_to_start_when_the_host_lacks_memory(tmp_path: Path):
    """26 tables x 40M rows x 128 fp32 = 532 GB: stop at start-up with a clear message,
    not an hour later at the hands of the OOM killer."""
    run_dir = tmp_path / "huge"
    proc = run_cmd(
        [sys.executable, "-m", "dlrm_dist.train", "--config", "configs/smoke.yaml", "--run-dir", str(run_dir),
         "model.num_embeddings=40000000", "model.embedding_dim=128", "model.bottom_mlp=[64,128]",
         "dist.device=cpu"],  # host memory: the tables' home on a CPU job
        timeout=600,
    )
    assert proc.returncode != 0
    assert "not enough host memory" in proc.stderr and "GiB" in proc.stderr
    assert not (run_dir / "summary.json").exists()
