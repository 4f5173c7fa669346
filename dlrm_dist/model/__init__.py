from dlrm_dist.model.dlrm import build_model, embedding_bag_configs

__all__ = ["build_model", "embedding_bag_configs"]
