"""The one-process check a restarting launcher runs before torchrun
(``python -m dlrm_dist.training.resume``): a checkpoint cut short or missing a
file stops the job before the first attempt, since torchrun would restart a
failed group whatever its exit code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dlrm_dist.training.integrity import describe
from dlrm_dist.training.resume import main
from tests.conftest import run_cmd


def _checkpoint(directory: Path, step: int) -> Path:
    path = directory / f"step-{step}"
    path.mkdir(parents=True)
    (path / "__0_0.distcp").write_bytes(b"\1" * 4096)
    (path / "rank-0.json").write_text("{}")
    files = describe(path, ["__0_0.distcp", "rank-0.json"])
    (path / "meta.json").write_text(json.dumps({"step": step, "files": files}))
    (directory / "latest").write_text(f"step-{step}\n")
    return path


def _args(run: Path, *overrides: str) -> list:
    return ["--config", "configs/smoke.yaml", "--run-dir", str(run), *overrides]


def test_whole_checkpoints_and_fresh_starts_pass(tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert main(_args(run, "train.resume=latest")) == 0  # no checkpoint yet: a fresh start
    assert main(["--config", "configs/smoke.yaml", "train.resume=latest"]) == 0  # no --run-dir: a new folder
    _checkpoint(run / "checkpoints", 8)
    assert main(_args(run, "train.resume=latest")) == 0
    assert main(_args(run)) == 0  # no resume asked
    assert capsys.readouterr().err == ""


def test_a_cut_or_missing_file_stops_before_torchrun(tmp_path: Path, capsys):
    run = tmp_path / "run"
    older = _checkpoint(run / "checkpoints", 8)
    newest = _checkpoint(run / "checkpoints", 16)
    (newest / "__0_0.distcp").write_bytes(b"\1" * 100)
    assert main(_args(run, "train.resume=latest")) == 0  # the ranks will fall back to step-8
    assert main(_args(run, f"train.resume={newest}")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"dlrm-dist train: error: checkpoint {newest} is damaged: __0_0.distcp is 100 bytes, "
                          "meta.json recorded 4096 (truncated)")
    (older / "rank-0.json").unlink()
    assert main(_args(run, "train.resume=latest")) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is damaged" in err and f"no older complete checkpoint in {run / 'checkpoints'} " \
        "is whole either" in err


def test_it_runs_as_a_module(tmp_path: Path):
    proc = run_cmd([sys.executable, "-m", "dlrm_dist.training.resume", *_args(tmp_path, "train.resume=/nowhere/step-3")],
                   timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "dlrm-dist train: error: train.resume: no checkpoint folder /nowhere/step-3"
