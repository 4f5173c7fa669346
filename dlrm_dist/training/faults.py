"""TEST HOOKS ONLY: inject a fault into one rank, so tests can check how the job fails.

Armed by one environment variable, never by the config, and inert without it::

    DLRM_DIST_FAULT=raise:RANK:STEP        rank RANK raises RuntimeError after step STEP
    DLRM_DIST_FAULT=stall_save:RANK:STEP   rank RANK stops inside dcp.save of step STEP
                                           (its files written, the checkpoint not finished)
                                           until it is killed

A hook fires only in the first attempt of a torchrun job
(``TORCHELASTIC_RESTART_COUNT`` 0 or unset), so a test can watch a restarted job
recover. Killing and stopping ranks (SIGKILL, SIGSTOP) is done by the tests
from outside, as a user's cluster would; these hooks cover what cannot be done
from outside at a chosen moment: an exception in one rank, a kill in the
middle of a save.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Tuple

ENV = "DLRM_DIST_FAULT"
ACTIONS = ("raise", "stall_save")

logger = logging.getLogger(__name__)


def _armed(action: str, rank: int, step: int) -> bool:
    spec = os.environ.get(ENV, "")
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return False
    parsed = parse(spec)
    return parsed == (action, rank, step)


def parse(spec: str) -> Tuple[str, int, int]:
    """``"raise:1:20"`` -> ``("raise", 1, 20)``; a malformed value is an error, never ignored."""
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] not in ACTIONS or not all(p.isdigit() for p in parts[1:]):
        raise ValueError(f"{ENV}={spec!r}: expected ACTION:RANK:STEP with ACTION one of {', '.join(ACTIONS)}")
    return parts[0], int(parts[1]), int(parts[2])


def after_step(rank: int, step: int) -> None:
    """Called by the trainer after every step."""
    if _armed("raise", rank, step):
        raise RuntimeError(f"{ENV}: injected failure on rank {rank} after step {step}")


def storage_writer(path: Path, rank: int, step: int) -> Optional[Any]:
    """The DCP storage writer for a save: None (DCP's default) unless ``stall_save``
    is armed for this rank and step."""
    if not _armed("stall_save", rank, step):
        return None
    from torch.distributed.checkpoint import FileSystemWriter

    class StallingWriter(FileSystemWriter):
        def write_data(self, plan: Any, planner: Any) -> Any:
            written = super().write_data(plan, planner)
            written.wait()  # this rank's files are on disk; DCP's .metadata is not
            print(f"{ENV}: rank {rank} stalls inside dcp.save of step {step} (pid {os.getpid()})",
                  file=sys.stderr, flush=True)
            while True:
                time.sleep(1)

    return StallingWriter(path)
