"""``dlrm-dist plan`` and the capacity estimators.

The Terabyte figures (DESIGN.md): 26 tables at the MLPerf 40M caps hold
204,184,588 rows, 104.5 GB in fp32 at dim 128; exact Adagrad keeps the same again,
RowWiseAdagrad one float per row. Planner dry runs cost 1-5 s each on 2 cores, so
each test runs as few as it can.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import List

import pytest
import torch

from dlrm_dist.planner import capacity as cap
from dlrm_dist.planner import host_check
from dlrm_dist.planner import preprocess_cost
from dlrm_dist.planner import plan
from dlrm_dist.config import load_config
from dlrm_dist.core.errors import CapacityError
from dlrm_dist.core.units import MiB
from dlrm_dist.model.dlrm import build_model, dense_parameter_count

TB_SIZES = [40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10,
            2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36]
TB_ROWS = 204_184_588
TB_BYTES = TB_ROWS * 128 * 4  # 104,542,509,056 = 104.5 GB
MULTI_HOT = [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1]

TB_YAML = f"""
# MLPerf DLRM v1 on Criteo Terabyte (what configs/criteo_1tb.yaml declares)
data: {{source: random}}
model:
  embedding_dim: 128
  num_embeddings_per_feature: {TB_SIZES}
  bottom_mlp: [512, 256, 128]
  top_mlp: [1024, 1024, 512, 256, 1]
  interaction: dot
optim:
  embedding: {{name: adagrad, lr: 0.005}}
  dense: {{name: adagrad, lr: 0.005}}
