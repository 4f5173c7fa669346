"""``dlrm-dist export``: a sharded training checkpoint -> one single-process model.

    dlrm-dist export CHECKPOINT --output model.pt [--dtype fp32|fp16|int8]
                     [--program model.pt2] [--config FILE]

CHECKPOINT is a ``step-N`` folder (or a checkpoint folder / run folder, whose
``latest`` checkpoint is taken). Whatever world size and sharding types wrote
it, ``torch.distributed.checkpoint`` (DCP) recorded every table's global shape
and each shard's offsets; its reader assembles any requested full tensor from
the shards without a process group (``dcp.load(..., no_dist=True)``).

Memory: the model is built with its tables on the meta device and each table
is allocated and read on its own, so the peak is the exported model plus the
shards of one table in flight, never two copies of the model (a 100 GB model
needs ~100 GB plus its largest table). Optimizer state is never read. fp16 /
int8 quantize after loading with TorchRec's quantized EmbeddingBagCollection
(``torchrec.inference.modules.quantize_embeddings``), which holds the float
tables and the quantized ones (per table, then in fbgemm's buffer) at once.

The model comes from the config the run saved beside the checkpoint
(``step-N/config.yaml``; for checkpoints older than that, the run folder's
``config.yaml`` two levels up, or ``--config``). Every tensor the model has must
be in the checkpoint with the same shape and vice versa, else it stops naming
the tensor: a config that does not match would otherwise load garbage.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch import nn

from dlrm_dist.training.checkpoint import CONFIG, LATEST, META, MODEL_KEY, RANK_STATE, latest_checkpoint, read_meta
from dlrm_dist.training.integrity import CheckpointDamaged, CheckpointError, SafeLoadPlanner, SafeReader, check_files
from dlrm_dist.config import Config, ConfigError, load_config
from dlrm_dist.core.errors import entry_point
from dlrm_dist.model import EBC_PATH, build_model, embedding_bag_collection
from dlrm_dist.serving.program import ExportedModel, export_program, program_example, save_model_file

DTYPES = {"fp16": torch.float16, "int8": torch.qint8}  # fp32: no quantization


@dataclass
class SavedCheckpoint:
    path: Path
    cfg: Config
    config_path: Path
    meta: Dict[str, Any]
    shapes: Dict[str, torch.Size]
    """Global shape of every model tensor in the checkpoint, by DLRMTrain state_dict key."""


def _step_folder(path: Path) -> Path:
    """``path`` itself, or the newest complete checkpoint of a checkpoint / run folder."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    for directory in (path, path / "checkpoints"):
        if (directory / LATEST).is_file():
            found = latest_checkpoint(directory)
            assert found is not None
            return found
    return path


def _saved_config(path: Path, override: Optional[Path]) -> Path:
    candidates = [override] if override else [path / CONFIG, path.parent.parent / CONFIG]
    for candidate in candidates:
        if candidate is not None and candidate.is_file():
            return candidate
    raise CheckpointError(f"{path}: no {CONFIG} beside it or in its run folder ({path.parent.parent}); "
                          "pass the run's config with --config FILE")


def open_checkpoint(path: Path, config: Optional[Path] = None) -> SavedCheckpoint:
    """Check that ``path`` is a complete dlrm-dist checkpoint and read its facts
    (meta.json, DCP metadata, the config that made it); no tensor is read."""
    path = _step_folder(Path(path))
    has_dcp_files = (path / ".metadata").is_file() or any(path.glob("*.distcp"))
    if not has_dcp_files:
        raise CheckpointError(f"{path}: not a torch.distributed.checkpoint folder (no .metadata, no "
                              "*.distcp); pass a step-N folder written by `dlrm-dist train`")
    if not (path / ".metadata").is_file() or not (path / META).is_file():
        missing = META if (path / ".metadata").is_file() else ".metadata"
        raise CheckpointError(f"{path}: incomplete checkpoint: no {missing} (its save did not finish, "
                              "or another program wrote it)")
    meta = read_meta(path)  # CheckpointDamaged if it does not parse
    verify_model_files(path, meta, read_config=config is None)
    try:
        metadata = SafeReader(str(path)).read_metadata()
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    prefix = MODEL_KEY + "."
    shapes = {k[len(prefix):]: v.size for k, v in metadata.state_dict_metadata.items()
              if k.startswith(prefix) and hasattr(v, "size")}
    if not isinstance(meta, dict) or "step" not in meta or not any(k.startswith(EBC_PATH) for k in shapes):
        raise CheckpointError(f"{path}: not a dlrm-dist checkpoint (no '{prefix}{EBC_PATH}' tables "
                              f"or no step in {META})")
    config_path = _saved_config(path, config)
    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        raise CheckpointError(f"{path}: its config does not load: {e}") from None
    return SavedCheckpoint(path, cfg, config_path, meta, shapes)


def verify_model_files(path: Path, meta: Dict[str, Any], read_config: bool = True) -> None:
    """Every file export reads (all but the per-rank LR state, and config.yaml when
    ``--config`` replaces it) has the size and checksum meta.json recorded at save,
    checked before any is read; else :class:`CheckpointDamaged`. An edited config.yaml
    fails too: pass the changed config with ``--config`` instead."""
    files = meta.get("files")
    if files is None:
        logging.getLogger(__name__).warning("%s was saved without file checksums (by an older dlrm-dist): "
                                            "not verified", path)
        return
    rank_state = RANK_STATE.format(rank="*")
    skipped = [rank_state] + ([] if read_config else [CONFIG])
    problems = check_files(path, meta, [n for n in files if not any(fnmatch.fnmatch(n, s) for s in skipped)])
    if problems:
        raise CheckpointDamaged(path, problems)


