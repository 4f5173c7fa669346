"""A resumed run's metrics read as one run (issue 17 §4): the sink moves what earlier
attempts logged after the resumed checkpoint aside, and `dlrm-dist report` draws one
curve even from a file written before it did."""

from __future__ import annotations

import json
from pathlib import Path

from dlrm_dist.training.metrics import METRICS, SUPERSEDED, supersede
from dlrm_dist.training.report import one_curve


def _write(run: Path, events: list, tail: str = "") -> None:
    run.mkdir(exist_ok=True)
    (run / METRICS).write_text("".join(json.dumps(e) + "\n" for e in events) + tail)


def _read(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_events_after_the_checkpoint_move_aside(tmp_path: Path):
    """Checkpoint of step 256 saved at t=100, after its train and val events; the
    attempt went on to 320 and ended with a torn line. Kept: up to 256; moved: 320,
    and the final evaluation at 256 of an attempt that ended there (logged after the save)."""
    saved_at = 100.0
    events = [{"event": "train", "step": 192, "time": 50.0, "loss": 0.5},
              {"event": "train", "step": 256, "time": 98.0, "loss": 0.4},
              {"event": "val", "step": 256, "time": 99.0, "auc": 0.7},
              {"event": "test", "step": 256, "time": 101.0, "auc": 0.7},
              {"event": "train", "step": 320, "time": 120.0, "loss": 0.3}]
    _write(tmp_path, events, tail='{"event": "train", "st')
    assert supersede(tmp_path, 256, saved_at) == 3
    assert _read(tmp_path / METRICS) == events[:3]
    moved = _read(tmp_path / SUPERSEDED)
    assert [e.get("step") for e in moved] == [256, 320, None]
    assert all(e["superseded_at_resume"] == 256 for e in moved)
    assert moved[2]["unreadable_line"] == '{"event": "train", "st'
    assert supersede(tmp_path, 256, saved_at) == 0  # nothing left to move: the file is one run


def test_without_a_save_time_only_later_steps_move(tmp_path: Path):
    events = [{"event": "train", "step": s, "time": float(s)} for s in (8, 16, 24)]
    _write(tmp_path, events)
    assert supersede(tmp_path, 16) == 1
    assert [e["step"] for e in _read(tmp_path / METRICS)] == [8, 16]
    assert supersede(tmp_path / "no-run-yet", 16) == 0


def test_report_draws_an_old_resumed_file_as_one_curve():
    """Written before the sink moved anything: train 64..320, then the resumed attempt
    from 192 logs 256 and 320 again. The later attempt's points win."""
    first = [{"event": "train", "step": s, "loss": 1.0} for s in (64, 128, 192, 256, 320)]
    again = [{"event": "train", "step": s, "loss": 2.0} for s in (256, 320, 384)]
    curve = one_curve(first + again)
    assert [(e["step"], e["loss"]) for e in curve] == [(64, 1.0), (128, 1.0), (192, 1.0), (256, 2.0), (320, 2.0),
                                                       (384, 2.0)]
    assert one_curve([{"event": "val", "step": 8, "superseded_at_resume": 4}]) == []