train: {{batch_size: 8192}}
"""
TINY_YAML = """
data: {source: synthetic, train_samples: 8192, val_samples: 2048, test_samples: 2048}
model: {embedding_dim: 16, num_embeddings: 1000, bottom_mlp: [32, 16], top_mlp: [32, 1]}
train: {batch_size: 256}
"""


@pytest.fixture(scope="module")
def cfgs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("cfg")
    (d / "tb.yaml").write_text(TB_YAML)
    (d / "tiny.yaml").write_text(TINY_YAML)
    return {"tb": str(d / "tb.yaml"), "tiny": str(d / "tiny.yaml")}


def run_plan(argv: List[str]) -> plan.Estimate:
    args = plan.parse_args(argv)
    plan._quiet(False)
    return plan.run(*plan.job_and_cluster(args), args.min_gpus)


def summed(est: plan.Estimate, tier: str, key: str) -> int:
    return sum(r[tier].get(key, 0) for r in est.ranks)


# ---- what the config declares (no planner) ---------------------------------- #


@pytest.mark.parametrize("name, expected", [
    ("adagrad", TB_BYTES), ("rowwise_adagrad", TB_ROWS * 4), ("sgd", 0), ("adam", 2 * TB_BYTES)])
def test_optimizer_state_follows_the_configured_embedding_optimizer(cfgs: dict, name: str, expected: int) -> None:
    cfg = load_config(cfgs["tb"], [f"optim.embedding.name={name}"])
    stats = cap.table_stats(cap.meta_model(cfg.model, cfg.optim.embedding), cfg.optim.embedding)
    assert (stats.rows, stats.weight_bytes) == (TB_ROWS, TB_BYTES)
    assert round(TB_BYTES / 1e9, 1) == 104.5
    assert stats.optimizer_bytes == expected


def test_fp16_tables_halve_rows_but_not_optimizer_state(cfgs: dict) -> None:
    cfg = load_config(cfgs["tb"], ["model.embedding_dtype=fp16"])
    stats = cap.table_stats(cap.meta_model(cfg.model, cfg.optim.embedding), cfg.optim.embedding)
    assert stats.weight_bytes == TB_BYTES // 2
    assert stats.optimizer_bytes == TB_BYTES  # FBGEMM keeps Adagrad momentum in fp32


@pytest.mark.parametrize("interaction, low, high", [("dot", 2.3e6, 2.5e6), ("dcn", 15.5e6, 16.5e6)])
def test_dense_parameter_counts(cfgs: dict, interaction: str, low: float, high: float) -> None:
    cfg = load_config(cfgs["tb"], [f"model.interaction={interaction}"])
    n = dense_parameter_count(build_model(cfg.model, torch.device("cpu"), "meta"))
    assert low < n < high


def test_preprocessing_disk() -> None:
    tb = preprocess_cost.preprocess_estimate("criteo_1tb", 24, 40_000_000)
    assert (tb.rows, tb.bytes_per_row) == (4_195_197_692 + 178_274_637, 13 * 4 + 26 * 4 + 4)
    assert tb.disk_bytes == tb.rows * 160
    assert preprocess_cost.preprocess_estimate("criteo_1tb", 24, 0).bytes_per_row == 13 * 4 + 26 * 8 + 4  # raw 32-bit hashes
    kaggle = preprocess_cost.preprocess_estimate("criteo_kaggle", 7, 10_131_227)
    assert kaggle.rows == 45_840_617 and kaggle.worker_ram_bytes < 10**9
    with pytest.raises(ValueError, match="days"):
        preprocess_cost.preprocess_estimate("criteo_kaggle", 8, 1000)


def test_smallest_fitting_bisects() -> None:
    calls: List[int] = []

    def fits(n: int) -> bool:
        calls.append(n)
        return n >= 37

    assert plan.smallest_fitting(fits, 1, 64) == 37
    assert len(calls) <= 13
    assert plan.smallest_fitting(lambda n: False, 1, 64) is None


# ---- planner dry runs ----------------------------------------------------------- #


def test_terabyte_on_one_node_of_8x80gb_fits_with_exact_adagrad(cfgs: dict) -> None:
    """209 GB of rows + Adagrad state over 8 x 80 GiB: each 40M-row table with its
    state (41 GB) fits on one GPU, so the planner keeps everything in HBM."""
    est = run_plan(["--config", cfgs["tb"], "--nodes", "1", "--gpus-per-node", "8",
                    "--hbm-gb", "80", "--host-ram-gb", "1024"])
    assert est.fits, est.reasons
    assert est.tables["weight_bytes"] == TB_BYTES and est.tables["optimizer_bytes"] == TB_BYTES
    assert summed(est, "device", "embedding weights") == TB_BYTES
    assert summed(est, "device", "embedding optimizer") == TB_BYTES
    assert all(r["compute_kernel"] == "fused" for r in est.plan)
    fullest = max(sum(r["device"].values()) for r in est.ranks)
    assert 40e9 < fullest < 80 * cap.GiB  # one 40M table with its state, plus the dense part
    assert est.step_ms and est.step_ms > 0 and est.samples_per_s_per_gpu


def test_terabyte_on_two_nodes_spreads_tables_and_counts_two_hosts(cfgs: dict) -> None:
    est = run_plan(["--config", cfgs["tb"], "--nodes", "2", "--gpus-per-node", "8",
                    "--hbm-gb", "80", "--host-ram-gb", "512", "optim.embedding.name=rowwise_adagrad"])
    assert est.fits and est.world_size == 16 and len(est.hosts) == 2
    replicated = [r for r in est.plan if r["sharding_type"] == "data_parallel"]  # one copy per rank
    extra_rows = sum(r["rows"] for r in replicated) * (est.world_size - 1)
    assert summed(est, "device", "embedding weights") == TB_BYTES + extra_rows * 128 * 4
    assert summed(est, "device", "embedding optimizer") == (TB_ROWS + extra_rows) * 4
    if replicated:
        assert summed(est, "device", "embedding grads (data_parallel)") == sum(r["rows"] for r in replicated) * 128 * 4 * 16
    assert {r for row in est.plan for r in row["ranks"]} > set(range(8))  # both nodes hold tables


def test_terabyte_on_8x141gb_as_json(cfgs: dict, capsys: pytest.CaptureFixture) -> None:
    rc = plan.main(["--config", cfgs["tb"], "--nodes", "1", "--gpus-per-node", "8",
                    "--hbm-gb", "141", "--host-ram-gb", "2048", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["fits"] and out["hbm_per_rank"] == 141 * cap.GiB
    assert out["tables"]["weight_bytes"] == TB_BYTES
    assert sum(r["device"]["embedding weights"] for r in out["ranks"]) == TB_BYTES
    assert len(out["plan"]) == 26 and out["preprocess"]["rows"] == 4_373_472_329


def test_too_small_hbm_only_cluster_names_more_gpus(cfgs: dict, capsys: pytest.CaptureFixture) -> None:
    """195 GiB of rows and state, HBM only: 4 x 32 GiB cannot hold it, 8 can."""
    rc = plan.main(["--config", cfgs["tb"], "--nodes", "1", "--gpus-per-node", "4", "--hbm-gb", "32",
                    "--host-ram-gb", "256", "sharding.compute_kernels=[fused]"])
    text = capsys.readouterr().out
    assert rc == 1
    assert "Verdict: DOES NOT FIT" in text and "planner found no plan" in text
    assert "Smallest change that fits: more GPUs: 2 nodes x 4 GPUs = 8 GPUs" in text
    for title in ("HBM per rank", "Host RAM per rank"):
        assert title not in text  # no plan, no per-rank table


def test_uvm_caching_is_the_next_remedy_when_gpus_are_capped(cfgs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan, "MAX_GPUS", 8)
    est = run_plan(["--config", cfgs["tb"], "--nodes", "1", "--gpus-per-node", "8", "--hbm-gb", "16",
                    "--host-ram-gb", "1024", "sharding.compute_kernels=[fused]"])
    assert not est.fits and est.remedy is not None
    assert est.remedy["change"].startswith("UVM caching")
    assert est.remedy["overrides"] == ["sharding.compute_kernels=[fused,fused_uvm_caching]"]


def test_remedies_are_tried_in_the_documented_order(cfgs: dict) -> None:
    job, cluster = plan.job_and_cluster(plan.parse_args(["--config", cfgs["tb"], "sharding.compute_kernels=[fused]"]))
    names = [what.split(":")[0] for what, _ in plan._remedies(job.cfg, cluster)]
    assert names == ["UVM caching", "RowWiseAdagrad", "fp16 tables", "smaller tables"]
    caps = plan._remedies(job.cfg, cluster)[-1][1]
    assert caps[0] == ["model.num_embeddings_per_feature=[" + ",".join(
        str(min(s, 20_000_000)) for s in TB_SIZES) + "]"]


def test_host_without_room_for_the_processes_gets_no_table_remedy(cfgs: dict) -> None:
    est = run_plan(["--config", cfgs["tb"], "--nodes", "1", "--gpus-per-node", "8",
                    "--hbm-gb", "80", "--host-ram-gb", "16"])
    assert not est.fits and est.remedy is None
    assert any(r.startswith("host 0 needs") for r in est.reasons)


def test_min_gpus_is_the_smallest_count_that_holds_the_tables(cfgs: dict) -> None:
    est = run_plan(["--config", cfgs["tb"], "--gpus-per-node", "1", "--hbm-gb", "32",
                    "--host-ram-gb", "256", "sharding.compute_kernels=[fused]", "--min-gpus"])
    usable = 32 * cap.GiB * (1 - 0.15)
    assert est.fits
    assert 2 * TB_BYTES / usable <= est.world_size <= 10
    assert not any(s["fits"] for s in est.sweep if s["gpus"] < est.world_size)


def test_tiny_config_fits_one_cpu_host_and_reads_well(cfgs: dict, capsys: pytest.CaptureFixture) -> None:
    rc = plan.main(["--config", cfgs["tiny"], "--device", "cpu", "--nodes", "1",
                    "--gpus-per-node", "2", "--host-ram-gb", "16"])
    text = capsys.readouterr().out
    assert rc == 0 and "Verdict: FITS" in text
    block = re.split(r"Host RAM per rank, [MG]iB\n", text)[1].split("\n\n")[0].splitlines()
    assert len({len(line) for line in block[1:]}) == 1  # rows aligned under the header
    assert "process (torch + torchrec)" in text and "embedding weights" in text


# ---- the start-up check training runs ---------------------------------------- #


def test_check_host_memory(cfgs: dict) -> None:
    cfg = load_config(cfgs["tiny"])
    need = host_check.host_memory_per_rank(cfg, 1, 1, "cpu")
    assert cap.CPU_PROCESS_BYTES < need < cap.CPU_PROCESS_BYTES + 64 * MiB
    host_check.check_host_memory(cfg, 1, 1, "cpu", available_bytes=need)
    with pytest.raises(CapacityError, match=r"need .* GiB .* available.*rowwise_adagrad"):
        host_check.check_host_memory(cfg, 2, 2, "cpu", available_bytes=need)


def test_every_shipped_config_plans(cfgs: dict) -> None:
    """Every configs/*.yaml plans on a 1x8 80 GiB node."""
    shipped = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
    assert shipped, "configs/ holds no YAML"
    for path in shipped:
        est = run_plan(["--config", str(path), "--gpus-per-node", "8", "--hbm-gb", "80", "--host-ram-gb", "1024"])
        assert est.planner["error"] is None, (path, est.reasons)


def test_planner_places_fp16_tables_at_half_the_bytes(cfgs: dict) -> None:
    args = ["--config", cfgs["tiny"], "--device", "cpu", "--gpus-per-node", "2", "--host-ram-gb", "16"]
    fp32, fp16 = run_plan(args), run_plan(args + ["model.embedding_dtype=fp16"])
    assert fp16.fits and summed(fp16, "host", "embedding weights") * 2 == summed(fp32, "host", "embedding weights")
    assert summed(fp16, "host", "embedding optimizer") == summed(fp32, "host", "embedding optimizer")


def test_torchrec_internals(cfgs: dict) -> None:
    """The two TorchRec internals the capacity planner reads (no public API): a
    TorchRec release that renames them must fail here, not count 0 bytes."""
    cfg = load_config(cfgs["tiny"])
    assert cap.optimizer_multiplier(torch.optim.Adagrad, torch.Size([10, 16])) == 1.0
    model = cap.meta_model(cfg.model, cfg.optim.embedding)
    run = cap.run_planner(cfg, model, 2, 2, "cpu", 0, 8 * cap.GiB)
    assert run.error is None and run.kjt_bytes > 0 and run.dense_reserved_bytes > 0
