"""``dlrm-dist preprocess``: raw Criteo TSV -> npy days, as a user runs it."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest

from criteo_text import load_day, random_lines, reference_parse, write_lines
from dlrm_dist.prep import preprocess
from dlrm_dist.data.batches import dense_transform
from dlrm_dist.prep.criteo_tsv import ParseSpec, check_line, parse_block
from dlrm_dist.prep.npy_stream import NpyStreamWriter
from dlrm_dist.core.criteo import log_plus3_transform

REPO = Path(__file__).resolve().parents[2]


def run_preprocess(raw: Path, out: Path, *extra: str, dataset: str = "criteo_1tb") -> int:
    return preprocess.main(["--dataset", dataset, "--input", str(raw), "--output", str(out),
                            "--workers", "1", "--no-progress", *extra])


def assert_day_matches(out: Path, day: int, lines: List[str], max_ind_range: int = 0) -> None:
    labels, dense_raw, sparse = reference_parse(lines)
    dense, sparse_out, labels_out = load_day(out, day)
    assert dense.dtype == np.float32 and dense.shape == (len(lines), 13)
    assert labels_out.dtype == np.int32 and labels_out.shape == (len(lines), 1)
    assert sparse_out.shape == (len(lines), 26)
    np.testing.assert_array_equal(labels_out[:, 0], labels)
    np.testing.assert_array_equal(dense, dense_transform(dense_raw))
    np.testing.assert_array_equal(sparse_out, sparse % max_ind_range if max_ind_range else sparse)


def test_fast_parser_equals_reference_parser_on_random_lines():
    lines = random_lines(4000, seed=1)
    block = "".join(line + "\n" for line in lines).encode()
    parsed = parse_block(block, ParseSpec())
    labels, dense_raw, sparse = reference_parse(lines)
    np.testing.assert_array_equal(parsed.labels[:, 0], labels)
    np.testing.assert_array_equal(parsed.dense, dense_transform(dense_raw))
    np.testing.assert_array_equal(parsed.sparse, sparse)
    assert parsed.sparse.dtype == np.int64
    hashed = parse_block(block, ParseSpec(max_ind_range=1000))
    assert hashed.sparse.dtype == np.int32  # ids below 1000 fit
    np.testing.assert_array_equal(hashed.sparse, sparse % 1000)
    assert all(check_line(line.encode()) is None for line in lines)


def test_terabyte_days_plain_gz_and_uneven_sizes(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "npy"
    raw.mkdir()
    days = [random_lines(n, seed=10 + i) for i, n in enumerate([700, 13, 1500])]
    for i, lines in enumerate(days):
        write_lines(raw / (f"day_{i}.gz" if i == 1 else f"day_{i}"), lines)
    # a small block size so days span many blocks
    assert run_preprocess(raw, out, "--block-mb", "0.05", "--max-ind-range", "40000000") == 0
    for i, lines in enumerate(days):
        assert_day_matches(out, i, lines, max_ind_range=40_000_000)
        assert np.load(out / f"day_{i}_sparse.npy").dtype == np.int32
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows_per_day"] == [700, 13, 1500]
    assert manifest["skipped_lines_per_day"] == [0, 0, 0]
    assert manifest["max_ind_range"] == 40_000_000 and manifest["dense_transform"] == "log1p"
    assert manifest["version"]
    for day in manifest["days"]:
        for meta in day["files"].values():
            assert hashlib.sha256((out / meta["name"]).read_bytes()).hexdigest() == meta["sha256"]
    # what TorchRec's loader does with the files: header-only shape and a memory-mapped range
    from torchrec.datasets.criteo import BinaryCriteoUtils

    assert BinaryCriteoUtils.get_shape_from_npy(str(out / "day_2_dense.npy")) == (1500, 13)
    rows = BinaryCriteoUtils.load_npy_range(str(out / "day_2_sparse.npy"), 100, 5, mmap_mode=True)
    np.testing.assert_array_equal(rows, reference_parse(days[2][100:105])[2] % 40_000_000)


def test_stream_writer_gives_a_standard_npy(tmp_path):
    blocks = [np.arange(6 * i, 6 * i + 6, dtype=np.int64).reshape(2, 3) for i in range(5)]
    writer = NpyStreamWriter(tmp_path / "a.npy", np.int64, 3)
    for b in blocks:
        writer.append(b)
    assert writer.close() == 10
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.concatenate(blocks))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy", mmap_mode="r")[9], [27, 28, 29])


BAD_LINES = {
    "too few fields": lambda f: f[:-1],
    "too many fields": lambda f: f + ["0"],
    "non-hex categorical": lambda f: f[:20] + ["zz12ab34"] + f[21:],
    "categorical longer than 16 digits": lambda f: f[:20] + ["1" * 17] + f[21:],
    "non-integer dense": lambda f: f[:3] + ["1.5"] + f[4:],
    "hex in a dense field": lambda f: f[:3] + ["0x1f"] + f[4:],  # pyarrow alone would accept it
    "space in a dense field": lambda f: f[:3] + [" 5"] + f[4:],  # ... and this
    "label not 0/1": lambda f: ["2"] + f[1:],
    "empty label": lambda f: [""] + f[1:],
    "empty line": lambda f: [],
}
REASONS = {"too few fields": "got 39", "too many fields": "got 41", "non-hex categorical": "C7",
           "categorical longer than 16 digits": "C7", "non-integer dense": "I3",
           "hex in a dense field": "I3", "space in a dense field": "I3", "label not 0/1": "label",
           "empty label": "label", "empty line": "got 1"}


def corrupt(line: str, kind: str) -> str:
    return "\t".join(BAD_LINES[kind](line.split("\t")))


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_bad_line_stops_with_file_and_line_and_leaves_no_partial_day(tmp_path, capsys, kind):
    raw, out = tmp_path / "raw", tmp_path / "npy"
    raw.mkdir()
    write_lines(raw / "day_0", random_lines(50, seed=2))
    lines = random_lines(400, seed=3)
    lines[299] = corrupt(lines[299], kind)  # line 300, in a later block
    write_lines(raw / "day_1.gz", lines)
    assert run_preprocess(raw, out, "--block-mb", "0.01") == 2
    err = capsys.readouterr().err
    assert f"{raw / 'day_1.gz'}, line 300: " in err and REASONS[kind] in err
    assert "Traceback" not in err
    assert not list(out.glob("day_1*")) and not list(out.glob(".*partial"))
    assert not (out / "manifest.json").exists()
    assert (out / "day_0.done.json").exists()  # the good day is kept, complete


def test_skip_policy_counts_and_drops_every_kind_of_bad_line(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "npy"
    raw.mkdir()
    lines = random_lines(600, seed=4)
    bad_at = {}
    for i, kind in enumerate(sorted(BAD_LINES)):
        at = 17 + 53 * i
        lines[at] = corrupt(lines[at], kind)
        bad_at[at + 1] = kind
    write_lines(raw / "day_0", lines)
    write_lines(raw / "day_1", random_lines(30, seed=5))
    assert run_preprocess(raw, out, "--on-bad-line", "skip", "--block-mb", "0.02") == 0
    good = [line for i, line in enumerate(lines) if i + 1 not in bad_at]
    assert_day_matches(out, 0, good)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped_lines_per_day"] == [len(BAD_LINES), 0]
    assert manifest["rows_per_day"] == [600 - len(BAD_LINES), 30]
    examples = manifest["days"][0]["bad_line_examples"]
    assert [e["line"] for e in examples] == sorted(bad_at)
    assert all(REASONS[bad_at[e["line"]]] in e["reason"] for e in examples)


def test_kaggle_train_txt_splits_into_seven_days_by_line_order(tmp_path):
    folder, out = tmp_path / "kaggle", tmp_path / "npy"
    folder.mkdir()
    lines = random_lines(100, seed=6)  # 100 = 7 * 14 + 2: the first two days get 15
    write_lines(folder / "train.txt", lines)
    (folder / "test.txt").write_text("unlabeled\tgarbage\n")  # must never be read
    rc = preprocess.main(["--dataset", "criteo_kaggle", "--input", str(folder), "--output", str(out),
                          "--workers", "2", "--no-progress"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows_per_day"] == [15, 15, 14, 14, 14, 14, 14]
    start = 0
    for day, n in enumerate(manifest["rows_per_day"]):
        assert_day_matches(out, day, lines[start:start + n])
        start += n


def test_kaggle_bad_line_is_named_by_its_line_in_train_txt_and_parallel_workers_stop(tmp_path, capsys):
    lines = random_lines(70, seed=7)
    lines[44] = corrupt(lines[44], "label not 0/1")  # line 45 is in day 4 (lines 41-50)
    write_lines(tmp_path / "train.txt", lines)
    out = tmp_path / "npy"
    assert run_preprocess(tmp_path / "train.txt", out, "--workers", "3", dataset="criteo_kaggle") == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'train.txt'}, line 45: label must be 0 or 1" in err and "Traceback" not in err
    assert not list(out.glob("day_4*")) and not list(out.glob(".*partial"))
    assert not (out / "manifest.json").exists()


def test_rerun_with_skip_after_a_bad_line_keeps_the_days_already_done(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "npy"
    raw.mkdir()
    write_lines(raw / "day_0", random_lines(60, seed=11))
    bad = random_lines(60, seed=12)
    bad[9] = corrupt(bad[9], "too few fields")
    write_lines(raw / "day_1", bad)
    assert run_preprocess(raw, out) == 2
    day0 = (out / "day_0_sparse.npy").stat().st_mtime_ns
    capsys.readouterr()
    assert run_preprocess(raw, out, "--on-bad-line", "skip") == 0
    assert "1 of 2 days already done" in capsys.readouterr().out
    assert (out / "day_0_sparse.npy").stat().st_mtime_ns == day0
    assert json.loads((out / "manifest.json").read_text())["skipped_lines_per_day"] == [0, 1]
    assert run_preprocess(raw, out) == 2  # under error again, the day that skipped a line stops the run


def test_verify_rechecks_checksums_and_redoes_a_corrupted_day(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "npy"
    raw.mkdir()
    for i in range(2):
        write_lines(raw / f"day_{i}", random_lines(50, seed=13 + i))
    assert run_preprocess(raw, out) == 0
    good = (out / "day_1_dense.npy").read_bytes()
    with open(out / "day_1_dense.npy", "r+b") as f:  # same size, one byte flipped
        f.seek(200)
        f.write(bytes([good[200] ^ 1]))
    capsys.readouterr()
    assert run_preprocess(raw, out, "--verify") == 0
    assert "1 of 2 days already done" in capsys.readouterr().out
    assert (out / "day_1_dense.npy").read_bytes() == good


def test_rerun_skips_finished_days_and_redoes_days_with_other_settings(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "npy"
    raw.mkdir()
    for i in range(2):
        write_lines(raw / f"day_{i}", random_lines(40, seed=8 + i))
    assert run_preprocess(raw, out) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("day_*.npy")}
    capsys.readouterr()
    assert run_preprocess(raw, out) == 0
    assert "2 of 2 days already done" in capsys.readouterr().out
    assert before == {p.name: p.stat().st_mtime_ns for p in out.glob("day_*.npy")}
    assert run_preprocess(raw, out, "--max-ind-range", "1000") == 0
    assert np.load(out / "day_0_sparse.npy").max() < 1000
    assert json.loads((out / "manifest.json").read_text())["max_ind_range"] == 1000


def test_killed_run_then_rerun_is_byte_identical_to_an_uninterrupted_run(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):
        write_lines(raw / f"day_{i}", random_lines(400, seed=20 + i))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run_preprocess(raw, whole) == 0
    # ~2 KB blocks with a pause after each: a day takes ~1 s, so the kill lands mid-day 1
    cmd = [sys.executable, "-m", "dlrm_dist.cli", "preprocess", "--dataset", "criteo_1tb", "--input", str(raw),
           "--output", str(killed), "--workers", "1", "--no-progress", "--block-mb", "0.002",
           "--block-delay", "0.02"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not ((killed / "day_0.done.json").exists() and list(killed.glob(".day_1_*.partial"))):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(killed.glob("day_1_*.npy")) and not (killed / "manifest.json").exists()
    assert run_preprocess(raw, killed) == 0
    names = sorted(p.name for p in whole.iterdir() if not p.name.startswith("."))
    assert names == sorted(p.name for p in killed.iterdir() if not p.name.startswith("."))
    assert "manifest.json" in names and "day_2_sparse.npy" in names
    for name in names:
        assert (whole / name).read_bytes() == (killed / name).read_bytes(), name
    assert not list(killed.glob(".*partial"))


def test_log_plus3_transform_is_finite_and_matches_log_x_plus_3():
    raw = np.array([[-5, -3, -2, -1, 0, 1, 10, 10**9, 0, 0, 0, 0, 0]])
    out = log_plus3_transform(raw)
    assert np.isfinite(out).all() and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 2:8], np.log(raw[0, 2:8] + 3.0), rtol=1e-6)
    assert out[0, 0] == out[0, 1] == 0.0  # x + 3 < 1 clamps to log(1)


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    assert run_preprocess(tmp_path / "nope", tmp_path / "npy") == 2
    assert "nope" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run_preprocess(tmp_path / "empty", tmp_path / "npy") == 2
    assert "no day_0" in capsys.readouterr().err


def test_log1p_transform_is_exactly_the_float64_log_rounded_once():
    raw = np.concatenate([np.arange(-3, 70_000), np.random.default_rng(0).integers(0, 2**40, 5000)])
    raw = np.resize(raw, (len(raw) // 13, 13))
    np.testing.assert_array_equal(dense_transform(raw), np.log1p(np.maximum(raw, 0)).astype(np.float32))


def test_binary_garbage_is_refused_with_a_message(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "day_0").write_bytes(bytes(range(256)).replace(b"\n", b"") * 200)  # 51 KB, no newline
    assert run_preprocess(raw, tmp_path / "npy", "--block-mb", "0.001") == 2
    err = capsys.readouterr().err
    assert "line 1: longer than" in err and "Criteo TSV" in err and "Traceback" not in err


def test_days_split_over_nodes_equal_a_one_host_run_and_the_last_node_writes_the_manifest(tmp_path, capsys):
    """--nnodes 2 --node-rank R: each node converts its share of days into the shared folder;
    the first to finish leaves manifest.json to the other; the result is the one-host run's bytes."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):
        write_lines(raw / f"day_{i}", random_lines(150, seed=40 + i))
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert run_preprocess(raw, whole) == 0
    assert run_preprocess(raw, split, "--nnodes", "2", "--node-rank", "1") == 0
    assert sorted(p.name for p in split.glob("day_*.npy")) == [f"day_1_{k}.npy" for k in ("dense", "labels", "sparse")]
    assert not (split / "manifest.json").exists()
    assert "days [0, 2] are other nodes' share" in capsys.readouterr().out
    assert run_preprocess(raw, split, "--nnodes", "2", "--node-rank", "0") == 0
    names = sorted(p.name for p in whole.iterdir() if not p.name.startswith("."))
    assert names == sorted(p.name for p in split.iterdir() if not p.name.startswith("."))
    for name in names:
        assert (whole / name).read_bytes() == (split / name).read_bytes(), name
    with pytest.raises(SystemExit):
        preprocess.parse_args(["--dataset", "criteo_1tb", "--input", "x", "--output", "y", "--nnodes", "2",
                               "--node-rank", "2"])
