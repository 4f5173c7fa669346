"""What ``dlrm-dist export`` writes and what serves it: the model file and the program.

**Model file** (``model.pt``): ``torch.save`` of a dict of tensors and plain data::

    format      "dlrm_dist.exported_model"      (refuses anything else)
    version     2
    dtype       "fp32" | "fp16" | "int8"         embedding storage
    config      the resolved config (YAML text) of the run that trained it
    source      {checkpoint, step, world_size, sharding_types}: where it came from
    state_dict  the ``DLRM`` / ``DLRM_DCN`` module's tensors; for fp16 / int8 those of
                TorchRec's quantized EmbeddingBagCollection (uint8 rows, int8 with
                each row's scale and bias inline, as fbgemm stores them)
    checksums   {key: XXH3-128 of the tensor's bytes}, checked at load

It is read with ``torch.load(weights_only=True)``: a file holding any other
Python object (a pickled module, or a crafted pickle that would run a command)
is refused before anything in it is built, so loading a model file from
anywhere runs no code from it. :func:`build_serving_model` rebuilds the module
from the config and dtype, the quantized collection constructed directly in
its storage type (never the float tables first), then the tensors are loaded
strictly. Version 1 files pickled the module whole, so they are refused: export
them again from their checkpoint.

**Program** (``model.pt2``): ``torch.export`` of :class:`ServingModule`, which
takes plain tensors instead of a KeyedJaggedTensor, so a server needs only
``torch.export.load`` (with ``import fbgemm_gpu`` first, for its operators).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
import xxhash
import yaml
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_dist.config import Config, ConfigError, parse_config, to_yaml

from dlrm_dist.core.criteo import SPARSE_FEATURE_NAMES
from dlrm_dist.core.errors import UserError
from dlrm_dist.core.files import atomic_path

FORMAT = "dlrm_dist.exported_model"
VERSION = 2
QUANTIZED = ("fp16", "int8")


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
    """Write the model file atomically: a failed save leaves no file behind. Tensors
    and plain data only (see the module docstring)."""
    # A quantized table is a view into fbgemm's one buffer of all tables; torch.save
    # writes a storage once however many views share it.
    state = {k: v.detach() for k, v in exported.model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "dtype": exported.dtype, "config": to_yaml(exported.cfg),
               "source": json.loads(json.dumps(exported.source)), "state_dict": state,
               "checksums": {k: tensor_digest(v) for k, v in state.items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def tensor_digest(t: torch.Tensor) -> str:
    """XXH3-128 of a tensor's bytes. torch.save's zip records a CRC32 per entry but
    torch.load never checks it: bytes flipped inside a tensor load silently."""
    return xxhash.xxh3_128(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()


def _check_tensors(path: Path, state: Dict[str, Any], checksums: Any) -> None:
    if not isinstance(checksums, dict) or set(checksums) != set(state):
        raise ExportedModelError(f"{path}: its checksums do not list its tensors: damaged, or not written by "
                                 "`dlrm-dist export`")
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or tensor_digest(tensor) != checksums[key]:
            raise ExportedModelError(f"{path}: tensor '{key}' does not match the checksum recorded at export "
                                     "(the file is damaged): export it again")


def build_serving_model(cfg: Config, dtype: str) -> nn.Module:
    """The unsharded DLRM / DLRM_DCN of ``cfg`` on CPU, eval mode, its tensors
    uninitialised: tables on the meta device for fp32 (the loaded tensors are
    assigned), TorchRec's quantized collection allocated in ``dtype`` otherwise."""
    from torchrec.modules.embedding_configs import DataType
    from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection

    from dlrm_dist.model import EBC_PATH, build_model

    train_model = build_model(cfg.model, torch.device("cpu"), sparse_device="meta")  # DLRMTrain
    if dtype in QUANTIZED:
        ebc = train_model.get_submodule(EBC_PATH)
        tables = copy.deepcopy(ebc.embedding_bag_configs())
        for table in tables:
            table.data_type = DataType.INT8 if dtype == "int8" else DataType.FP16
        # what torchrec.inference.modules.quantize_embeddings builds (output fp32, its
        # default row alignment), without the float tables it would quantize
        train_model.set_submodule(EBC_PATH, QuantEmbeddingBagCollection(
            tables, ebc.is_weighted(), torch.device("cpu"), output_dtype=torch.float32))
    return train_model.model.eval()  # DLRMTrain adds only the loss


def _unsafe_reason(error: Exception) -> str:
    """The first object torch's weights-only unpickler refused, from its message."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))  # "unsupported GLOBAL posix.system whose module ..."
    return found.group(1) if found else "an object outside torch's weights-only allowlist"


def load_model_file(path: Path) -> ExportedModel:
    """Read a model file written by :func:`save_model_file` with ``weights_only=True``
    and rebuild its module. Not memory-mapped: a quantized model loaded with
    ``mmap=True`` can no longer be ``torch.export``-ed (its packaging fails on the
    mapped fbgemm buffer, torch 2.13)."""
    path = Path(path)
    if not path.is_file():
        raise ExportedModelError(f"{path}: no such model file")
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise ExportedModelError(
            f"{path}: refused: it holds Python objects, not only tensors and plain data ({_unsafe_reason(e)}), "
            "and loading them could run code; `dlrm-dist export` writes no objects (a file of dlrm-dist before "
            "model file version 2 pickled the module: export it again from its checkpoint)") from None
    except Exception as e:  # a truncated zip, not a torch.save file ...
        raise ExportedModelError(f"{path}: not a model file written by `dlrm-dist export` "
                                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ExportedModelError(f"{path}: not a model file written by `dlrm-dist export` "
                                 f"(no '{FORMAT}' format marker)")
    if payload.get("version") != VERSION:
        raise ExportedModelError(f"{path}: model file version {payload.get('version')}; this "
                                 f"dlrm-dist reads version {VERSION}")
    try:
        cfg = parse_config(yaml.safe_load(payload["config"]), f"{path} (its saved config)")
    except (ConfigError, KeyError, yaml.YAMLError) as e:
        raise ExportedModelError(f"{path}: its saved config does not load: {e}") from None
    dtype = payload.get("dtype")
    if dtype not in ("fp32", *QUANTIZED) or not isinstance(payload.get("state_dict"), dict):
        raise ExportedModelError(f"{path}: model file without a known dtype ({dtype!r}) or state_dict")
    _check_tensors(path, payload["state_dict"], payload.get("checksums"))
    model = build_serving_model(cfg, dtype)
    try:  # fp32: assign the loaded tensors (tables on meta); quantized: copy into fbgemm's buffer
        model.load_state_dict(payload["state_dict"], strict=True, assign=dtype not in QUANTIZED)
    except RuntimeError as e:
        raise ExportedModelError(f"{path}: its tensors do not fit the model of its own config "
                                 f"({str(e).splitlines()[0]} ...)") from None
    return ExportedModel(model.eval(), cfg, dtype, payload.get("source", {}))


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
