"""Checkpoint and resume (dlrm_dist.training.checkpoint): exact resume, resharding to
another world size, and never resuming from a save that did not finish.

Two setups, both with LR warm-up and decay on, each trained 40 steps straight
on 2 ranks (checkpoints at 20 and 40) and resumed from step 20 to 40:

- ``planner``: the shipped smoke config, sharding left to the planner. It gives
  the ranks different mixes of sharding types (table_column_wise on both, plus
  one table_wise table on one rank), so the ranks hold different numbers of
  optimizer param groups: each must restore its own schedule.
- ``dp``: cat_0 and cat_1 data_parallel (their optimizer state, torch Adagrad
  with its step counter, lives outside the fused optimizer: the case that needs
  sharding types pinned on resume).

The dense Adam's step counters are state DCP saves. FBGEMM's fused Adam, whose
step counter is in no state dict (``set_optimizer_step`` restores it), runs
only on GPUs ("Optimizer adam is not supported in CPU mode"): not tested here.

"Exact" means bit for bit: ``==`` on the metrics, ``torch.equal`` on every tensor.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from dlrm_dist.training.checkpoint import LATEST, META, CheckpointError, Checkpointer, resolve_resume
from dlrm_dist.training.distributed import DistEnv
from tests.conftest import run_cmd

BASE = [
    "--config", "configs/smoke.yaml", "data.val_samples=4096", "data.test_samples=4096",
    "metrics.progress_bar=false", "dist.device=cpu",  # 2 CPU ranks, on a GPU host too
    "optim.schedule.warmup_steps=10", "optim.schedule.decay_start_step=15", "optim.schedule.decay_steps=40",
]
SETUPS: Dict[str, List[str]] = {
    "planner": [],
    "dp": ["sharding.tables={cat_0: {sharding_types: [data_parallel]}, cat_1: {sharding_types: [data_parallel]}}"],
}
SUMMARY_KEYS = ("val_auc", "val_logloss", "val_accuracy", "test_auc", "test_logloss", "test_accuracy", "steps")


def _train(run_dir: Path, *overrides: str, ranks: int = 2, setup: str = "planner") -> dict:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    args = ["-m", "dlrm_dist.train", "--run-dir", str(run_dir)] + BASE + SETUPS[setup] + list(overrides)
    proc = run_cmd(launcher + args, timeout=300)
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


def assert_same_state(a: Path, b: Path, tmp: Path) -> Dict[str, torch.Tensor]:
    """Both checkpoints hold the same tensors, bit for bit."""
    ta, tb = _tensors(a, tmp), _tensors(b, tmp)
    assert set(ta) == set(tb)
    assert any(k.startswith("optim/state/embedding.") for k in ta)  # fused optimizer state
    assert any(k.startswith("optim/state/dense.") for k in ta)  # Adam on the MLPs
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"
    return ta


def _rank_states(step_dir: Path) -> List[dict]:
    return [json.loads(p.read_text()) for p in sorted(step_dir.glob("rank-*.json"))]


@pytest.fixture(scope="module", params=sorted(SETUPS))
def straight(request, tmp_path_factory) -> tuple:
    """40 steps on 2 ranks, checkpoints kept at 20 and 40."""
    run_dir = tmp_path_factory.mktemp("ckpt") / request.param
    summary = _train(run_dir, "train.max_steps=40", "train.checkpoint_every=20", "train.keep_checkpoints=0",
                     setup=request.param)
    assert summary["steps"] == 40
    return request.param, run_dir, summary


def test_resume_is_exact(straight: tuple, tmp_path: Path):
    """40 steps straight == resumed from its step-20 checkpoint to 40: metrics, every
    tensor, and each rank's own LR schedule and param groups."""
    setup, run_dir, s1 = straight
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(run_dir / "checkpoints/step-20", resumed / "checkpoints/step-20")
    (resumed / "checkpoints" / LATEST).write_text("step-20\n")
    s2 = _train(resumed, "train.max_steps=40", "train.checkpoint_every=20", "train.keep_checkpoints=1",
                "train.resume=latest", setup=setup)
    assert {k: s1[k] for k in SUMMARY_KEYS} == {k: s2[k] for k in SUMMARY_KEYS}
    assert_same_state(run_dir / "checkpoints/step-40", resumed / "checkpoints/step-40", tmp_path)
    saved = _rank_states(run_dir / "checkpoints/step-40")
    assert saved == _rank_states(resumed / "checkpoints/step-40")
    assert [s["lr_scheduler"]["last_epoch"] for s in saved] == [40, 40]
    # The schedule ran: warm-up reached the peak, decay brought it down (dense Adam: lr 0.002).
    assert saved[0]["param_groups"][-1]["lr"] < 0.002
    if setup == "planner":  # the ranks hold different param groups: the case rank 0's state alone broke
        plan = (run_dir / "plan.txt").read_text().split("\n\n")[0]
        assert "table_column_wise" in plan and " table_wise " in plan
        assert len({len(s["param_groups"]) for s in saved}) == 2
    # keep_checkpoints=1 pruned step-20; the pointer names the newest.
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == [LATEST, "step-40"]
    assert (resumed / "checkpoints" / LATEST).read_text().strip() == "step-40"


