"""Data sources. Each yields TorchRec ``Batch`` objects, one rank's share, with
every rank getting the same number of batches per split (see ``build_data``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Sized

from dlrm_dist.config import DataConfig

if TYPE_CHECKING:  # torch is imported lazily: `dlrm-dist preprocess` and its workers never need it
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    from dlrm_dist.distributed import DistEnv


@dataclass
class DataSplits:
    train: IterableDataset
    val: IterableDataset
    test: IterableDataset
    info: Dict[str, float] = field(default_factory=dict)
    """Facts about the data worth reporting, e.g. ``teacher_val_auc``."""


def _check_nonempty(splits: DataSplits, batch_size: int, eval_batch_size: int, env: DistEnv) -> None:
    for name, ds, bs in (("train", splits.train, batch_size), ("val", splits.val, eval_batch_size),
                         ("test", splits.test, eval_batch_size)):
        if num_batches(ds) == 0:
            raise ValueError(
                f"data: the {name} split gives no full batch per rank "
                f"({env.world_size} ranks x batch {bs}); add samples or lower the batch size"
            )


def build_data(cfg: DataConfig, batch_size: int, table_sizes: List[int], env: DistEnv) -> DataSplits:
    """Train / val / test datasets of this rank for the configured source."""
    eval_bs = cfg.eval_batch_size or batch_size
    if cfg.source == "random":
        from dlrm_dist.data.random_source import RandomSplit

        def split(n: int, bs: int, salt: int) -> RandomSplit:
            return RandomSplit(bs, n // (env.world_size * bs), table_sizes, cfg.multi_hot_sizes,
                               seed=cfg.seed * 1000 + salt * 100 + env.rank)

        splits = DataSplits(split(cfg.train_samples, batch_size, 0), split(cfg.val_samples, eval_bs, 1),
                            split(cfg.test_samples, eval_bs, 2))
    elif cfg.source == "synthetic":
        from dlrm_dist.data.synthetic import SyntheticDataset, Teacher, teacher_auc

        teacher = Teacher(table_sizes, seed=cfg.seed, zipf_exponent=cfg.zipf_exponent, scale=cfg.teacher_scale)

        def split(name: str, n: int, bs: int) -> SyntheticDataset:
            return SyntheticDataset(teacher, name, n, bs, env.rank, env.world_size, table_sizes,
                                    cfg.multi_hot_sizes, cfg.multi_hot_distribution)

        splits = DataSplits(split("train", cfg.train_samples, batch_size), split("val", cfg.val_samples, eval_bs),
                            split("test", cfg.test_samples, eval_bs))
        used = len(splits.val) * eval_bs * env.world_size  # the samples validation reads
        splits.info["teacher_val_auc"] = teacher_auc(teacher, "val", used) if used else float("nan")
    else:
        from dlrm_dist.data.criteo import build_criteo_splits

        splits = build_criteo_splits(cfg, batch_size, eval_bs, table_sizes, env)
    _check_nonempty(splits, batch_size, eval_bs, env)
    return splits


def make_loader(dataset: IterableDataset, device: torch.device) -> DataLoader:
    """Batches arrive ready-made; on CUDA they are pinned so the pipeline's copy is async."""
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=None, pin_memory=device.type == "cuda")


def num_batches(dataset: IterableDataset) -> int:
    assert isinstance(dataset, Sized)
    return len(dataset)
