"""``dlrm-dist synth --format tsv``: raw Criteo-format days from the synthetic teacher."""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc

from criteo_text import reference_parse
from dlrm_dist.prep import preprocess, synth_tsv
from dlrm_dist.core.teacher import Teacher

LINE = re.compile(r"[01](\t-?\d+){13}(\t[0-9a-f]{8}){26}")


def synth(out, *extra: str) -> None:
    assert synth_tsv.main(["--format", "tsv", "--days", "3", "--rows-per-day", "1001", "--output", str(out),
                           "--seed", "5", *extra]) == 0


def test_days_are_criteo_lines_holding_the_teachers_samples(tmp_path):
    synth(tmp_path, "--num-embeddings", "5000")
    teacher = Teacher([5000] * 26, seed=5)
    for day in range(3):
        lines = (tmp_path / f"day_{day}").read_text().splitlines()
        assert len(lines) == 1001 and all(LINE.fullmatch(line) for line in lines)
        labels, dense, ids = reference_parse(lines)
        want = teacher.draw(100 + day, 0, 1001)
        np.testing.assert_array_equal(labels, want.labels)
        np.testing.assert_array_equal(dense, want.dense_raw)
        np.testing.assert_array_equal(ids, want.sparse)
    assert (dense < 0).any()  # Criteo-like small negatives are there


def test_teacher_json_reports_the_auc_on_the_validation_half_of_the_last_day(tmp_path):
    synth(tmp_path, "--num-embeddings", "5000")
    info = json.loads((tmp_path / "teacher.json").read_text())
    assert info["val_rows"] == 501 and info["val_day"] == 2  # ceil(1001 / 2), as the loader splits
    labels, _, _ = reference_parse((tmp_path / "day_2").read_text().splitlines()[:501])
    s = Teacher([5000] * 26, seed=5).draw(102, 0, 501)
    np.testing.assert_array_equal(labels, s.labels)
    expected = float(binary_auroc(torch.from_numpy(s.logits), torch.from_numpy(labels)))
    assert abs(info["val_auc"] - expected) < 1e-6 and 0.6 < info["val_auc"] < 1.0


def test_gzip_days_hold_the_same_text_and_preprocess_reads_them(tmp_path):
    synth(tmp_path / "plain")
    synth(tmp_path / "gz", "--gzip")
    for day in range(3):
        assert gzip.decompress((tmp_path / "gz" / f"day_{day}.gz").read_bytes()) == \
            (tmp_path / "plain" / f"day_{day}").read_bytes()
    assert preprocess.main(["--dataset", "criteo_1tb", "--input", str(tmp_path / "gz"), "--output",
                            str(tmp_path / "npy"), "--workers", "1", "--no-progress"]) == 0
    assert json.loads((tmp_path / "npy" / "manifest.json").read_text())["rows_per_day"] == [1001] * 3


def test_config_sets_table_sizes_and_seed(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  seed: 9\nmodel:\n  num_embeddings_per_feature: [" + ", ".join(
        str(10 + f) for f in range(26)) + "]\n")
    assert synth_tsv.main(["--format", "tsv", "--days", "2", "--rows-per-day", "300", "--output",
                           str(tmp_path / "d"), "--config", str(cfg)]) == 0
    info = json.loads((tmp_path / "d" / "teacher.json").read_text())
    assert info["seed"] == 9 and info["table_sizes"] == [10 + f for f in range(26)]
    ids = reference_parse((tmp_path / "d" / "day_0").read_text().splitlines())[2]
    assert (ids.max(axis=0) < np.arange(10, 36)).all()
