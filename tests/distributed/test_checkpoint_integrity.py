"""Damaged checkpoints (issue 17 §3) and a resumed run's metrics (§4), on 2 gloo ranks.

One run of the smoke config saves step-8 and step-16. Copies of it are then
damaged the ways a disk, a copy or a person does (bytes flipped in a table's
shard, a rank's ``.distcp`` cut to half, a rank's file deleted) and resumed:
the run stops before loading anything, with one line that names the
checkpoint, the file and what is wrong. ``resume=latest`` over a damaged
newest checkpoint falls back to the one before, says so, redoes the steps, and
its ``metrics.jsonl`` still holds each step once.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from dlrm_dist.training.integrity import HASH, file_digest
from tests.conftest import run_cmd

BASE = ["--config", "configs/smoke.yaml", "data.val_samples=2048", "data.test_samples=2048",
        "metrics.progress_bar=false", "metrics.log_every=4", "train.eval_every=8", "train.max_eval_batches=2",
        "train.max_steps=16", "train.checkpoint_every=8", "train.keep_checkpoints=0"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _train(run_dir: Path, *overrides: str, ranks: int = 2):
    launcher = TORCHRUN if ranks == 2 else [sys.executable]
    return run_cmd(launcher + ["-m", "dlrm_dist.train", "--run-dir", str(run_dir)] + BASE + list(overrides),
                   timeout=300)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("integrity") / "run"
    proc = _train(run_dir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir


def _copy(saved: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(saved, run_dir)
    return run_dir


def _shard(step: Path, rank: int) -> Path:
    (path,) = step.glob(f"__{rank}_*.distcp")
    return path


def test_meta_json_lists_every_file_with_size_and_checksum(saved: Path):
    step = saved / "checkpoints/step-16"
    meta = json.loads((step / "meta.json").read_text())
    on_disk = {p.name for p in step.iterdir()} - {"meta.json"}
    assert set(meta["files"]) == on_disk  # every file, .metadata and config.yaml included
    assert {".metadata", "config.yaml", "rank-0.json", "rank-1.json"} <= on_disk
    assert _shard(step, 0).name in on_disk and _shard(step, 1).name in on_disk
    assert meta["hash"] == HASH
    for name, entry in meta["files"].items():
        assert entry == {"bytes": (step / name).stat().st_size, HASH: file_digest(step / name)}, name


def _flip(path: Path) -> str:
    """64 KiB of flipped bytes in the middle of the file (or all of it, if smaller)."""
    data = bytearray(path.read_bytes())
    lo = max(0, len(data) // 2 - 32768)
    hi = min(len(data), lo + 65536)
    data[lo:hi] = bytes(b ^ 0xFF for b in data[lo:hi])
    path.write_bytes(bytes(data))
    return "has checksum"


def _truncate(path: Path) -> str:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    return f"is {size // 2} bytes, meta.json recorded {size} (truncated)"


def _delete(path: Path) -> str:
    path.unlink()
    return "is missing"


DAMAGE = {  # name: (which file of step-16, what to do)
    "flipped_table_shard": (lambda step: _shard(step, 1), _flip),
    "truncated_shard": (lambda step: _shard(step, 1), _truncate),
    "missing_shard": (lambda step: _shard(step, 0), _delete),
    "missing_rank_state": (lambda step: step / "rank-1.json", _delete),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_checkpoint_stops_the_resume_by_name(saved: Path, tmp_path: Path, damage: str):
    """Resumed by path on the world size it was saved on: one error line naming the
    checkpoint, the file and the fault; nothing loaded (no resumed line), no trace of
    DCP's CheckpointException."""
    run_dir = _copy(saved, tmp_path)
    step = run_dir / "checkpoints/step-16"
    pick, harm = DAMAGE[damage]
    target = pick(step)
    what = harm(target)
    proc = _train(run_dir, f"train.resume={step}", "train.max_steps=20")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "dlrm-dist train: error:" in line]
    assert len(errors) == 1, proc.stderr[-4000:]
    assert f"checkpoint {step} is damaged: {target.name} {what}" in errors[0], errors[0]
    assert "retrying will not help" in errors[0]
    assert "resumed from" not in proc.stderr and "CheckpointException" not in proc.stderr


