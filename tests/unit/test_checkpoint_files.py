"""What meta.json's file list catches (dlrm_dist.training.integrity), one file at a time."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from dlrm_dist.training.integrity import HASH, CheckpointDamaged, CheckpointError, SafeReader, check_files, describe


def _folder(tmp_path: Path) -> tuple:
    (tmp_path / "__0_0.distcp").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "rank-0.json").write_text('{"lr_scheduler": {}}')
    return tmp_path, {"files": describe(tmp_path, ["__0_0.distcp", "rank-0.json"])}


def test_a_sound_folder_has_no_problems(tmp_path: Path):
    folder, meta = _folder(tmp_path)
    assert meta["files"]["__0_0.distcp"]["bytes"] == 16384 and len(meta["files"]["rank-0.json"][HASH]) == 32
    assert check_files(folder, meta) == []


def test_flipped_truncated_missing_are_each_named(tmp_path: Path):
    folder, meta = _folder(tmp_path)
    data = bytearray((folder / "__0_0.distcp").read_bytes())
    data[5000] ^= 0x01  # one bit
    (folder / "__0_0.distcp").write_bytes(bytes(data))
    (problem,) = check_files(folder, meta)
    assert problem.startswith("__0_0.distcp has checksum ") and "its bytes changed after the save" in problem
    (folder / "__0_0.distcp").write_bytes(bytes(data[:100]))
    assert check_files(folder, meta) == ["__0_0.distcp is 100 bytes, meta.json recorded 16384 (truncated)"]
    (folder / "rank-0.json").unlink()
    assert check_files(folder, meta, ["rank-0.json"]) == ["rank-0.json is missing (meta.json lists it, 20 bytes)"]
    error = CheckpointDamaged(folder, check_files(folder, meta))
    assert str(error).startswith(f"checkpoint {folder} is damaged: __0_0.distcp is 100 bytes") and "(and 1 more)" in str(error)
    assert isinstance(error, CheckpointError)  # a UserError: one line and exit 2 at the entry points


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('ran')",))


def test_dcp_metadata_that_would_run_code_is_refused(tmp_path: Path):
    (tmp_path / ".metadata").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(CheckpointError, match=r"\.metadata: refused builtins\.exec.*could run code"):
        SafeReader(str(tmp_path)).read_metadata()
