"""Checkpoints: save and resume with ``torch.distributed.checkpoint`` (DCP).

Layout of ``train.checkpoint_dir`` (default ``<run_dir>/checkpoints``)::

    step-20/        DCP files of every rank (model + optimizer), rank-{r}.json of
                    every rank, config.yaml (the resolved config: ``dlrm-dist
                    export`` rebuilds the model from it), then meta.json (written
                    last: the checkpoint is complete; it lists every other file
                    with its size and checksum, see ``integrity``)
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

Per-rank state DCP does not hold: the optimizer's param groups (their LR and
other hyperparameters) and the LR schedule over them. Ranks can hold different
param groups (the planner may give rank 0 table_column_wise tables and rank 1
those plus a table_wise one: one fused group per sharding type), so each rank
writes its own ``rank-{r}.json`` and loads its own. DCP could carry them as
non-tensor entries, but it keeps one copy per key (rank 0's) and a load on
another world size would miss keys; plain files per rank are simpler to read
and to reason about. On another world size than saved, every rank rebuilds its
schedule from the step instead: a LambdaLR's state is its step (``last_epoch``)
over base LRs the config gives. The fused optimizer's step counter (FBGEMM's
``iter``: Adam's bias correction, row-wise Adagrad's) is in no state dict either:
``rank-{r}.json`` records it (:func:`optimizer_iter_state`) and resume restores
it (:func:`saved_optimizer_iter`).

A save overwrites files in place, so it goes to a fresh ``step-N/`` and only
after every rank's ``dcp.save`` returned and its ``rank-{r}.json`` is written
does rank 0 write ``meta.json`` and move ``latest`` (tmp file + ``os.replace``,
atomic). A save killed half way leaves a ``step-N/`` without ``meta.json`` that
``latest`` never names; the next save of that step deletes it first. A save
that fails (a full disk) raises :class:`CheckpointError` on every rank, after
rank 0 deleted the partial ``step-N/``; ``latest`` still names the previous one.

Before a load every file is checked against ``meta.json`` (``resume``,
``integrity``): a damaged checkpoint stops the run by name before DCP reads a
byte, and nothing in it is unpickled beyond DCP's metadata classes.

The files must be on a file system every rank sees (one host, or NFS / Lustre
on a cluster).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
import yaml
from torch import nn

from dlrm_dist.training import faults
from dlrm_dist.config import Config, ShardingConfig, TableConstraintConfig
from dlrm_dist.training.distributed import DistEnv, collectively, first_error
from dlrm_dist.core.files import write_text_atomic
from dlrm_dist.training.integrity import (CONFIG, DCP_METADATA, HASH, LATEST, META, RANK_STATE, STEP_DIR,
                                          CheckpointDamaged, CheckpointError, SafeLoadPlanner, SafeReader, describe,
                                          rank_files)
from dlrm_dist.training.resume import find_resume, latest_checkpoint, read_meta, resolve_resume, verify_checkpoint
from dlrm_dist.model import feature_name
from dlrm_dist.training.sharding import plan_sharding_types

logger = logging.getLogger(__name__)

MODEL_KEY = "model"  # the app state entry holding the model's state_dict
__all__ = [  # what train.py, export and the tests use; resume / integrity define some of it
    "CONFIG", "LATEST", "META", "MODEL_KEY", "RANK_STATE", "CheckpointDamaged", "CheckpointError", "Checkpointer",
    "config_digest", "find_resume", "latest_checkpoint", "load_checkpoint", "pin_sharding_types", "read_meta",
    "resolve_resume", "run_facts", "warn_if_changed",
]


def config_digest(cfg: Config) -> str:
    """Hash of the sections a resumed run should share with the saved one."""
    parts = {k: dataclasses.asdict(getattr(cfg, k)) for k in ("data", "model", "optim")}
    return hashlib.sha256(yaml.safe_dump(parts, sort_keys=True).encode()).hexdigest()[:16]


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


def _json_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def rank_state(optimizer: Any, lr_scheduler: torch.optim.lr_scheduler.LRScheduler) -> Dict[str, Any]:
    """This rank's state that DCP does not save: its LR schedule and the scalar
    hyperparameters of its optimizer's param groups (``lr``, ``initial_lr`` ...).
    Floats survive JSON exactly (Python writes the shortest repr that reads back equal)."""
    sched = lr_scheduler.state_dict()  # its lr_lambdas are [None ...]: functions are not saved
    groups = [{k: v for k, v in g.items() if k != "params" and _json_scalar(v)} for g in optimizer.param_groups]
    return {"lr_scheduler": sched, "param_groups": groups}


def _no_space(error: BaseException, directory: Path) -> bool:
    """Did a save fail because the disk is full? DCP gathers every rank's exception
    by pickling it, which drops the ``OSError(ENOSPC)`` chained under torch's own
    ("unexpected pos 704 vs 598"), so the file system is asked too."""
    seen = [error] + [f[0] if isinstance(f, tuple) else f for f in getattr(error, "failures", {}).values()]
    for exc in seen:
        while exc is not None:
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "No space left" in str(exc):
                return True
            exc = exc.__cause__ or exc.__context__
    return 0 <= _free_bytes(directory) < 1 << 20


def _free_bytes(directory: Path) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return -1


def _save_failed(error: BaseException, path: Path, env: DistEnv) -> CheckpointError:
    """The error every rank raises when ``dcp.save`` failed; rank 0 removes the partial files."""
    full = _no_space(error, path.parent)  # asked before the partial files are removed
    dist.barrier()  # every rank saw it (DCP raises the same failure on all)
    if env.is_main:
        shutil.rmtree(path, ignore_errors=True)
    latest = latest_checkpoint(path.parent)
    kept = f"; {latest} is still the latest complete checkpoint" if latest else ""
    if full:
        return CheckpointError(f"saving checkpoint {path}: no space left on device "
                               f"({_free_bytes(path.parent) / 2**20:.1f} MiB free there after removing "
                               f"the partial save){kept}")
    failures = getattr(error, "failures", None)  # DCP's: {rank: (exception, traceback)}
    what = "; ".join(f"rank {r}: {type(f[0]).__name__}: {f[0]}" for r, f in sorted(failures.items())) \
        if failures else f"{type(error).__name__}: {error}"
    return CheckpointError(f"saving checkpoint {path} failed: {what}{kept}")


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
        try:
            dcp.save(_app_state(model, optimizer), checkpoint_id=path,
                     storage_writer=faults.storage_writer(path, self.env.rank, step))
            state_file = RANK_STATE.format(rank=self.env.rank)
            write_text_atomic(path / state_file, json.dumps({**rank_state(optimizer, lr_scheduler),
                                                             **optimizer_iter_state(model)}, indent=1))
            written = describe(path, rank_files(path, self.env.rank, state_file))  # sizes and checksums
            failure = ""
        except (Exception, CheckpointException) as e:  # DCP's (a BaseException; raised on every rank) or an OSError
            failure, error, written = f"{type(e).__name__}: {e}", e, {}
        if first_error(failure, self.env):  # every rank learns if any failed; none waits alone
            raise _save_failed(error if failure else RuntimeError("another rank's save failed"),
                               path, self.env)
        everyone: List[Any] = [None] * self.env.world_size
        dist.all_gather_object(everyone, written)
        if self.env.is_main:  # every rank's files are written
            if self.config_yaml:  # before meta.json, which marks the folder complete
                write_text_atomic(path / CONFIG, self.config_yaml)
            files = {name: entry for rank_written in everyone for name, entry in rank_written.items()}
            files.update(describe(path, [DCP_METADATA] + ([CONFIG] if self.config_yaml else [])))
            meta = {"step": step, "epoch": epoch, **self.meta, "saved_at": time.time(), "hash": HASH,
                    "files": files}
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
            if p.is_dir() and (m := STEP_DIR.fullmatch(p.name)) and int(m.group(1)) <= newest
        )
        complete = [p for _, p in steps if (p / META).is_file()]
        keep = set(complete[-self.keep:]) if self.keep else set(complete)
        for _, p in steps:
            if p not in keep:
                shutil.rmtree(p, ignore_errors=True)


OPTIMIZER_ITER = "fbgemm_iter"  # the rank-{r}.json entry


def optimizer_iter_state(model: nn.Module) -> Dict[str, Optional[int]]:
    """FBGEMM's step counter ``iter`` of this rank's fused tables, for ``rank-{r}.json``.

    Why it must be saved rather than derived from the step: FBGEMM advances it on
    every forward of a table-batched module, evaluation's included (Adam, row-wise
    Adagrad and the other counter-based optimizers; plain Adagrad and SGD leave it
    at 0), so with ``train.eval_every`` it runs ahead of the training step. All of
    a rank's modules see the same forwards; None when the rank has no fused table.

    TorchRec has no public accessor: a sharded collection keeps its lookups (which
    hold FBGEMM's modules) in a plain list, ``_lookups``, that ``modules()`` does
    not walk. The checkpoint test fails if a TorchRec release moves it (no counter)."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import SplitTableBatchedEmbeddingBagsCodegen

    iters = [int(tbe.iter.max()) for m in model.modules() for lookup in getattr(m, "_lookups", ())
             for tbe in lookup.modules()
             if isinstance(tbe, SplitTableBatchedEmbeddingBagsCodegen) and tbe.iter.numel()]
    return {OPTIMIZER_ITER: max(iters) if iters else None}


def saved_optimizer_iter(path: Path, meta: Dict[str, Any]) -> int:
    """The ``iter`` to resume FBGEMM's fused optimizers at: the one saved (every rank ran
    the same forwards, so any world size takes the largest of the ranks'), or the
    step for a checkpoint saved before the counter was recorded."""
    saved = [json.loads(f.read_text()).get(OPTIMIZER_ITER) for f in path.glob(RANK_STATE.format(rank="*"))]
    saved = [i for i in saved if i is not None]
    return max(saved) if saved else meta["step"]


def restore_rank_state(path: Path, meta: Dict[str, Any], optimizer: Any,
                       lr_scheduler: torch.optim.lr_scheduler.LambdaLR, env: DistEnv) -> str:
    """This rank's LR schedule and param-group hyperparameters: from its own
    ``rank-{r}.json`` on the world size it was saved on, else rebuilt from the step.
    Returns how ("rank-0.json" or "rebuilt from step N") for the log."""
    step = meta["step"]
    file = path / RANK_STATE.format(rank=env.rank)
    saved = None
    if meta.get("world_size") == env.world_size:  # its own file must be there: no silent fallback
        try:
            saved = json.loads(file.read_text())
        except FileNotFoundError:
            raise CheckpointDamaged(path, [f"{file.name} is missing (saved on {env.world_size} ranks, "
                                           f"each writes its own)"]) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointDamaged(path, [f"{file.name} does not read as JSON ({e})"]) from None
    if saved is not None:
        groups = saved["param_groups"]
        if len(groups) != len(optimizer.param_groups):
            raise CheckpointError(f"{file}: {len(groups)} optimizer param groups saved, this rank has "
                                  f"{len(optimizer.param_groups)}: was the sharding plan changed?")
        if saved["lr_scheduler"]["last_epoch"] != step:
            raise CheckpointError(f"{file}: LR schedule at step {saved['lr_scheduler']['last_epoch']}, "
                                  f"checkpoint at step {step}")
        lr_scheduler.load_state_dict(saved["lr_scheduler"])
        for group, values in zip(optimizer.param_groups, groups):
            group.update({k: v for k, v in values.items() if k in group})
        return file.name
    # A LambdaLR is its step over the base LRs (from the config): what step() would
    # have set, computed the way LambdaLR.get_lr does, so the LRs are the same floats.
    lr_scheduler.last_epoch, lr_scheduler._step_count = step, step + 1
    lrs = [base * fn(step) for base, fn in zip(lr_scheduler.base_lrs, lr_scheduler.lr_lambdas)]
    lr_scheduler._last_lr = lrs
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    return f"rebuilt from step {step}"


def load_checkpoint(path: Path, model: nn.Module, optimizer: Any,
                    lr_scheduler: torch.optim.lr_scheduler.LambdaLR, env: DistEnv,
                    verify: bool = True) -> Dict[str, Any]:
    """Load ``path`` into the sharded model, the optimizer and the LR schedule, in
    place, resharding as needed; return its meta (step, epoch ...). Collective.
    ``verify=False`` skips the file check when :func:`find_resume` just did it."""
    meta = verify_checkpoint(path, env) if verify else read_meta(path)
    # KeyedOptimizer.load_state_dict copies into existing state tensors and DCP
    # loads into the tensors it is given, so lazily created state (torch's
    # Adam / Adagrad on the MLPs and data_parallel tables) must exist first: a
    # dummy step with zero gradients. The fused embedding optimizer has its state.
    for _name, opt in optimizer.optimizers:
        if not opt.state:
            opt.init_state()
            opt.zero_grad(set_to_none=True)
    state = _app_state(model, optimizer)
    dcp.load(state, storage_reader=SafeReader(str(path)), planner=SafeLoadPlanner())
    model.load_state_dict(state[MODEL_KEY])
    optimizer.load_state_dict(state["optim"])
    optimizer.set_optimizer_step(saved_optimizer_iter(path, meta))
    how = collectively(lambda: restore_rank_state(path, meta, optimizer, lr_scheduler, env), env)
    logger.info("rank %d: LR schedule and param groups: %s", env.rank, how)
    return meta