def test_resume_on_one_rank_reshards_tables(straight: tuple, tmp_path: Path):
    """Saved on 2 ranks, loaded on 1: the plan keeps the saved sharding types, the
    loaded state (tables, fused and data_parallel optimizer state) equals the saved,
    and the LR schedule, rebuilt from the step, gives the same LRs."""
    setup, run_dir, _ = straight
    if setup != "dp":
        pytest.skip("the data_parallel setup is the one whose sharding types must be pinned")
    one = tmp_path / "one"
    summary = _train(one, "train.max_steps=20", "train.checkpoint_at_end=true",
                     f"train.resume={run_dir / 'checkpoints/step-20'}", "sharding.tables={}", ranks=1, setup=setup)
    assert summary["world_size"] == 1 and summary["steps"] == 20
    plan = (one / "plan.txt").read_text().split("\n\n")[0]
    assert "t_cat_0      data_parallel" in plan
    meta = json.loads((one / "checkpoints/step-20" / META).read_text())
    assert meta["world_size"] == 1
    assert meta["sharding_types"] == json.loads((run_dir / "checkpoints/step-20" / META).read_text())["sharding_types"]
    state = assert_same_state(run_dir / "checkpoints/step-20", one / "checkpoints/step-20", tmp_path)
    assert any(k.startswith("optim/state/embedding_dp.") for k in state)  # data_parallel tables'
    lrs = lambda d: {lr for s in _rank_states(d) for lr in s["lr_scheduler"]["_last_lr"]}  # noqa: E731
    assert lrs(one / "checkpoints/step-20") == lrs(run_dir / "checkpoints/step-20")


def test_row_wise_and_column_wise_reshard_both_ways(tmp_path: Path):
    """cat_0 row_wise and cat_1 column_wise (the hand-built CPU plan), the rest table_wise:
    2 ranks -> 1 -> 2 reproduces the 2-rank run bit for bit, and 1 rank trains on."""
    pins = ["sharding.tables={cat_0: {sharding_types: [row_wise]}, cat_1: {sharding_types: [column_wise]}}"]
    a, b, c, d = (tmp_path / n for n in "abcd")
    sa = _train(a, "train.max_steps=20", "train.checkpoint_every=10", "train.keep_checkpoints=0", *pins)
    assert "t_cat_0      row_wise" in (a / "plan.txt").read_text()
    # 2 -> 1, no step: the 1-rank checkpoint holds exactly the 2-rank one
    _train(b, "train.max_steps=10", "train.checkpoint_at_end=true", f"train.resume={a / 'checkpoints/step-10'}", ranks=1)
    assert "t_cat_0      row_wise" in (b / "plan.txt").read_text()
    assert_same_state(a / "checkpoints/step-10", b / "checkpoints/step-10", tmp_path)
    # 1 -> 2, then 10 steps: the same as the 2-rank run that was never resharded
    sc = _train(c, "train.max_steps=20", "train.checkpoint_at_end=true", f"train.resume={b / 'checkpoints/step-10'}")
    assert {k: sa[k] for k in SUMMARY_KEYS} == {k: sc[k] for k in SUMMARY_KEYS}
    assert_same_state(a / "checkpoints/step-20", c / "checkpoints/step-20", tmp_path)
    # 2 -> 1, then 5 steps on 1 rank
    sd = _train(d, "train.max_steps=25", f"train.resume={a / 'checkpoints/step-20'}", ranks=1)
    assert sd["steps"] == 25 and sd["world_size"] == 1 and 0.0 < sd["val_logloss"] < 1.0


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
    one = [sys.executable, "-m", "dlrm_dist.train", "--run-dir", str(run_dir)] + BASE
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


# ------------------------------------------------- FBGEMM's step counter across evaluation


def test_fused_optimizer_counter_is_exact_across_evaluation_and_resume(tmp_path: Path):
    """row_wise Adagrad advances FBGEMM's ``iter`` on every forward, evaluation's too (on
    CPU as on GPU): with eval_every=4 it runs ahead of the step, and a run resumed
    from step 8 must reach step 16 with the uninterrupted run's counter, not one set
    from the step (the counter-based optimizers' bias correction reads it)."""
    run = ["optim.embedding.name=rowwise_adagrad", "optim.embedding.lr=0.05", "train.eval_every=4",
           "train.max_eval_batches=2", "train.max_steps=16", "train.checkpoint_every=8"]
    a, b = tmp_path / "straight", tmp_path / "resumed"
    sa = _train(a, *run, "train.keep_checkpoints=0")
    counters = lambda d: [s["fbgemm_iter"] for s in _rank_states(d)]  # noqa: E731
    at_8 = counters(a / "checkpoints/step-8")
    # 8 training forwards + 2 evaluations (after steps 4 and 8) of 2 batches each
    assert at_8 == [12, 12], at_8
    sb = _train(b, *run, f"train.resume={a / 'checkpoints/step-8'}")
    assert counters(b / "checkpoints/step-16") == counters(a / "checkpoints/step-16") == [16 + 6, 16 + 6]
    assert {k: sa[k] for k in SUMMARY_KEYS} == {k: sb[k] for k in SUMMARY_KEYS}
    assert_same_state(a / "checkpoints/step-16", b / "checkpoints/step-16", tmp_path)