def check_model_matches(ckpt: SavedCheckpoint, model: nn.Module) -> None:
    """Every tensor of ``model`` in the checkpoint with the same shape, and nothing more."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    where = f"the model of {ckpt.config_path}"
    for key, shape in expected.items():
        if key not in ckpt.shapes:
            raise CheckpointError(f"{ckpt.path}: has no tensor '{key}', which {where} has: "
                                  "the config does not match the checkpoint")
        if tuple(ckpt.shapes[key]) != tuple(shape):
            raise CheckpointError(f"{ckpt.path}: '{key}' is {list(ckpt.shapes[key])} there but "
                                  f"{list(shape)} in {where}: the config does not match the checkpoint")
    extra = sorted(set(ckpt.shapes) - set(expected))
    if extra:
        raise CheckpointError(f"{ckpt.path}: holds {len(extra)} tensor(s) {where} lacks, e.g. '{extra[0]}': "
                              "the config does not match the checkpoint")


def _read(path: Path, tensors: Dict[str, torch.Tensor]) -> None:
    """Fill ``tensors`` (DLRMTrain state_dict keys) in place from the checkpoint."""
    state = {MODEL_KEY: dict(tensors)}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=SafeReader(str(path)), planner=SafeLoadPlanner(), no_dist=True)
    for key, tensor in tensors.items():
        if state[MODEL_KEY][key] is not tensor:  # DCP may hand back a new tensor
            tensor.copy_(state[MODEL_KEY][key])


def load_unsharded(ckpt: SavedCheckpoint) -> nn.Module:
    """The checkpoint's DLRM / DLRM_DCN on CPU, unsharded, one table at a time."""
    train_model = build_model(ckpt.cfg.model, torch.device("cpu"), sparse_device="meta")
    check_model_matches(ckpt, train_model)
    ebc = embedding_bag_collection(train_model)
    for name, bag in ebc.embedding_bags.items():
        bag.to_empty(device="cpu")
        with torch.no_grad():
            _read(ckpt.path, {f"{EBC_PATH}.embedding_bags.{name}.weight": bag.weight})
    dense = {k: v for k, v in train_model.state_dict().items() if not k.startswith(EBC_PATH + ".")}
    with torch.no_grad():
        _read(ckpt.path, dense)
    return train_model.model.eval()  # DLRMTrain adds only the loss


def quantize(model: nn.Module, dtype: str) -> nn.Module:
    """Swap the EmbeddingBagCollection for TorchRec's quantized one (fp16 / int8 rows,
    int8 with a per-row scale and bias); the MLPs stay fp32."""
    if dtype == "fp32":
        return model
    from torchrec.inference.modules import quantize_embeddings

    model = quantize_embeddings(model, dtype=DTYPES[dtype], inplace=True)
    wrapper = nn.Module()  # the model's own accessor expects DLRMTrain's ``model.`` level
    wrapper.model = model
    # The quantized collection keeps the per-table arrays it was built from, only to
    # convert managed-collision collections later; the tables live in its fbgemm
    # kernel's buffer. Dropped: otherwise the model holds (and saves) them twice.
    embedding_bag_collection(wrapper)._table_name_to_quantized_weights = None
    return model


def export(checkpoint: Path, output: Path, dtype: str = "fp32", program: Optional[Path] = None,
           config: Optional[Path] = None) -> Dict[str, Any]:
    """Checkpoint -> model file (and serving program); returns what happened, with timings."""
    t0 = time.perf_counter()
    ckpt = open_checkpoint(checkpoint, config)
    model = quantize(load_unsharded(ckpt), dtype)
    source = {"checkpoint": str(ckpt.path.resolve()), "step": ckpt.meta["step"],
              "world_size": ckpt.meta.get("world_size"), "sharding_types": ckpt.meta.get("sharding_types")}
    t1 = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    save_model_file(output, ExportedModel(model, ckpt.cfg, dtype, source))
    report = {"checkpoint": str(ckpt.path), "output": str(output), "dtype": dtype, "step": ckpt.meta["step"],
              "load_s": t1 - t0, "save_s": time.perf_counter() - t1, "bytes": output.stat().st_size}
    if program is not None:
        t2 = time.perf_counter()
        export_program(model, program_example(64, ckpt.cfg.model.table_sizes()), program)
        report.update(program=str(program), program_s=time.perf_counter() - t2,
                      program_bytes=program.stat().st_size)
    return report


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dlrm-dist export", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path, help="a step-N checkpoint folder (or a run / checkpoint "
                   "folder: its latest checkpoint)")
    p.add_argument("--output", type=Path, required=True, help="model file to write (e.g. model.pt)")
    p.add_argument("--dtype", choices=("fp32", *DTYPES), default="fp32", help="embedding storage")
    p.add_argument("--program", type=Path, default=None,
                   help="also write a torch.export program for serving (e.g. model.pt2)")
    p.add_argument("--config", type=Path, default=None,
                   help="the run's config, for checkpoints saved without config.yaml")
    return p.parse_args(argv)


@entry_point("dlrm-dist export")
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    report = export(args.checkpoint, args.output, args.dtype, args.program, args.config)  # UserError: exit 2
    print(f"exported step {report['step']} of {report['checkpoint']} to {report['output']} "
          f"({report['dtype']}, {report['bytes'] / 1e6:.1f} MB): read in {report['load_s']:.1f} s, "
          f"written in {report['save_s']:.1f} s")
    if "program" in report:
        print(f"serving program {report['program']} ({report['program_bytes'] / 1e6:.1f} MB) "
              f"in {report['program_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
