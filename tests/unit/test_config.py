"""Config loading is strict: every shipped YAML validates; mistakes name the key and file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dlrm_dist.config import ConfigError, load_config, to_yaml
from tests.conftest import ROOT, run_cmd

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"smoke", "criteo_kaggle", "criteo_1tb", "mlperf_dcnv2"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_loads_and_starts_with_its_launch_command(path: Path):
    cfg = load_config(path)
    assert len(cfg.model.table_sizes()) == 26
    first_lines = path.read_text().splitlines()[:12]
    assert first_lines[0].startswith("#")
    assert any("dlrm_dist.train" in l or "dlrm-dist train" in l for l in first_lines), "no launch command"
    # the resolved config written to the run directory loads back to the same thing
    again = Path("/tmp") / f"resolved-{path.stem}.yaml"
    again.write_text(to_yaml(cfg))
    assert load_config(again) == cfg


def test_reference_configs_match_the_published_models():
    tb = load_config(ROOT / "configs/criteo_1tb.yaml").model
    assert sum(tb.table_sizes()) == 204_184_588 and tb.embedding_dim == 128
    assert tb.bottom_mlp == [512, 256, 128] and tb.top_mlp == [1024, 1024, 512, 256, 1]
    dcn = load_config(ROOT / "configs/mlperf_dcnv2.yaml")
    assert dcn.model.interaction == "dcn" and dcn.model.dcn_num_layers == 3 and dcn.model.dcn_low_rank_dim == 512
    assert sum(dcn.data.multi_hot_sizes) == 214
    kaggle = load_config(ROOT / "configs/criteo_kaggle.yaml").model
    assert kaggle.embedding_dim == 16 and kaggle.bottom_mlp == [512, 256, 64, 16] and kaggle.top_mlp == [512, 256, 1]


def test_overrides_are_typed():
    cfg = load_config(ROOT / "configs/smoke.yaml", ["train.batch_size=64", "model.bottom_mlp=[8,16]", "model.embedding_dim=16"])
    assert cfg.train.batch_size == 64 and cfg.model.bottom_mlp == [8, 16]
    with pytest.raises(ConfigError, match=r"train.batch_size.*expected int"):
        load_config(ROOT / "configs/smoke.yaml", ["train.batch_size=big"])
    with pytest.raises(ConfigError, match=r"unknown key 'train.batchsize'"):
        load_config(ROOT / "configs/smoke.yaml", ["train.batchsize=64"])


def test_cross_key_checks_name_the_key(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  embedding_dim: 32\n  bottom_mlp: [64, 16]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*model.bottom_mlp.*embedding_dim=32"):
        load_config(bad)
    bad.write_text("model:\n  num_embeddings_per_feature: [10, 10]\n")
    with pytest.raises(ConfigError, match=r"num_embeddings_per_feature.*26"):
        load_config(bad)
    bad.write_text("optim:\n  embedding: {name: lamb}\n")
    with pytest.raises(ConfigError, match=r"optim.embedding.name.*lamb"):
        load_config(bad)
    bad.write_text("sharding:\n  sharding_types: [rows]\n")
    with pytest.raises(ConfigError, match=r"sharding.sharding_types.*rows"):
        load_config(bad)
    for steps in ("[5]", "[4, 4]", "[-1, 3]"):
        bad.write_text(f"train:\n  profile_steps: {steps}\n")
        with pytest.raises(ConfigError, match=r"bad.yaml.*train.profile_steps.*start < stop"):
            load_config(bad)
    bad.write_text("train:\n  pipeline: fused\n")
    with pytest.raises(ConfigError, match=r"train.pipeline.*base, sparse_dist, semi_sync"):
        load_config(bad)


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        ("train:\n  batch_sise: 64\n", "unknown key 'train.batch_sise'"),
        ("train:\n  batch_size: lots\n", "key 'train.batch_size': expected int"),
        ("model:\n  interaction: cross\n", "key 'model.interaction': must be one of dot, dcn"),
        ("modle:\n  embedding_dim: 16\n", "unknown key 'modle'"),
    ],
)
def test_cli_rejects_bad_config_with_clear_message(tmp_path: Path, yaml_text: str, expected: str):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    proc = run_cmd([sys.executable, "-m", "dlrm_dist.train", "--config", str(cfg), "--run-dir", str(tmp_path / "run")], timeout=120)
    assert proc.returncode != 0
    assert expected in proc.stderr and str(cfg) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists(), "a rejected config must not create a run directory"


def test_cli_missing_config_file(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    proc = run_cmd([sys.executable, "-m", "dlrm_dist.cli", "train", "--config", str(missing)], timeout=120)
    assert proc.returncode == 2
    assert f"config file not found: {missing}" in proc.stderr


def test_checked_names_match_torchrec():
    from torchrec.distributed.embedding_types import EmbeddingComputeKernel
    from torchrec.distributed.types import ShardingType

    from dlrm_dist.config import COMPUTE_KERNELS, SHARDING_TYPES

    assert set(SHARDING_TYPES) <= {t.value for t in ShardingType}
    assert set(COMPUTE_KERNELS) <= {k.value for k in EmbeddingComputeKernel}
