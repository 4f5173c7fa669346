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

This module owns where the tables are: the submodule path of the
EmbeddingBagCollection (``EBC_PATH``, the key of its sharding plan) and each
table's name (``table_name``). Sharding, optimizers, checkpoints and the
capacity planner ask it instead of spelling those strings themselves.
"""

from __future__ import annotations

from typing import Iterator, List, Tuple

import torch
from torchrec.models.dlrm import DLRM, DLRM_DCN, DLRMTrain, InteractionArch
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from dlrm_dist.config import ModelConfig

from dlrm_dist.core.criteo import NUM_DENSE_FEATURES, SPARSE_FEATURE_NAMES


EBC_PATH = "model.sparse_arch.embedding_bag_collection"
"""Where DLRMTrain keeps its EmbeddingBagCollection (DLRMTrain -> DLRM -> SparseArch);
the key of its entry in a TorchRec ShardingPlan."""
_TABLE_PREFIX = "t_"


def table_name(feature: str) -> str:
    """The table fed by a sparse feature: ``cat_3`` -> ``t_cat_3``."""
    return f"{_TABLE_PREFIX}{feature}"


def feature_name(table: str) -> str:
    """Inverse of :func:`table_name`; a ValueError for a name that is not one of ours."""
    feature = table[len(_TABLE_PREFIX):] if table.startswith(_TABLE_PREFIX) else ""
    if feature not in SPARSE_FEATURE_NAMES:
        raise ValueError(f"{table!r} is not a DLRM table name ({table_name(SPARSE_FEATURE_NAMES[0])} ...)")
    return feature


def embedding_bag_collection(model: torch.nn.Module) -> torch.nn.Module:
    """The (possibly sharded) EmbeddingBagCollection of a DLRMTrain, or of the
    DistributedModelParallel wrapping one (DMP's ``module`` is the unwrapped model)."""
    return getattr(model, "module", model).get_submodule(EBC_PATH)


def dense_named_parameters(model: torch.nn.Module) -> Iterator[Tuple[str, torch.nn.Parameter]]:
    """Parameters outside the embedding tables (the data-parallel part)."""
    tables = {id(p) for p in embedding_bag_collection(model).parameters()}
    return ((n, p) for n, p in model.named_parameters() if id(p) not in tables)


def embedding_bag_configs(cfg: ModelConfig) -> List[EmbeddingBagConfig]:
    """One table per sparse feature, named ``table_name(feature)`` and fed by that feature."""
    return [
        EmbeddingBagConfig(
            name=table_name(feature),
            embedding_dim=cfg.embedding_dim,
            num_embeddings=rows,
            feature_names=[feature],
            data_type=DataType.FP16 if cfg.embedding_dtype == "fp16" else DataType.FP32,
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


class FlatGatherInteraction(InteractionArch):
    """TorchRec's dot interaction, with the upper triangle of the pairwise products taken
    by one ``index_select`` over the flattened (F+1) x (F+1) products instead of
    advanced indexing with two index tensors: the same values in the same order, but the
    backward becomes an ``index_add`` instead of an accumulating ``index_put`` (a sort
    first, serial on a CPU). Interaction forward + backward at batch 2048, Kaggle shape:
    13.9 -> 11.2 ms on one core, 9.1 -> 5.4 ms on two (2 to 6% of the training step).
    No parameters and no persistent buffers: checkpoints are unchanged."""

    def __init__(self, num_sparse_features: int) -> None:
        super().__init__(num_sparse_features)
        rows, cols = self.triu_indices
        self.register_buffer("triu_flat", rows * (self.F + 1) + cols, persistent=False)

    def forward(self, dense_features: torch.Tensor, sparse_features: torch.Tensor) -> torch.Tensor:
        if self.F <= 0:
            return dense_features
        combined = torch.cat((dense_features.unsqueeze(1), sparse_features), dim=1)
        interactions = torch.bmm(combined, combined.transpose(1, 2))
        return torch.cat((dense_features, interactions.flatten(1).index_select(1, self.triu_flat)), dim=1)


def _build_dlrm(cfg: ModelConfig, ebc: EmbeddingBagCollection, dense_device: torch.device) -> DLRM:
    if cfg.interaction == "dot":
        dlrm = DLRM(
            embedding_bag_collection=ebc,
            dense_in_features=NUM_DENSE_FEATURES,
            dense_arch_layer_sizes=list(cfg.bottom_mlp),
            over_arch_layer_sizes=list(cfg.top_mlp),
            dense_device=dense_device,
        )
        dlrm.inter_arch = FlatGatherInteraction(dlrm.inter_arch.F).to(dense_device)
        return dlrm
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
    return sum(p.numel() for _, p in dense_named_parameters(model))
