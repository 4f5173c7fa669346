"""``dlrm-dist calibrate``: it measures, writes a profile the plan reads, and the
figures are sane (positive, and the model's byte count inverts the kernel's time)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlrm_dist.hardware import calibrate
from dlrm_dist.hardware.profiles import load_profile
from dlrm_dist.planner import plan


def test_calibrate_writes_a_profile_the_plan_reads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "here.yaml"
    assert calibrate.main(["--output", str(out), "--ranks", "2", "--seconds", "0.02", "--name", "here"]) == 0
    prof = load_profile(str(out))
    assert prof.name == "here" and prof.device == "cpu" and prof.gpus_per_node == 2
    assert prof.peak_tflops["fp32"] > 0 and prof.hbm_gb_per_s > 0 and prof.embedding_gb_per_s > 0
    assert prof.intra_host_gb_per_s > 0 and prof.latency_us["intra_host"] > 0
    assert prof.inter_host_gb_per_s is None  # one host: not measured, and said so
    assert "not measured" in prof.sources["inter_host_gb_per_s"]
    assert 2 in prof.by_local_ranks and prof.measured["load_average_before"]
    # the minimal DLRM's step, less the model's own terms for it: the framework's cost per step
    tiny = prof.measured["ranks"]["tiny_step_s"]
    assert min(tiny.values()) * 1000 >= prof.by_local_ranks[2]["step_overhead_ms"] >= 0
    assert prof.by_local_ranks[2]["step_overhead_us_per_sample"] >= 0
    assert prof.measured["one_process"]["tiny_step_s"] and prof.step_overhead_ms >= 0  # one rank alone, too
    assert "minimal DLRM" in prof.sources["step_overhead_ms"]
    capsys.readouterr()
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("data: {source: random}\nmodel: {embedding_dim: 16, num_embeddings: 1000, "
                   "bottom_mlp: [32, 16], top_mlp: [32, 1]}\ntrain: {batch_size: 512}\n")
    rc = plan.main(["--config", str(cfg), "--hardware", str(out), "--host-ram-gb", "16", "--json"])
    perf = json.loads(capsys.readouterr().out)["performance"]
    assert rc == 0 and perf["hardware"] == "here" and perf["samples_per_s_per_rank"] > 0
    assert perf["terms_ms"]["pooled_all_to_all_fwd"] > 0  # 2 CPU ranks exchange embeddings


def test_ranks_split_into_hosts_measure_the_link_between_them() -> None:
    """Two ranks taken as two hosts of one rank each: the inter-host link is measured
    (over loopback here; across machines under torchrun)."""
    prof = calibrate.calibrate("two-hosts", ranks=2, seconds=0.02, hosts=2)
    assert prof.gpus_per_node == 1
    assert prof.inter_host_gb_per_s and prof.inter_host_gb_per_s > 0
    assert prof.measured["ranks"]["links"]["intra_host"] is None
