"""``build_data``: the configured source's train / val / test splits of this rank."""

from __future__ import annotations

from typing import TYPE_CHECKING, List

from dlrm_dist.config import DataConfig
from dlrm_dist.data.contract import DataSplits
from dlrm_dist.core.errors import DataError

if TYPE_CHECKING:
    from dlrm_dist.training.distributed import DistEnv


def build_data(cfg: DataConfig, batch_size: int, table_sizes: List[int], env: "DistEnv") -> DataSplits:
    """Train / val / test splits of this rank for the configured source. Cheap: a
    Criteo folder is only opened (memory-mapped) and checked, so training builds
    the data before it plans and shards the model and a wrong ``data.path`` fails
    in a second. Raises :class:`DataError` naming the key or folder."""
    eval_bs = cfg.eval_batch_size or batch_size
    if cfg.source == "random":
        from dlrm_dist.data.random_source import RandomSplit

        def split(n: int, bs: int, salt: int) -> RandomSplit:
            return RandomSplit(bs, n // (env.world_size * bs), table_sizes, cfg.multi_hot_sizes,
                               seed=cfg.seed * 1000 + salt * 100 + env.rank)

        splits = DataSplits(split(cfg.train_samples, batch_size, 0), split(cfg.val_samples, eval_bs, 1),
                            split(cfg.test_samples, eval_bs, 2))
    elif cfg.source == "synthetic":
        from dlrm_dist.data.synthetic import SyntheticDataset
        from dlrm_dist.core.teacher import Teacher, teacher_auc

        teacher = Teacher(table_sizes, seed=cfg.seed, zipf_exponent=cfg.zipf_exponent, scale=cfg.teacher_scale)

        def split(name: str, n: int, bs: int) -> SyntheticDataset:  # type: ignore[misc]
            return SyntheticDataset(teacher, name, n, bs, env.rank, env.world_size, table_sizes,
                                    cfg.multi_hot_sizes, cfg.multi_hot_distribution)

        splits = DataSplits(split("train", cfg.train_samples, batch_size), split("val", cfg.val_samples, eval_bs),
                            split("test", cfg.test_samples, eval_bs))
        used = len(splits.val) * eval_bs * env.world_size  # the samples validation reads
        splits.info["teacher_val_auc"] = teacher_auc(teacher, "val", used) if used else float("nan")
    else:
        from dlrm_dist.data.criteo import build_criteo_splits

        splits = build_criteo_splits(cfg, batch_size, eval_bs, table_sizes, env)
    _check_nonempty(splits, batch_size, eval_bs, env.world_size)
    return splits


def _check_nonempty(splits: DataSplits, batch_size: int, eval_batch_size: int, world_size: int) -> None:
    for name, split, bs in (("train", splits.train, batch_size), ("val", splits.val, eval_batch_size),
                            ("test", splits.test, eval_batch_size)):
        if len(split) == 0:
            raise DataError(
                f"data: the {name} split gives no full batch per rank "
                f"({world_size} ranks x batch {bs}); add samples or lower the batch size"
            )
