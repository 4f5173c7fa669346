"""Checkpoints: save and resume with ``torch.distributed.checkpoint`` (DCP).

Layout of ``train.checkpoint_dir`` (default ``<run_dir>/checkpoints``)::

    step-20/        DCP files of every rank (model + optimizer), config.yaml (the
                    resolved config: ``dlrm-dist export`` rebuilds the model from
                    it), then meta.json
    step-40/
    latest          one line, "step-40": the newest *complete* checkpoint

DCP saves what each rank holds: its shards of the tables (ShardedTensor, with
their global offsets), the DDP-replicated MLPs once, and the optimizer state
the same way (the fused embedding optimizer's per-table state is sharded like
its table). Loading asks each rank for the pieces of its own shards, so tables
reshard on resume across world sizes and between table_wise / column_wise /
table_column_wise. Not across data_parallel <-> sharded: a data_parallel
table's optimizer state lives in another optimizer (``embedding_dp``, see
``optim.build_optimizer``) under other keys. So ``meta.json`` records each
table's sharding type and :func:`pin_sharding_types` makes the resumed plan use
the same ones.

A save overwrites files in place, so it goes to a fresh ``step-N/`` and only
after every rank's ``dcp.save`` returned does rank 0 write ``meta.json`` and
move ``latest`` (tmp file + ``os.replace``, atomic). A save killed half way
leaves a ``step-N/`` without ``meta.json`` that ``latest`` never names; the
next save of that step deletes it first.

The files must be on a file system every rank sees (one host, or NFS / Lustre
on a cluster).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import yaml
from torch import nn

from dlrm_dist.config import Config, ShardingConfig, TableConstraintConfig
from dlrm_dist.distributed import DistEnv, broadcast_object
from dlrm_dist.errors import UserError
from dlrm_dist.files import write_text_atomic
from dlrm_dist.model import feature_name
from dlrm_dist.sharding import plan_sharding_types

logger = logging.getLogger(__name__)

MODEL_KEY = "model"  # the app state entry holding the model's state_dict
LATEST = "latest"
META = "meta.json"
CONFIG = "config.yaml"
_STEP_DIR = re.compile(r"step-(\d+)")


class CheckpointError(UserError):
    """A checkpoint to resume from is missing or incomplete; the message names the path."""


def config_digest(cfg: Config) -> str:
    """Hash of the sections a resumed run should share with the saved one."""
    parts = {k: dataclasses.asdict(getattr(cfg, k)) for k in ("data", "model", "optim")}
    return hashlib.sha256(yaml.safe_dump(parts, sort_keys=True).encode()).hexdigest()[:16]


def latest_checkpoint(directory: Path) -> Optional[Path]:
    """The complete checkpoint ``directory/latest`` names, or None when there is none."""
    pointer = directory / LATEST
    if not pointer.is_file():
        return None
    path = directory / pointer.read_text().strip()
    if not (path / META).is_file():
        raise CheckpointError(f"{pointer} names {path}, which holds no complete checkpoint ({META} missing)")
    return path


def resolve_resume(resume: str, directory: Path) -> Optional[Path]:
    """``train.resume`` -> the ``step-N`` folder to load, or None to start fresh."""
    if not resume:
        return None
    if resume == LATEST:
        return latest_checkpoint(directory)
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"train.resume: no checkpoint folder {path}")
    if not (path / META).is_file():
        raise CheckpointError(f"train.resume: {path} is not a complete checkpoint ({META} missing; "
                              "was its save interrupted?)")
    return path


def read_meta(path: Path) -> Dict[str, Any]:
    return json.loads((path / META).read_text())


def find_resume(resume: str, directory: Path, env: DistEnv) -> Optional[Path]:
    """:func:`resolve_resume` decided on rank 0 for all ranks; a problem raises the
    same :class:`CheckpointError` on every rank (no rank is left waiting in a collective)."""
    found, problem = None, ""
    if env.is_main:
        try:
            found = resolve_resume(resume, directory)
        except CheckpointError as e:
            problem = str(e)
    found, problem = broadcast_object((found, problem), env)
    if problem:
        raise CheckpointError(problem)
    if resume == LATEST and found is None and env.is_main:
        logger.info("train.resume=latest: no checkpoint in %s yet; starting fresh", directory)
    return found


def run_facts(cfg: Config, plan: Any, env: DistEnv) -> Dict[str, Any]:
    """What meta.json records about the run besides step, epoch and LR schedule."""
    return {"world_size": env.world_size, "sharding_types": plan_sharding_types(plan),
            "config_digest": config_digest(cfg)}


def warn_if_changed(meta: Dict[str, Any], cfg: Config, env: DistEnv) -> None:
    """A resume is exact only with the same data, model, optimizer and world size."""
    if not env.is_main:
        return
    if meta["config_digest"] != config_digest(cfg):
        logger.warning("resuming with other data / model / optim settings than the checkpoint was saved with")
    if meta["world_size"] != env.world_size:
        logger.warning("resuming on %d ranks a checkpoint saved on %d: tables reshard exactly, but each "
                       "rank's slice of the data changes, so training does not repeat the original run",
                       env.world_size, meta["world_size"])


def pin_sharding_types(cfg: ShardingConfig, saved: Dict[str, str], source: str = "meta.json") -> ShardingConfig:
    """``cfg`` with each table constrained to the sharding type it was saved with
    (``saved``: {table name: "table_wise", ...}), kernels constraints kept. A table
    name this model does not have (a checkpoint of another model, or of a model
    whose tables were renamed) is an error, never silently unpinned."""
    tables = dict(cfg.tables)
    for table, kind in saved.items():
        try:
            feature = feature_name(table)
        except ValueError as e:
            raise CheckpointError(f"{source}: sharding_types: {e}; was it saved by another model?") from None
        old = tables.get(feature, TableConstraintConfig())
        allowed = old.sharding_types or cfg.sharding_types
        if allowed and kind not in allowed:
            logger.warning("%s: checkpoint was saved %s; config allows %s; using %s", feature, kind, allowed, kind)
        tables[feature] = dataclasses.replace(old, sharding_types=[kind])
    return dataclasses.replace(cfg, tables=tables)


def _app_state(model: nn.Module, optimizer: Any) -> Dict[str, Any]:
    return {MODEL_KEY: model.state_dict(), "optim": optimizer.state_dict()}


class Checkpointer:
    """Saves ``step-N/`` checkpoints into ``directory`` and keeps the newest ``keep``."""

    def __init__(self, directory: Path, keep: int, env: DistEnv, meta: Dict[str, Any],
                 config_yaml: str = "") -> None:
        self.directory, self.keep, self.env = Path(directory), keep, env
        self.meta = meta  # fixed facts of the run: world size, sharding types, config digest
        self.config_yaml = config_yaml  # the resolved config, saved beside each checkpoint

    def save(self, step: int, epoch: int, model: nn.Module, optimizer: Any,
             lr_scheduler: torch.optim.lr_scheduler.LRScheduler) -> Path:
        """Collective: every rank calls it at the same step."""
        path = self.directory / f"step-{step}"
        latest = latest_checkpoint(self.directory)
        if latest is not None and latest.resolve() == path.resolve():
            return path  # e.g. resumed at the last step: this very state is the checkpoint
        if self.env.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            if path.exists():  # what a killed save left: DCP would overwrite it piecemeal
                shutil.rmtree(path)
        dist.barrier()
        dcp.save(_app_state(model, optimizer), checkpoint_id=path)
        dist.barrier()  # every rank's files are written
        if self.env.is_main:
            if self.config_yaml:  # before meta.json, which marks the folder complete
                write_text_atomic(path / CONFIG, self.config_yaml)
            meta = {"step": step, "epoch": epoch, "lr_scheduler": lr_scheduler.state_dict(), **self.meta}
            write_text_atomic(path / META, json.dumps(meta, indent=1))
            write_text_atomic(self.directory / LATEST, path.name + "\n")
            self._prune(step)
        dist.barrier()
        logger.info("checkpoint saved: %s", path)
        return path

    def _prune(self, newest: int) -> None:
        """Delete checkpoints older than the newest ``keep`` complete ones, and
        incomplete ones older than the newest (killed saves)."""
        steps = sorted(
            (int(m.group(1)), p) for p in self.directory.iterdir()
            if p.is_dir() and (m := _STEP_DIR.fullmatch(p.name)) and int(m.group(1)) <= newest
        )
        complete = [p for _, p in steps if (p / META).is_file()]
        keep = set(complete[-self.keep:]) if self.keep else set(complete)
        for _, p in steps:
            if p not in keep:
                shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(path: Path, model: nn.Module, optimizer: Any,
                    lr_scheduler: torch.optim.lr_scheduler.LRScheduler) -> Dict[str, Any]:
    """Load ``path`` into the sharded model, the optimizer and the LR schedule, in
    place, resharding as needed; return its meta (step, epoch ...). Collective."""
    meta = read_meta(path)
    # KeyedOptimizer.load_state_dict copies into existing state tensors and DCP
    # loads into the tensors it is given, so lazily created state (torch's
    # Adam / Adagrad on the MLPs and data_parallel tables) must exist first: a
    # dummy step with zero gradients. The fused embedding optimizer has its state.
    for _name, opt in optimizer.optimizers:
        if not opt.state:
            opt.init_state()
            opt.zero_grad(set_to_none=True)
    state = _app_state(model, optimizer)
    dcp.load(state, checkpoint_id=path)
    model.load_state_dict(state[MODEL_KEY])
    optimizer.load_state_dict(state["optim"])
    # FBGEMM's step counter (Adam's bias correction) is a non-persistent buffer.
    optimizer.set_optimizer_step(meta["step"])
    lr_scheduler.load_state_dict(meta["lr_scheduler"])
    for group, lr in zip(optimizer.param_groups, lr_scheduler.get_last_lr()):
        group["lr"] = lr  # the scheduler sets it only at its next step
    return meta
