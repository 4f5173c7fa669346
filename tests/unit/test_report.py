"""`dlrm-dist report`: a table of finished runs, a plot, unfinished runs called out."""

from __future__ import annotations

import json
from pathlib import Path

from dlrm_dist.training import report


def _run(folder: Path, auc: float, finished: bool = True) -> Path:
    folder.mkdir()
    events = [{"event": "train", "step": s, "loss": 0.6 - s / 1000} for s in (10, 20, 30)]
    events += [{"event": "val", "step": 30, "auc": auc, "logloss": 0.5, "accuracy": 0.7}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if finished:
        summary = {"val_auc": auc, "test_auc": auc - 0.01, "val_logloss": 0.5, "steps": 30, "world_size": 2,
                   "global_batch_size": 512, "samples_per_s_per_rank": 1234.5, "peak_rss_bytes": 300 * 2**20,
                   "teacher_val_auc": 0.88}
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_table_and_plot(tmp_path: Path, capsys):
    a, b = _run(tmp_path / "a", 0.8512), _run(tmp_path / "b", 0.7001)
    png = tmp_path / "r.png"
    assert report.main([str(a), str(b), "--output", str(png)]) == 0
    out = capsys.readouterr().out
    assert "0.8512" in out and "0.7001" in out and "1,234" in out and "300" in out
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_unfinished_run_is_reported_and_fails(tmp_path: Path, capsys):
    done, crashed = _run(tmp_path / "done", 0.8), _run(tmp_path / "crashed", 0.8, finished=False)
    assert report.main([str(done), str(crashed), "--no-plot"]) == 1
    assert "unfinished (no summary.json)" in capsys.readouterr().out


def test_bad_metrics_line_names_file_and_line(tmp_path: Path, capsys):
    run = _run(tmp_path / "r", 0.8)
    with open(run / "metrics.jsonl", "a") as f:
        f.write("{half a line\n")
    assert report.main([str(run), "--no-plot"]) == 2
    assert f"{run / 'metrics.jsonl'}:5: not a JSON object" in capsys.readouterr().err