def test_one_process_resume_exits_2_with_one_line(saved: Path, tmp_path: Path):
    """Saved on 2 ranks, resumed on 1 (tables reshard, rank files are not read): the
    flipped table shard still stops it, with exit code 2 and a single stderr line."""
    run_dir = _copy(saved, tmp_path)
    step = run_dir / "checkpoints/step-16"
    _flip(_shard(step, 0))
    proc = _train(run_dir, f"train.resume={step}", "train.max_steps=20", ranks=1)
    assert proc.returncode == 2, proc.stderr[-4000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"dlrm-dist train: error: checkpoint {step} is damaged: {_shard(step, 0).name} "
                                "has checksum"), proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr


def _events(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_latest_falls_back_past_damage_and_metrics_read_as_one_run(saved: Path, tmp_path: Path):
    """resume=latest, step-16 damaged: the run says so, moves it aside, resumes from
    step-8, saves a sound step-16; metrics.jsonl holds every step once (the first
    attempt's steps 9..16 in metrics-superseded.jsonl), and the redone curve equals the
    first (resume is exact)."""
    run_dir = _copy(saved, tmp_path)
    ckpts = run_dir / "checkpoints"
    shard = _shard(ckpts / "step-16", 0)
    what = _truncate(shard)
    first = _events(run_dir / "metrics.jsonl")
    proc = _train(run_dir, "train.resume=latest")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"checkpoint {ckpts / 'step-16'} is damaged: {shard.name} {what}" in proc.stderr
    assert f"resuming from {ckpts / 'step-8'} instead" in proc.stderr
    assert f"resumed from {ckpts / 'step-8'} at step 8" in proc.stderr
    aside = [p.name for p in ckpts.iterdir() if p.name.startswith("step-16.damaged-")]
    assert len(aside) == 1
    assert (ckpts / "latest").read_text().strip() == "step-16"
    meta = json.loads((ckpts / "step-16/meta.json").read_text())
    assert all(file_digest(ckpts / "step-16" / n) == e[HASH] for n, e in meta["files"].items())

    events = _events(run_dir / "metrics.jsonl")
    for kind in ("train", "val", "test"):
        steps = [e["step"] for e in events if e["event"] == kind]
        assert steps == sorted(set(steps)), (kind, steps)  # one curve: each step once, in order
    assert [e["step"] for e in events if e["event"] == "train"] == [4, 8, 12, 16]
    resume = [e for e in events if e["event"] == "resume"]
    assert len(resume) == 1 and resume[0]["step"] == 8 and resume[0]["checkpoint"] == str(ckpts / "step-8")
    superseded = _events(run_dir / "metrics-superseded.jsonl")
    assert {e["step"] for e in superseded} == {12, 16} and all(e["superseded_at_resume"] == 8 for e in superseded)
    assert len(superseded) == sum(1 for e in first if e["step"] > 8)
    loss = lambda evs: {e["step"]: e["loss"] for e in evs if e["event"] == "train"}  # noqa: E731
    assert loss(events) == loss(first)  # the redone steps give the same losses


def test_a_cut_checkpoint_is_not_retried_under_restarts(saved: Path, tmp_path: Path):
    """The issue's case: one rank's .distcp cut to half, resumed under the restarting
    torchx component. The check before torchrun stops the job: one error line, no
    rank started, no attempt retried."""
    run_dir = _copy(saved, tmp_path)
    step = run_dir / "checkpoints/step-16"
    shard = _shard(step, 1)
    what = _truncate(shard)
    cmd = ["torchx", "run", "-s", "local_cwd", "launchers/dlrm.py:train", "-j", "1x2", "--max_restarts", "2",
           "--", "--run-dir", str(run_dir)] + BASE + [f"train.resume={step}", "train.max_steps=20"]
    proc = run_cmd(cmd, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    errors = [line for line in out.splitlines() if "dlrm-dist train: error:" in line]
    assert len(errors) == 1 and f"checkpoint {step} is damaged: {shard.name} {what}" in errors[0], out[-4000:]
    assert "will restart worker group" not in out and "[rank 0]" not in out  # torchrun never started
