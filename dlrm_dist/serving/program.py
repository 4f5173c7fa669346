"""What ``dlrm-dist export`` writes and what serves it: the model file and the program.

**Model file** (``model.pt``): ``torch.save`` of a dict::

    format    "dlrm_dist.exported_model"      (refuses anything else)
    version   1
    dtype     "fp32" | "fp16" | "int8"         embedding storage of ``model``
    config    the resolved config (YAML text) of the run that trained it
    source    {checkpoint, step, world_size, sharding_types}: where it came from
    model     the torchrec ``DLRM`` / ``DLRM_DCN`` module, unsharded, eval mode;
              for fp16 / int8 its EmbeddingBagCollection is TorchRec's quantized one
              (``torchrec.quant.embedding_modules.EmbeddingBagCollection``)

The module is pickled whole (not a state_dict) because a quantized
EmbeddingBagCollection can only be rebuilt from a float one: loading needs
torch, torchrec and fbgemm-gpu, but neither this package nor a process group.
Pickles run code when loaded: load only model files you trust.

**Program** (``model.pt2``): ``torch.export`` of :class:`ServingModule`, which
takes plain tensors instead of a KeyedJaggedTensor, so a server needs only
``torch.export.load`` (with ``import fbgemm_gpu`` first, for its operators).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
import yaml
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_dist.config import Config, ConfigError, parse_config, to_yaml

from dlrm_dist.core.criteo import SPARSE_FEATURE_NAMES
from dlrm_dist.core.errors import UserError
from dlrm_dist.core.files import atomic_path

FORMAT = "dlrm_dist.exported_model"
VERSION = 1


class ExportedModelError(UserError, ValueError):
    """A model file is missing or not one ``dlrm-dist export`` wrote; the message names it."""


@dataclasses.dataclass
class ExportedModel:
    model: nn.Module
    """DLRM / DLRM_DCN: ``model(dense (B, 13), KJT) -> logits (B, 1)``."""
    cfg: Config
    dtype: str
    source: Dict[str, Any]


def save_model_file(path: Path, exported: ExportedModel) -> None:
    """Write the model file atomically: a failed save leaves no file behind."""
    payload = {"format": FORMAT, "version": VERSION, "dtype": exported.dtype,
               "config": to_yaml(exported.cfg), "source": exported.source, "model": exported.model}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_model_file(path: Path) -> ExportedModel:
    """Read a model file written by :func:`save_model_file`. Not memory-mapped: a
    quantized model loaded with ``mmap=True`` can no longer be ``torch.export``-ed
    (its packaging fails on the mapped fbgemm buffer, torch 2.13)."""
    path = Path(path)
    if not path.is_file():
        raise ExportedModelError(f"{path}: no such model file")
    try:
        payload = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as e:  # a truncated zip, a pickle of something else ...
        raise ExportedModelError(f"{path}: not a model file written by `dlrm-dist export` ({e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ExportedModelError(f"{path}: not a model file written by `dlrm-dist export` "
                                 f"(no '{FORMAT}' format marker)")
    if payload.get("version") != VERSION:
        raise ExportedModelError(f"{path}: model file version {payload.get('version')}; this "
                                 f"dlrm-dist reads version {VERSION}")
    try:
        cfg = parse_config(yaml.safe_load(payload["config"]), f"{path} (its saved config)")
    except ConfigError as e:
        raise ExportedModelError(str(e)) from None
    model = payload["model"].eval()
    return ExportedModel(model, cfg, payload["dtype"], payload["source"])


class ServingModule(nn.Module):
    """Plain tensors in, click probabilities out: what a server calls.

    Args of ``forward``:
        dense: (B, 13) float32, transformed as by ``dlrm-dist preprocess``
            (log(1 + max(x, 0))).
        values: int64 ids of all features, feature-major: cat_0's ids of samples
            0 .. B-1, then cat_1's ...; each id already in [0, rows of its table)
            (``dlrm-dist predict`` takes ``id % rows``, as training does).
        lengths: (26 * B,) int32, ids per (feature, sample) in the same order;
            all ones for one-hot Criteo.
    Returns: (B,) float32 probabilities.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        features = KeyedJaggedTensor(keys=SPARSE_FEATURE_NAMES, values=values, lengths=lengths)
        return torch.sigmoid(self.model(dense, features)).squeeze(-1)


def serving_inputs(dense: torch.Tensor, features: KeyedJaggedTensor) -> Tuple[torch.Tensor, ...]:
    """A batch as :class:`ServingModule` takes it."""
    return dense, features.values(), features.lengths().to(torch.int32)


def export_program(model: nn.Module, example: Tuple[torch.Tensor, ...], path: Path) -> None:
    """``torch.export`` :class:`ServingModule` with a dynamic batch size and id count
    and save it atomically. Non-strict: TorchRec's KJT is traced as Python."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    ids = torch.export.Dim("ids", min=1)
    dynamic: Dict[str, Dict[int, Any]] = {"dense": {0: batch}, "values": {0: ids},
                                           "lengths": {0: len(SPARSE_FEATURE_NAMES) * batch}}
    program = torch.export.export(ServingModule(model).eval(), example, dynamic_shapes=dynamic, strict=False)
    with atomic_path(path) as tmp:
        torch.export.save(program, str(tmp))


def program_example(batch_size: int, table_sizes: List[int]) -> Tuple[torch.Tensor, ...]:
    """A one-hot example batch to trace with (random ids in range)."""
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, rows, (batch_size,), generator=g) for rows in table_sizes]
    lengths = torch.ones(len(table_sizes) * batch_size, dtype=torch.int32)
    return torch.rand(batch_size, 13, generator=g), torch.cat(ids), lengths
