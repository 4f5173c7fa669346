"""Which checkpoint a run resumes from, and that it is sound before anything is loaded.

``train.resume`` names ``latest`` (what ``checkpoint_dir/latest`` points at) or a
``step-N`` folder. Rank 0 resolves it; then every rank checks a share of its
files against ``meta.json`` (:func:`verify_checkpoint`, see ``integrity``). A
damaged checkpoint named by path stops the run on every rank with one line;
under ``latest`` the newest older complete checkpoint that verifies is taken
instead, the damaged folder moved aside (renamed, never deleted) and ``latest``
pointed at the one taken, so this run's own save of that step starts clean.

``python -m dlrm_dist.training.resume TRAIN_ARGS`` runs the cheap part of that
check (every listed file there, with its size) in one process, before a
restarting launcher starts torchrun: torchrun restarts a failed group whatever
its exit code, so a checkpoint cut short or missing a file must stop the job
before the first attempt, or every attempt would meet it again.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch.distributed as dist

from dlrm_dist.core.errors import entry_point
from dlrm_dist.core.files import write_text_atomic
from dlrm_dist.training.distributed import DistEnv, broadcast_object, first_error
from dlrm_dist.training.integrity import (HASH, LATEST, META, STEP_DIR, CheckpointDamaged, CheckpointError,
                                          check_files)

logger = logging.getLogger(__name__)


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
    """``meta.json`` of a checkpoint; one that does not parse is damage, named as such."""
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointDamaged(path, [f"{META} does not read as JSON ({e})"]) from None
    if not isinstance(meta, dict) or "step" not in meta:
        raise CheckpointDamaged(path, [f"{META} holds no step"])
    files = meta.get("files", {})
    if not isinstance(files, dict):
        raise CheckpointDamaged(path, [f"{META}: its files entry is not a map of file names"])
    bad = [n for n, e in files.items()
           if not (isinstance(e, dict) and isinstance(e.get("bytes"), int) and isinstance(e.get(HASH), str))]
    if bad:
        raise CheckpointDamaged(path, [f"{META}: its files entry {bad[0]!r} is not {{bytes, {HASH}}}"])
    return meta


def _older_complete(directory: Path, newest: Path) -> List[Path]:
    """Complete checkpoints of ``directory`` older than ``newest``, newest first:
    where ``resume=latest`` may fall back when the newest is damaged."""
    m = STEP_DIR.fullmatch(newest.name)
    limit = int(m.group(1)) if m else -1
    steps = ((int(m.group(1)), p) for p in directory.iterdir()
             if p.is_dir() and (m := STEP_DIR.fullmatch(p.name)) and (p / META).is_file())
    return [p for s, p in sorted(steps, reverse=True) if s < limit]


def verify_checkpoint(path: Path, env: DistEnv) -> Dict[str, Any]:
    """Collective: ``meta.json`` of ``path``, after checking that every file it lists is
    there with its size and checksum; else :class:`CheckpointDamaged` on every rank.
    The files are spread over the ranks (largest first, round robin), so each reads
    about 1/world of the checkpoint."""
    problems: List[str] = []
    try:
        meta = read_meta(path)
    except CheckpointDamaged as e:
        meta, problems = {}, e.problems
    files = meta.get("files")
    if not problems and files is not None:
        by_size = sorted(files, key=lambda n: (-files[n]["bytes"], n))
        problems = check_files(path, meta, by_size[env.rank::env.world_size])
    everyone: List[Any] = [None] * env.world_size
    dist.all_gather_object(everyone, problems)
    problems = [p for found in everyone for p in found]
    if problems:
        raise CheckpointDamaged(path, problems)
    if files is None and env.is_main:
        logger.warning("%s was saved without file checksums (by an older dlrm-dist): not verified", path)
    return meta


def find_resume(resume: str, directory: Path, env: DistEnv) -> Optional[Path]:
    """:func:`resolve_resume` decided on rank 0 for all ranks, then verified by all
    (:func:`verify_checkpoint`); a problem raises the same :class:`CheckpointError` on
    every rank (no rank is left waiting in a collective). A damaged checkpoint named by
    path stops the run; ``resume=latest`` falls back to the newest older complete
    checkpoint that verifies, with a warning naming the damage."""
    candidates: List[Path] = []
    problem = ""
    if env.is_main:
        try:
            found = resolve_resume(resume, directory)
            if found is not None:
                candidates = [found] + (_older_complete(directory, found) if resume == LATEST else [])
        except CheckpointError as e:
            problem = str(e)
    candidates, problem = broadcast_object((candidates, problem), env)
    if problem:
        raise CheckpointError(problem)
    if resume == LATEST and not candidates and env.is_main:
        logger.info("train.resume=latest: no checkpoint in %s yet; starting fresh", directory)
    bad: List[CheckpointDamaged] = []
    for path in candidates:
        try:
            verify_checkpoint(path, env)
        except CheckpointDamaged as e:
            bad.append(e)
            continue
        if bad:
            _fall_back(bad, path, env)
        return path
    first = bad[0] if bad else None
    if first is not None:
        older = f"; no older complete checkpoint in {directory} verifies either" if resume == LATEST else ""
        raise CheckpointDamaged(first.path, first.problems, older)
    return None


def _fall_back(bad: List[CheckpointDamaged], good: Path, env: DistEnv) -> None:
    """``resume=latest`` over damaged checkpoints: rank 0 moves each aside (renamed
    ``step-N.damaged-TIME``, kept for a look, never pruned) and points ``latest`` at
    ``good``, so that this run saves its own ``step-N`` again. Every rank learns if
    that failed (a read-only folder): all stop with one line, none waits alone."""
    problem = ""
    if env.is_main:
        moved = []
        try:
            for e in bad:
                aside = e.path.with_name(f"{e.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
                e.path.rename(aside)
                moved.append(aside.name)
            write_text_atomic(good.parent / LATEST, good.name + "\n")
        except OSError as e:
            problem = (f"{bad[0].summary()}; train.resume=latest would resume from {good}, but cannot move the "
                       f"damaged checkpoint aside ({e})")
        else:
            logger.warning("%s. train.resume=latest: resuming from %s instead, the newest older checkpoint that "
                           "verifies (moved aside: %s)", bad[0].summary(), good, ", ".join(moved))
    problem = first_error(problem, env)
    if problem:
        raise CheckpointError(problem)


def precheck(resume: str, directory: Optional[Path]) -> Optional[Path]:
    """One process, no ranks: the checkpoint ``resume`` would take, if every file its
    ``meta.json`` lists is there with its recorded size (no checksums: that is the
    ranks' share-out, and a launcher on every node would read the whole checkpoint
    each); else :class:`CheckpointDamaged`. ``latest`` passes when an older complete
    checkpoint passes (the ranks will fall back to it and say so)."""
    if not resume or (resume == LATEST and (directory is None or not directory.is_dir())):
        return None
    found = resolve_resume(resume, directory or Path("."))
    candidates = [] if found is None else [found] + (_older_complete(found.parent, found) if resume == LATEST else [])
    first: Optional[CheckpointDamaged] = None
    for path in candidates:
        try:
            problems = check_files(path, read_meta(path), checksums=False)
        except CheckpointDamaged as e:
            problems = e.problems
        if not problems:
            return path
        first = first or CheckpointDamaged(path, problems)
    if first is not None:
        older = f"; no older complete checkpoint in {first.path.parent} is whole either" if resume == LATEST else ""
        raise CheckpointDamaged(first.path, first.problems, older)
    return None


@entry_point("dlrm-dist train")
def main(argv: Optional[List[str]] = None) -> int:
    """The arguments of ``dlrm_dist.train``; exit 0 (nothing printed) when the run can
    start, 2 with one line when its checkpoint is incomplete or damaged."""
    from dlrm_dist.config import load_config

    p = argparse.ArgumentParser(prog="python -m dlrm_dist.training.resume", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--run-dir", default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)  # a ConfigError is a UserError too: one line, exit 2
    if cfg.train.checkpoint_dir:
        directory: Optional[Path] = Path(cfg.train.checkpoint_dir)
    else:  # without --run-dir, train makes a new timestamped run dir: nothing to resume there
        directory = Path(args.run_dir) / "checkpoints" if args.run_dir else None
    precheck(cfg.train.resume, directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
