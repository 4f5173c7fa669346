"""DLRM and DLRM-DCNv2, assembled from ``torchrec.models.dlrm``.

Shapes (TorchRec's notation): B samples, F = 26 sparse features, D embedding dim.

    dense (B, 13) --DenseArch (bottom MLP)--> (B, D) ----------------+
    KJT cat_0..cat_25 --EmbeddingBagCollection--> (B, F, D) pooled --+--> interaction
         dot: pairwise dot products  -> (B, D + F(F+1)/2)
         dcn: low-rank cross network -> (B, (F + 1) D)
    --OverArch (top MLP)--> (B, 1) logit;  DLRMTrain adds BCE-with-logits loss.

The EmbeddingBagCollection is built on the meta device: its 100+ GB of rows
are only allocated once DistributedModelParallel has decided which rank holds
which shard. Nothing here knows about ranks or torch.distributed.
"""

from __future__ import annotations

from typing import List

import torch
from torchrec.models.dlrm import DLRM, DLRM_DCN, DLRMTrain
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from dlrm_dist.config import NUM_DENSE_FEATURES, SPARSE_FEATURE_NAMES, ModelConfig


def embedding_bag_configs(cfg: ModelConfig) -> List[EmbeddingBagConfig]:
    """One table per sparse feature, named ``t_cat_i`` and fed by feature ``cat_i``."""
    return [
        EmbeddingBagConfig(
            name=f"t_{feature}",
            embedding_dim=cfg.embedding_dim,
            num_embeddings=rows,
            feature_names=[feature],
        )
        for feature, rows in zip(SPARSE_FEATURE_NAMES, cfg.table_sizes())
    ]


def build_model(cfg: ModelConfig, dense_device: torch.device, sparse_device: str = "meta") -> DLRMTrain:
    """DLRMTrain whose MLPs live on ``dense_device`` and whose tables live on
    ``sparse_device`` (meta until sharded; "cpu" for an unsharded reference copy)."""
    ebc = EmbeddingBagCollection(
        tables=embedding_bag_configs(cfg), device=torch.device(sparse_device)
    )
    # DLRM_DCN builds its cross network without a device argument: the default
    # device context puts it next to the other MLPs.
    with dense_device:
        return DLRMTrain(_build_dlrm(cfg, ebc, dense_device))


def _build_dlrm(cfg: ModelConfig, ebc: EmbeddingBagCollection, dense_device: torch.device) -> DLRM:
    if cfg.interaction == "dot":
        return DLRM(
            embedding_bag_collection=ebc,
            dense_in_features=NUM_DENSE_FEATURES,
            dense_arch_layer_sizes=list(cfg.bottom_mlp),
            over_arch_layer_sizes=list(cfg.top_mlp),
            dense_device=dense_device,
        )
    return DLRM_DCN(
        embedding_bag_collection=ebc,
        dense_in_features=NUM_DENSE_FEATURES,
        dense_arch_layer_sizes=list(cfg.bottom_mlp),
        over_arch_layer_sizes=list(cfg.top_mlp),
        dcn_num_layers=cfg.dcn_num_layers,
        dcn_low_rank_dim=cfg.dcn_low_rank_dim,
        dense_device=dense_device,
    )


def dense_parameter_count(model: torch.nn.Module) -> int:
    """Parameters outside the embedding tables (the data-parallel part)."""
    return sum(
        p.numel() for name, p in model.named_parameters() if "embedding_bag_collection" not in name
    )
