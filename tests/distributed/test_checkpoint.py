"""Checkpoint and resume (dlrm_dist.checkpoint): exact resume, resharding to
another world size, and never resuming from a save that did not finish.

The 2-rank runs use the smoke config with tables table_wise except cat_0 and
cat_1, which are data_parallel: their optimizer state lives outside the fused
embedding optimizer (``embedding_dp``), the case that needs sharding types
pinned on resume.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict

import pytest
import torch

from dlrm_dist.checkpoint import LATEST, META, CheckpointError, Checkpointer, resolve_resume
from dlrm_dist.distributed import DistEnv
from tests.conftest import run_cmd

SMALL = [
    "--config", "configs/smoke.yaml", "data.val_samples=4096", "data.test_samples=4096",
    "metrics.progress_bar=false", "sharding.sharding_types=[table_wise]",
    "sharding.tables={cat_0: {sharding_types: [data_parallel]}, cat_1: {sharding_types: [data_parallel]}}",
]


def _train(run_dir: Path, *overrides: str, ranks: int = 2) -> dict:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    proc = run_cmd(launcher + ["-m", "dlrm_dist.train", "--run-dir", str(run_dir)] + SMALL + list(overrides),
                   timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((run_dir / "summary.json").read_text())


def _tensors(step_dir: Path, tmp: Path) -> Dict[str, torch.Tensor]:
    """Every tensor of a DCP checkpoint, whole (no process group needed)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp / f"{step_dir.parent.parent.name}-{step_dir.name}.pt"
    dcp_to_torch_save(step_dir, out)
    flat: Dict[str, torch.Tensor] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}/")
            else:
                flat[prefix + k] = v

    walk(torch.load(out, weights_only=False), "")
    return flat


def _assert_same_state(a: Path, b: Path, tmp: Path) -> None:
    ta, tb = _tensors(a, tmp), _tensors(b, tmp)
    assert set(ta) == set(tb)
    assert any(k.startswith("optim/state/embedding.") for k in ta)  # fused Adagrad state
    assert any(k.startswith("optim/state/embedding_dp.") for k in ta)  # data_parallel tables'
    assert any(k.startswith("optim/state/dense.") for k in ta)  # Adam on the MLPs
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=1e-6, msg=k)


@pytest.fixture(scope="module")
def half_run(tmp_path_factory) -> Path:
    """20 steps on 2 ranks, a checkpoint at the end."""
    run_dir = tmp_path_factory.mktemp("ckpt") / "half"
    summary = _train(run_dir, "train.max_steps=20", "train.checkpoint_at_end=true")
    assert summary["steps"] == 20
    return run_dir


def test_resume_is_exact(half_run: Path, tmp_path: Path):
    """40 steps straight == 20 steps, saved, resumed to 40: metrics and every tensor."""
    straight = tmp_path / "straight"
    s1 = _train(straight, "train.max_steps=40", "train.checkpoint_every=20", "train.keep_checkpoints=1")
    s2 = _train(half_run, "train.max_steps=40", "train.checkpoint_every=20", "train.resume=latest")
    assert s1["steps"] == s2["steps"] == 40
    for key in ("val_auc", "val_logloss", "test_auc", "test_logloss"):
        assert s1[key] == pytest.approx(s2[key], abs=1e-6), key
    _assert_same_state(straight / "checkpoints/step-40", half_run / "checkpoints/step-40", tmp_path)
    # keep_checkpoints=1 pruned step-20; the pointer names the newest.
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == [LATEST, "step-40"]
    assert (half_run / "checkpoints" / LATEST).read_text().strip() == "step-40"
    steps = [json.loads(l)["step"] for l in (half_run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 40 and 20 in steps  # the resumed run appended to the first one's metrics


def test_resume_on_one_rank_reshards_tables(half_run: Path, tmp_path: Path):
    """Saved on 2 ranks, loaded on 1: the plan keeps the saved sharding types and the
    loaded state (tables, fused and data_parallel optimizer state) equals the saved."""
    one = tmp_path / "one"
    summary = _train(one, "train.max_steps=20", "train.checkpoint_at_end=true",
                     f"train.resume={half_run / 'checkpoints/step-20'}",
                     "sharding.sharding_types=[]", "sharding.tables={}", ranks=1)
    assert summary["world_size"] == 1 and summary["steps"] == 20
    plan = (one / "plan.txt").read_text().split("\n\n")[0]
    assert "t_cat_0      data_parallel" in plan and "t_cat_2      table_wise" in plan
    meta = json.loads((one / "checkpoints/step-20" / META).read_text())
    assert meta["world_size"] == 1
    assert meta["sharding_types"] == json.loads((half_run / "checkpoints/step-20" / META).read_text())["sharding_types"]
    _assert_same_state(half_run / "checkpoints/step-20", one / "checkpoints/step-20", tmp_path)


# ----------------------------------------------------------- killed saves, bad paths


def _complete(d: Path, step: int) -> Path:
    (d / f"step-{step}").mkdir(parents=True)
    (d / f"step-{step}" / META).write_text(json.dumps({"step": step}))
    return d / f"step-{step}"


def test_latest_ignores_a_save_that_did_not_finish(tmp_path: Path):
    ckpts = tmp_path / "checkpoints"
    (ckpts / "step-20").mkdir(parents=True)  # killed during dcp.save: no meta.json, no pointer
    assert resolve_resume("latest", ckpts) is None  # a fresh start, not the half-written state
    assert resolve_resume("", ckpts) is None
    _complete(ckpts, 10)
    (ckpts / LATEST).write_text("step-10\n")
    assert resolve_resume("latest", ckpts) == ckpts / "step-10"
    with pytest.raises(CheckpointError, match="step-20.*not a complete checkpoint"):
        resolve_resume(str(ckpts / "step-20"), ckpts)
    with pytest.raises(CheckpointError, match=f"no checkpoint folder {tmp_path / 'nowhere'}"):
        resolve_resume(str(tmp_path / "nowhere"), ckpts)


def test_prune_keeps_the_newest_complete_ones(tmp_path: Path):
    env = DistEnv(0, 1, 0, 1, torch.device("cpu"), "gloo")
    for s in (10, 20, 30):
        _complete(tmp_path, s)
    (tmp_path / "step-25").mkdir()  # a killed save older than the newest
    (tmp_path / "step-40").mkdir()  # newer than the one just saved: left alone
    Checkpointer(tmp_path, keep=2, env=env, meta={})._prune(30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-20", "step-30", "step-40"]


def test_a_killed_save_is_replaced_and_a_missing_path_is_named(tmp_path: Path):
    """One process: resume=latest over a killed save starts fresh and writes that step
    again from scratch; a resume path that does not exist stops with its name."""
    run_dir = tmp_path / "run"
    partial = run_dir / "checkpoints/step-4"
    partial.mkdir(parents=True)
    (partial / "__0_0.distcp").write_text("half written")
    one = [sys.executable, "-m", "dlrm_dist.train", "--run-dir", str(run_dir)] + SMALL
    proc = run_cmd(one + ["train.max_steps=4", "train.checkpoint_at_end=true", "train.resume=latest"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "starting fresh" in proc.stderr
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 4
    assert (partial / META).is_file() and (partial / "__0_0.distcp").read_bytes() != b"half written"
    assert (run_dir / "checkpoints" / LATEST).read_text().strip() == "step-4"

    missing = tmp_path / "no-such/step-7"
    proc = run_cmd(one + [f"train.resume={missing}"], timeout=300)
    assert proc.returncode != 0
    assert f"no checkpoint folder {missing}" in proc.stderr
