"""benchmarks/checkpoint_integrity.py at a minimal size: it runs and writes the
documented keys with sane values (speed itself is never asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import run_cmd


def test_checkpoint_integrity_benchmark_writes_its_figures(tmp_path: Path):
    out = tmp_path / "ci.json"
    proc = run_cmd([sys.executable, "benchmarks/checkpoint_integrity.py", "--gb", "0.01", "--dir", str(tmp_path),
                    "--json", str(out)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["bytes"] >= 0.01 * 2**30 and result["files"] == 2  # one .distcp + .metadata
    assert set(result["per_gib"]) == {"save_s", "hash_at_save_s", "verify_s", "load_s", "blake2b_s", "sha256_s"}
    assert all(v > 0 for v in result["per_gib"].values())
    assert "load_average_1_5_15" in result["environment"]
    assert list(tmp_path.iterdir()) == [out]  # the checkpoint it wrote is gone
