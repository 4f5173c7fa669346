"""Smoke runs of the benchmark scripts at minimal sizes: they run from the command
line the README gives, write JSON with the documented keys and sane values, and
plot. Speed itself is never asserted here (see benchmarks/)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import torch

from tests.conftest import run_cmd


def _run(args: list, timeout: float = 400, env: Optional[dict] = None) -> None:
    proc = run_cmd([sys.executable, *args], timeout=timeout, env=env or {})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_throughput_reports_its_ceilings(tmp_path: Path):
    out = tmp_path / "throughput.json"
    _run(["benchmarks/throughput.py", "--config", "configs/smoke.yaml", "--batch-sizes", "64", "--nprocs", "1",
          "--sharding-types", "", "--pipelines", "sparse_dist,semi_sync", "--base-batch", "64",
          "--window-steps", "2", "--warmup-steps", "2", "--ceiling-seconds", "0.05", "--json", str(out),
          "data.source=random"])
    result = json.loads(out.read_text())
    assert {"torch", "fbgemm_gpu", "torchrec"} <= set(result["versions"]) and all(result["versions"].values())
    # the benchmark runs where training would (dist.device=auto): a GPU when the host has one
    cuda = torch.cuda.is_available()
    assert result["device"] == ("cuda" if cuda else "cpu") and result["data_source"] == "random"
    assert result["optimizer"]["embedding"]["name"] == "adagrad"
    assert not result["failed"]
    assert [s["name"] for s in result["skipped"]] == ([] if cuda else ["1x64-semi_sync"])  # needs CUDA
    case = result["cases"][0]
    assert len(result["cases"]) == (2 if cuda else 1)
    assert case["world_size"] == 1 and case["batch_size_per_rank"] == 64 and case["pipeline"] == "sparse_dist"
    rates = case["samples_per_s_per_rank"]
    assert len(rates["windows"]) == 5 and rates["min"] <= rates["median"] <= rates["max"] and rates["min"] > 0
    ceiling = case["ceiling"]
    # smoke model: bottom 13-64-32-16, top 367-64-32-1: 2*(3*(13*64+64*32+32*16+367*64+64*32+32)) + interaction
    assert 150_000 < ceiling["gemm_flops_per_sample"] < 350_000
    assert ceiling["embedding_bytes_per_sample"] == 26 * (3 * 16 * 4 + 2 * 16 * 4 + 8 * 16)  # adagrad, dim 16
    for key in ("fraction_of_gemm_ceiling", "fraction_of_memory_ceiling", "fraction_of_combined_ceiling"):
        assert 0 < case[key] < 5, (key, case[key])
    assert case["fraction_of_memory_ceiling"] < case["fraction_of_combined_ceiling"]
    if not cuda:
        assert 0 < case["fraction_of_gemm_ceiling_cpu_time"] < 5  # the same in CPU-seconds (CPU hosts)
    assert len(case["cpu_per_wall_s_per_rank"]) == 1 and case["threads_per_rank"][0] >= 1
    assert len(case["plan"]) == 26 and all("sharding_type" in p for p in case["plan"].values())
    assert all((out.parent / p).stat().st_size > 0 for p in result["plots"])


def test_throughput_runs_what_training_runs_with_its_loader_workers(tmp_path: Path):
    """The benchmark builds its run with training's recipe: ``data.num_workers=2`` means
    two DataLoader worker processes feed each rank, as in ``dlrm-dist train``."""
    out = tmp_path / "throughput.json"
    _run(["benchmarks/throughput.py", "--config", "configs/smoke.yaml", "--batch-sizes", "64", "--nprocs", "1",
          "--sharding-types", "", "--pipelines", "sparse_dist", "--base-batch", "64", "--window-steps", "2",
          "--warmup-steps", "2", "--ceiling-seconds", "0.05", "--json", str(out), "data.num_workers=2"])
    (case,) = json.loads(out.read_text())["cases"]
    assert case["loader_workers_per_rank"] == [2]


def test_comm_measures_collectives_at_dlrm_sizes(tmp_path: Path):
    out = tmp_path / "comm.json"
    # 2 CPU ranks (gloo) on any host: the GPUs hidden, as 2 ranks may share one GPU, which NCCL refuses
    _run(["benchmarks/comm.py", "--ranks", "2", "--config", "configs/smoke.yaml", "--batch-sizes", "64",
          "--min-bytes", "4096", "--max-bytes", "16384", "--iters", "2", "--json", str(out)],
         env={"CUDA_VISIBLE_DEVICES": ""})
    result = json.loads(out.read_text())
    assert result["backend"] == "gloo" and result["world_size"] == 2
    labels = {(r["op"], r["label"]) for r in result["results"]}
    assert {("all_to_all", "pooled_embeddings_B64"), ("all_reduce", "dense_gradients")} <= labels
    assert ("all_to_all", "sweep") in labels and ("all_reduce", "sweep") in labels
    pooled = next(r for r in result["results"] if r["label"] == "pooled_embeddings_B64")
    assert pooled["bytes_per_rank"] == 64 * 26 * 16 * 4  # B x F x D fp32
    assert all(r["latency_us"] > 0 and r["busbw_gb_per_s"] > 0 for r in result["results"])
    assert (out.parent / "comm_bandwidth.png").stat().st_size > 0


def test_embedding_per_sharding_type(tmp_path: Path):
    out = tmp_path / "embedding.json"
    _run(["benchmarks/embedding.py", "--ranks", "2", "--tables", "4", "--batch-size", "32", "--rows", "1000",
          "--dims", "16", "--pooling", "4", "--sharding-types", "table_wise,row_wise", "--steps", "2",
          "--json", str(out)], env={"CUDA_VISIBLE_DEVICES": ""})  # 2 CPU ranks (gloo), on a GPU host too
    result = json.loads(out.read_text())
    rows = result["results"]
    assert [(r["sharding_type"], r["pooling"]) for r in rows] == [("table_wise", 4), ("row_wise", 4)]
    for r in rows:
        assert r["rows_per_s_per_rank"] > 0 and r["bytes_per_s_per_rank"] > r["rows_per_s_per_rank"]
        assert len(r["seconds_per_step"]["windows"]) == 5
    assert (out.parent / "embedding.png").stat().st_size > 0
