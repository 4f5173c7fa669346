"""The step-time model's arithmetic on cases worked out by hand, the hardware
profiles, and ``dlrm-dist plan --hardware``.

Notation as in dlrm_dist/planner/traffic.py: B samples per rank, W ranks, L per
host, D embedding dim, p ids per sample.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from dlrm_dist.config import load_config
from dlrm_dist.core import criteo
from dlrm_dist.core.units import GiB, MiB
from dlrm_dist.hardware.profiles import HardwareProfile, load_profile, profile_names, write_profile
from dlrm_dist.planner import dense_flops, plan, step_time
from dlrm_dist.planner import traffic as tr
from dlrm_dist.planner.traffic import Shard, TableLayout, Topo

ROOT = Path(__file__).resolve().parents[2]
B, D = 10, 8
TOPO = Topo(world_size=4, local_world_size=2)  # hosts {0, 1} and {2, 3}


def table(kind: str, shards, pooling: float = 1.0, rows: int = 100) -> TableLayout:  # noqa: ANN001
    return TableLayout("t_cat_0", rows, D, kind, "fused", pooling, tuple(Shard(*s) for s in shards))


def sent_recv(lb: tr.LinkBytes) -> tuple:
    return lb.sent_intra, lb.sent_inter, lb.recv_intra, lb.recv_inter


# ---- FLOPs counted from the model ---------------------------------------------- #


def test_dense_flops_of_the_kaggle_shape_are_the_hand_count() -> None:
    """Bottom 13-512-256-16, dot interaction of 27 vectors of 16, top 367-512-256-1.
    Forward: 2 (13*512 + 512*256 + 256*16) + 2*27*27*16 + 2 (367*512 + 512*256 + 256*1)
    = 283,648 + 23,328 + 638,464 = 945,440. Backward is twice that (input and weight
    gradients) except the first layer's input gradient (dense features need none):
    2 * 945,440 - 2*13*512 = 1,877,568."""
    cfg = load_config(str(ROOT / "benchmarks/configs/kaggle_shape.yaml"))
    fwd, bwd = step_time.dense_flops_per_sample(cfg.model)
    assert fwd == 2 * (13 * 512 + 512 * 256 + 256 * 16) + 2 * 27 * 27 * 16 + 2 * (367 * 512 + 512 * 256 + 256)
    assert fwd == 945_440
    assert bwd == 2 * fwd - 2 * 13 * 512 == 1_877_568


def test_dcn_flops_count_the_low_rank_cross_layers() -> None:
    """DCNv2 on the Kaggle shape: the top MLP reads (26 + 1) * 16 = 432 values; each of
    3 cross layers multiplies by V (432 x 512) then U (512 x 432): 2 * 2 * 432 * 512."""
    cfg = load_config(str(ROOT / "benchmarks/configs/kaggle_shape.yaml"), ["model.interaction=dcn"])
    fwd, _ = step_time.dense_flops_per_sample(cfg.model)
    bottom = 2 * (13 * 512 + 512 * 256 + 256 * 16)
    cross = 3 * 2 * 2 * 432 * 512
    top = 2 * (432 * 512 + 512 * 256 + 256 * 1)
    assert fwd == bottom + cross + top


# ---- embedding bytes per shard --------------------------------------------------- #


def test_embedding_bytes_of_a_table_wise_shard() -> None:
    """B=10, W=4, p=2: the shard serves 80 rows of D=8 fp32 with Adagrad (state 32 B a row).
    Forward: 80 ids (8 B) + 80 rows (32 B) + 40 pooled rows written (32 B) = 4,480.
    Backward: 40 pooled gradients read (1,280) + 80 rows read and written (2 * 32) and
    their state read and written (2 * 32) = 1,280 + 10,240 = 11,520."""
    t = table("table_wise", [(0, 100, D)], pooling=2)
    assert tr.embedding_bytes(t, t.shards[0], B, TOPO, 4, "adagrad") == (4_480, 11_520)
    # SGD keeps no state; RowWiseAdagrad one fp32 a row
    assert tr.embedding_bytes(t, t.shards[0], B, TOPO, 4, "sgd")[1] == 1_280 + 80 * 64
    assert tr.embedding_bytes(t, t.shards[0], B, TOPO, 4, "rowwise_adagrad")[1] == 1_280 + 80 * (64 + 8)


def test_row_wise_shards_serve_their_fraction_of_the_ids() -> None:
    t = table("row_wise", [(r, 25, D) for r in range(4)], pooling=2)
    assert tr.rows_served(t, t.shards[0], B, 4) == 80 / 4
    dp = table("data_parallel", [(r, 100, D) for r in range(4)], pooling=2)
    assert tr.rows_served(dp, dp.shards[0], B, 4) == B * 2


# ---- all-to-all bytes per rank, each sharding type ------------------------------ #


def test_pooled_all_to_all_table_wise() -> None:
    """Owner 0 sends 4 B D = 320 B to each other rank: rank 1 over the host's link,
    ranks 2 and 3 over the network."""
    ranks = tr.pooled_all_to_all([table("table_wise", [(0, 100, D)])], B, TOPO)
    assert sent_recv(ranks[0]) == (320, 640, 0, 0)
    assert sent_recv(ranks[1]) == (0, 0, 320, 0)
    assert sent_recv(ranks[2]) == sent_recv(ranks[3]) == (0, 0, 0, 320)


def test_pooled_all_to_all_column_wise() -> None:
    """Two shards of 4 columns on ranks 0 and 2: each sends 4 * 10 * 4 = 160 B to the 3 others."""
    ranks = tr.pooled_all_to_all([table("column_wise", [(0, 100, 4), (2, 100, 4)])], B, TOPO)
    assert sent_recv(ranks[0]) == (160, 320, 0, 160)
    assert sent_recv(ranks[1]) == (0, 0, 160, 160)
    assert sent_recv(ranks[2]) == (160, 320, 0, 160)


def test_pooled_all_to_all_row_wise_is_a_reduce_scatter() -> None:
    """Partial sums for every sample: each rank sends 4 B D = 320 B to each of the 3 others."""
    ranks = tr.pooled_all_to_all([table("row_wise", [(r, 25, D) for r in range(4)])], B, TOPO)
    assert all(sent_recv(r) == (320, 640, 320, 640) for r in ranks)


def test_pooled_all_to_all_table_row_wise() -> None:
    """Rows on host 0 (ranks 0, 1), N = 2 hosts: intra-host reduce-scatter of the job's
    W B partial sums, 4 B D N = 640 B to the peer; then 4 B D = 320 B to the rank of the
    same local index on the other host."""
    ranks = tr.pooled_all_to_all([table("table_row_wise", [(0, 50, D), (1, 50, D)])], B, TOPO)
    assert sent_recv(ranks[0]) == (640, 320, 640, 0)
    assert sent_recv(ranks[2]) == (0, 0, 0, 320)
    assert sent_recv(ranks[3]) == (0, 0, 0, 320)


def test_data_parallel_tables_send_nothing_and_the_backward_reverses() -> None:
    assert all(sent_recv(r) == (0, 0, 0, 0) for r in tr.pooled_all_to_all(
        [table("data_parallel", [(r, 100, D) for r in range(4)])], B, TOPO))
    back = tr.reversed_bytes(tr.pooled_all_to_all([table("table_wise", [(0, 100, D)])], B, TOPO))
    assert sent_recv(back[0]) == (0, 0, 320, 640)


def test_input_all_to_all_ids() -> None:
    """p = 3 int64 ids and one int32 length per sample: B (3*8 + 4) = 280 B from every
    rank to the owner (table_wise); bucketized over 4 ranks (row_wise): B (3*8/4 + 4) = 100."""
    tw = tr.input_all_to_all([table("table_wise", [(0, 100, D)], pooling=3)], B, TOPO)
    assert sent_recv(tw[0]) == (0, 0, 280, 560)
    assert sent_recv(tw[1]) == (280, 0, 0, 0) and sent_recv(tw[3]) == (0, 280, 0, 0)
    rw = tr.input_all_to_all([table("row_wise", [(r, 25, D) for r in range(4)], pooling=3)], B, TOPO)
    assert all(sent_recv(r) == (100, 200, 100, 200) for r in rw)


def test_ring_all_reduce_bytes() -> None:
    assert tr.ring_all_reduce_bytes(1000, 4) == 1500  # 2 (W-1)/W
    assert tr.ring_all_reduce_bytes(1000, 1) == 0
    assert tr.all_reduce_calls(60 * MiB) == 3  # DDP's 25 MiB buckets


# ---- times and overlap ---------------------------------------------------------- #

ROUND = HardwareProfile(
    name="round", description="round numbers", device="cuda", gpus_per_node=2, hbm_gb=10, host_ram_gb=100,
    peak_tflops={"fp32": 1.0}, hbm_gb_per_s=100.0, host_link_gb_per_s=10.0, intra_host_gb_per_s=10.0,
    inter_host_gb_per_s=1.0, latency_us={"intra_host": 0.0, "inter_host": 0.0},
    input_samples_per_s_per_rank={"one_hot": 1e6})


def test_link_time_takes_the_slower_link_and_the_busier_direction() -> None:
    """1 GB/s network, 10 GB/s within the host: 640 B out over the network = 640 ns."""
    ranks = tr.pooled_all_to_all([table("table_wise", [(0, 100, D)])], B, TOPO)
    assert step_time.link_seconds(ranks[0], ROUND, 1) == pytest.approx(640 / 1e9)
    assert step_time.all_reduce_seconds(1e9, TOPO, ROUND) == pytest.approx(1.5)  # 1.5 GB at the NIC's 1 GB/s


def inputs(pipeline: str = "sparse_dist", world: int = 1) -> step_time.StepInputs:
    return step_time.StepInputs(
        batch=1000, topo=Topo(world, min(world, 2)), tables=(table("table_wise", [(0, 100, D)]),),
        embedding_optimizer="sgd", embedding_elem_bytes=4, dense_params=0, dense_optimizer_state=0,
        flops_fwd_per_sample=1e6, flops_bwd_per_sample=2e6, activation_bytes=0, pipeline=pipeline,
        input_kind="one_hot")


def test_one_rank_step_by_hand() -> None:
    """1,000 samples x 3 MFLOP at 1 TFLOPS = 3 ms of dense compute; the host builds the
    batch in 1 ms beside it (1M samples/s); embedding bytes at 100 GB/s: fwd 1000 ids and
    rows (40 B) + 1000 pooled rows (32 B) = 72 kB -> 0.72 us. No communication on 1 rank."""
    perf = step_time.predict(inputs(), ROUND)
    assert perf.terms_ms["dense_compute"] == pytest.approx(3.0)
    assert perf.terms_ms["host_input"] == pytest.approx(1.0)
    assert perf.terms_ms["embedding_lookup"] == pytest.approx(72_000 / 100e9 * 1000)
    assert perf.terms_ms["pooled_all_to_all_fwd"] == perf.terms_ms["all_reduce"] == 0
    assert perf.exposed_ms["host_input"] == 0  # hidden behind the GPU's 3 ms
    assert perf.step_ms == pytest.approx(sum(perf.exposed_ms.values()))
    assert perf.samples_per_s_per_rank == pytest.approx(1000 / (perf.step_ms / 1000))
    assert perf.bottleneck == "dense compute (MLPs + interaction)"


def test_cpu_ranks_add_everything_up_and_a_slow_host_is_the_bottleneck() -> None:
    cpu = dataclasses.replace(ROUND, device="cpu")
    assert step_time.predict(inputs(), cpu).step_ms == pytest.approx(4.0, rel=1e-3)  # 3 dense + 1 input
    slow = dataclasses.replace(ROUND, input_samples_per_s_per_rank={"one_hot": 1e5})  # 10 ms a batch
    perf = step_time.predict(inputs(), slow)
    assert perf.step_ms == pytest.approx(10.0) and perf.bottleneck == "host input pipeline"


def test_pipelines_hide_what_they_overlap() -> None:
    ms = {k: 1.0 for k in step_time.BOTTLENECK_NAMES}
    ms["host_input"] = ms["step_overhead"] = 0.0
    base = step_time.combine(ms, "base", "cuda")
    sparse = step_time.combine(ms, "sparse_dist", "cuda")
    semi = step_time.combine(ms, "semi_sync", "cuda")
    assert base["input_all_to_all"] == 1.0 and sparse["input_all_to_all"] == 0.0
    assert base["all_reduce"] == 0.0  # 1 ms beside 2 ms of embedding backward + all-to-all
    assert sum(semi.values()) == pytest.approx(sum(sparse.values()) - 1.0)  # lookup + a2a (2) behind dense (1)
    assert sum(step_time.combine(ms, "base", "cpu").values()) == 7.0


# ---- profiles -------------------------------------------------------------------- #


def test_shipped_profiles_have_a_source_for_every_figure() -> None:
    assert {"a100_40gb", "a100_80gb", "h100_sxm", "h200", "b200"} <= set(profile_names())
    figures = ["hbm_gb", "host_ram_gb", "peak_tflops", "hbm_gb_per_s", "host_link_gb_per_s",
               "intra_host_gb_per_s", "inter_host_gb_per_s", "efficiency", "latency_us",
               "input_samples_per_s_per_rank", "step_overhead_ms"]
    for name in profile_names():
        p = load_profile(name)
        assert p.device == "cuda" and p.gpus_per_node == 8
        missing = [f for f in figures if not p.sources.get(f)]
        assert not missing, (name, missing)
    h200 = load_profile("h200")
    assert (h200.hbm_gb_per_s, h200.peak_tflops["bf16"]) == (4800.0, 989.4)


def test_profile_files_round_trip_and_typos_fail(tmp_path: Path) -> None:
    path = tmp_path / "me.yaml"
    write_profile(dataclasses.replace(ROUND, by_local_ranks={2: {"peak_tflops": {"fp32": 0.4}}}), path)
    back = load_profile(str(path))
    assert back == dataclasses.replace(ROUND, by_local_ranks={2: {"peak_tflops": {"fp32": 0.4}}})
    assert back.for_local_ranks(2).peak_tflops["fp32"] == 0.4
    assert back.for_local_ranks(4).peak_tflops["fp32"] == pytest.approx(0.2)  # 4 ranks share what 2 had
    path.write_text(path.read_text().replace("hbm_gb_per_s", "hbm_gbps"))
    with pytest.raises(ValueError, match="unknown keys .*hbm_gbps"):
        load_profile(str(path))
    with pytest.raises(ValueError, match="unknown hardware profile"):
        load_profile("h300")


# ---- dlrm-dist plan --hardware ------------------------------------------------------- #

TINY = """
data: {source: criteo, path: /nonexistent}
model: {embedding_dim: 16, num_embeddings: 1000, bottom_mlp: [32, 16], top_mlp: [32, 1]}
train: {batch_size: 4096}
"""


def test_plan_json_has_the_performance_contract(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    rc = plan.main(["--config", str(cfg), "--hardware", "h100_sxm", "--dataset", "criteo_kaggle", "--json"])
    out = json.loads(capsys.readouterr().out)
    p = out["performance"]
    assert rc == 0 and out["hbm_per_rank"] == int(79.6 * GiB) and out["world_size"] == 8  # from the profile
    assert {"samples_per_s_per_rank", "samples_per_s", "step_ms", "terms_ms", "bottleneck", "epoch_s"} <= set(p)
    assert p["samples_per_s_per_rank"] == pytest.approx(4096 / (p["step_ms"] / 1000))
    assert p["samples_per_s"] == pytest.approx(8 * p["samples_per_s_per_rank"])
    assert p["epoch_s"] == pytest.approx(criteo.train_rows("criteo_kaggle") / p["samples_per_s"])
    assert p["train_rows"] == 45_840_617


def test_epoch_hours_finds_the_fewest_nodes(tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    args = ["--config", str(cfg), "--hardware", "a100_80gb", "--dataset", "criteo_1tb"]
    one = plan.run(*plan.job_and_cluster(plan.parse_args(args)))
    two = plan.run(*plan.job_and_cluster(plan.parse_args(args + ["--nodes", "2"])))
    assert two.performance["epoch_s"] < one.performance["epoch_s"]
    hours = (one.performance["epoch_s"] + two.performance["epoch_s"]) / 2 / 3600
    est = plan.run(*plan.job_and_cluster(plan.parse_args(args + ["--epoch-hours", str(hours)])), epoch_hours=hours)
    assert est.nodes == 2 and [s["nodes"] for s in est.sweep][:2] == [1, 2]
    assert "Fewest nodes for one epoch within the time: 2 (16 GPUs)" in plan.format_report(est)


def test_gemm_shape_and_the_rate_by_dimension() -> None:
    """A 1031 x 13 @ 13 x 512 forward GEMM: 2 * 1031 * 13 * 512 FLOPs, its weight-side
    dimensions 13 and 512 (the batch 1031 is dropped), so it runs at the rate for 13."""
    assert dense_flops._gemm_shape([(1031, 13), (13, 512)]) == (2.0 * 1031 * 13 * 512, 13, "mm")
    assert dense_flops._gemm_shape([(1031, 27, 16), (1031, 16, 27)]) == (2.0 * 1031 * 27 * 16 * 27, 16, "bmm")
    rates = {1: 1.0, 16: 2.0, 256: 8.0}
    assert step_time.rate_at(rates, 4) == pytest.approx(2 ** 0.5)  # halfway in log space
    assert step_time.rate_at(rates, 64) == pytest.approx(4.0)
    assert (step_time.rate_at(rates, 1), step_time.rate_at(rates, 4096)) == (1.0, 8.0)  # clamped
    thin = dataclasses.replace(ROUND, gemm_tflops_by_min_dim={1: 0.5, 1024: 1.0})
    inp = dataclasses.replace(inputs(), gemms=((1e6, 1, "mm"), (2e6, 1024, "mm")))  # 1 MFLOP at d=1, 2 at d=1024
    assert step_time.gemm_seconds(inp, thin, "fp32") == pytest.approx(1000 * (1e6 / 0.5e12 + 2e6 / 1e12))
