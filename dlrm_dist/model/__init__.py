"""The DLRM model: its blocks, and where its tables are (see ``dlrm``)."""

from dlrm_dist.model.dlrm import (
    EBC_PATH,
    build_model,
    dense_named_parameters,
    dense_parameter_count,
    embedding_bag_collection,
    embedding_bag_configs,
    feature_name,
    table_name,
)

__all__ = [
    "EBC_PATH", "build_model", "dense_named_parameters", "dense_parameter_count", "embedding_bag_collection",
    "embedding_bag_configs", "feature_name", "table_name",
]
