"""The model matches the published architectures; tables start on the meta device."""

from __future__ import annotations

import ast

import torch

from dlrm_dist.config import load_config
from dlrm_dist.model import build_model
from dlrm_dist.model.dlrm import dense_parameter_count
from tests.conftest import ROOT


def test_tables_are_built_on_meta():
    cfg = load_config(ROOT / "configs/criteo_1tb.yaml")
    model = build_model(cfg.model, torch.device("cpu"))  # 104.5 GB of tables: must not allocate
    ebc = model.model.sparse_arch.embedding_bag_collection
    assert all(p.is_meta for p in ebc.parameters())
    assert sum(p.shape[0] for p in ebc.parameters()) == 204_184_588


def test_dense_parameter_counts_match_mlperf():
    dot = build_model(load_config(ROOT / "configs/criteo_1tb.yaml").model, torch.device("cpu"))
    dcn = build_model(load_config(ROOT / "configs/mlperf_dcnv2.yaml").model, torch.device("cpu"))
    assert 2.3e6 < dense_parameter_count(dot) < 2.5e6  # MLPerf v1 DLRM: ~2.4M dense parameters
    assert 15.5e6 < dense_parameter_count(dcn) < 16.5e6  # DCNv2: ~16M


def test_forward_shapes_on_cpu():
    from dlrm_dist.data.synthetic import SyntheticDataset
    from dlrm_dist.core.teacher import Teacher

    cfg = load_config(ROOT / "configs/smoke.yaml", ["model.num_embeddings=50"])
    model = build_model(cfg.model, torch.device("cpu"), sparse_device="cpu")
    batch = next(iter(SyntheticDataset(Teacher([50] * 26), "train", 64, 32, 0, 1)))
    loss, (_, logits, labels) = model(batch)
    assert logits.shape == (32,) and labels.shape == (32,) and loss.ndim == 0


def test_model_package_never_imports_torch_distributed():
    for path in (ROOT / "dlrm_dist/model").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not any(n.startswith("torch.distributed") or n.startswith("torchrec.distributed") for n in names), path


def test_dot_interaction_equals_torchrec_forward_and_backward():
    """The flat gather gives TorchRec's InteractionArch's values, in its order, and the
    same gradients: only the kernels differ."""
    from torchrec.models.dlrm import InteractionArch

    from dlrm_dist.model.dlrm import FlatGatherInteraction

    dense = torch.randn(8, 4, requires_grad=True)
    sparse = torch.randn(8, 26, 4, requires_grad=True)
    ours, theirs = FlatGatherInteraction(26), InteractionArch(26)
    out = ours(dense, sparse)
    ref = theirs(dense, sparse)
    assert out.shape == (8, 4 + 27 * 26 // 2) and torch.equal(out, ref)
    grad = torch.randn_like(out)
    g_ours = torch.autograd.grad(out, (dense, sparse), grad)
    g_ref = torch.autograd.grad(ref, (dense, sparse), grad)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_ours, g_ref))
    cfg = load_config(ROOT / "configs/smoke.yaml")
    assert isinstance(build_model(cfg.model, torch.device("cpu")).model.inter_arch, FlatGatherInteraction)
    assert not build_model(cfg.model, torch.device("cpu")).model.inter_arch.state_dict()  # checkpoints unchanged
