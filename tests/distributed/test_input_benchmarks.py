"""benchmarks/loader.py and benchmarks/step_overhead.py run as the README says, at
minimal sizes, and write the JSON keys the README explains (and their plots)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cmd


def test_loader_benchmark_writes_the_documented_cases(tmp_path: Path) -> None:
    out = tmp_path / "loader.json"
    proc = run_cmd(["python", "benchmarks/loader.py", "--data", str(tmp_path / "npy"), "--make-data", "2", "3000",
                    "--batch-size", "512", "--workers", "1", "--seconds", "0.2", "--json", str(out),
                    "--profile", str(tmp_path / "profile.txt")])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    names = [c["name"] for c in result["cases"]]
    assert names[0] == "one_hot" and any(n.startswith("multi_hot") for n in names), names
    for case in result["cases"]:
        assert case["ours_samples_per_s"] > 0 and case["ms_per_batch"] > 0
    assert result["cases"][0]["torchrec_samples_per_s"] > 0  # TorchRec's pipe on the same days
    # the GPU job's loader (meta device here, cuda on a GPU host) with 0 and 1 workers
    finish = {(c["name"], c["workers"]): c for c in result["device_finish"]}
    assert set(finish) == {(n, w) for n in ("one_hot", "multi_hot_dcnv2") for w in (0, 1)}
    for c in finish.values():
        assert c["training_process_cpu_ms_per_batch"] > 0 and c["start_cpu_ms_per_pass"] >= 0
    assert out.with_suffix(".png").stat().st_size > 0
    assert "host_values" in (tmp_path / "profile.txt").read_text()


def test_step_overhead_benchmark_compares_trainer_and_bare_pipeline(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    proc = run_cmd(["python", "benchmarks/step_overhead.py", "--json", str(out), "--nproc", "1", "--steps", "3",
                    "--warmup-steps", "1", "--repeats", "1", "--batch-size", "256"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (run,) = json.loads(out.read_text())["runs"]
    assert run["world_size"] == 1 and run["bare_ms_per_step"][0] > 0 and run["trainer_ms_per_step"][0] > 0
    assert 0 <= run["trainer_own_fraction"] < 1
    assert out.with_suffix(".png").stat().st_size > 0
