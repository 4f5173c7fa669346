"""Run a function on N local gloo ranks, the way torchrun would, and fail loudly.

``run_on_ranks(fn, *args, world_size=2)`` starts ``world_size`` processes, gives
each the environment torchrun exports (MASTER_ADDR=127.0.0.1, a free
MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE) and calls
``fn(*args)`` in each. ``fn`` joins the process group itself (e.g.
``dlrm_dist.training.distributed.init_distributed``); the helper destroys it at the end.

It returns only when every rank exited with code 0. Otherwise it raises
:class:`RankFailure` carrying the failing rank's traceback (an ``assert`` in a
rank shows up in the pytest report with its message), or :class:`RankTimeout`
when the ranks are still running after ``timeout_s``: a rank stuck in a
collective whose peer is gone must fail the test, not block CI. Leftover ranks
are killed either way. Each rank's stdout/stderr (C++ logs included) goes to a
file that is echoed to this process's stdout afterwards, so pytest shows it
under "Captured stdout" when a test fails; a timeout's message holds the tail.

``fn`` and ``args`` must be picklable: a module-level function of an importable
module (the rank imports it again).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

DEFAULT_TIMEOUT_S = 180.0
# After one rank fails, how long the others get to exit by themselves before
# SIGTERM (then as long again before SIGKILL).
_GRACE_PERIOD_S = 5.0
# Imported once by the fork server (see _preload_forkserver); missing ones are skipped.
_FORKSERVER_PRELOAD = ["torch", "torch.distributed", "torchrec", "torchrec.distributed", "dlrm_dist.training.sharding"]
_LOG_TAIL_LINES = 25


class RankFailure(AssertionError):
    """A rank raised or exited with a non-zero code; the message holds its traceback."""


class RankTimeout(AssertionError):
    """The ranks did not all finish within the timeout (a hang, or far too slow)."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(
    rank: int,
    fn: Callable[..., Any],
    args: tuple,
    world_size: int,
    port: int,
    threads_per_rank: int,
    log_dir: str,
) -> None:
    """Entry point of one rank (torch.multiprocessing passes ``rank`` first)."""
    log = open(Path(log_dir) / f"rank{rank}.log", "w", buffering=1)
    sys.stdout.flush(), sys.stderr.flush()
    os.dup2(log.fileno(), 1)  # file descriptors, so C++ (gloo, fbgemm) logs land there too
    os.dup2(log.fileno(), 2)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),  # all ranks on this one host
        LOCAL_WORLD_SIZE=str(world_size),
    )
    # N ranks share a few cores: one intra-op thread each avoids oversubscription.
    torch.set_num_threads(threads_per_rank)
    try:
        fn(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _preload_forkserver(fn: Callable[..., Any]) -> None:
    """Have the fork server import torch, torchrec and ``fn``'s module once.

    Importing them takes 5-8 s per process on the 2-core machine, far more than a
    small parity case itself; ranks forked from the already-warm server start in
    well under a second. The server is a clean single-threaded process started on
    first use (nothing inherited from pytest), so forking it is safe; the list is
    read when it starts, so the first caller's ``fn`` module is the one preloaded.
    """
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([*_FORKSERVER_PRELOAD, fn.__module__])


def _read_logs(log_dir: str, world_size: int) -> List[str]:
    logs = []
    for rank in range(world_size):
        path = Path(log_dir) / f"rank{rank}.log"
        logs.append(path.read_text(errors="replace") if path.exists() else "")
    return logs


def _tails(logs: List[str]) -> str:
    parts = []
    for rank, text in enumerate(logs):
        tail = "\n".join(text.rstrip().splitlines()[-_LOG_TAIL_LINES:])
        parts.append(f"--- rank {rank}, last lines of its output:\n{tail}")
    return "\n".join(parts)


def run_on_ranks(
    fn: Callable[..., Any],
    *args: Any,
    world_size: int = 2,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    threads_per_rank: int = 1,
    start_method: str = "forkserver",
) -> None:
    """Call ``fn(*args)`` on ``world_size`` local ranks; raise unless all exit 0.

    ``start_method``: "forkserver" (default: ranks fork from a warm server that
    imported torch / torchrec once) or "spawn" (a fresh interpreter per rank).
    """
    if start_method == "forkserver":
        _preload_forkserver(fn)
    name = getattr(fn, "__name__", repr(fn))
    with tempfile.TemporaryDirectory(prefix="ranks-") as log_dir:
        context = mp.start_processes(
            _rank_main,
            args=(fn, args, world_size, free_port(), threads_per_rank, log_dir),
            nprocs=world_size,
            join=False,
            start_method=start_method,
        )
        deadline = time.monotonic() + timeout_s
        try:
            while not context.join(timeout=max(0.0, deadline - time.monotonic()), grace_period=_GRACE_PERIOD_S):
                if time.monotonic() >= deadline:
                    alive = [r for r, p in enumerate(context.processes) if p.is_alive()]
                    raise RankTimeout(
                        f"{name} on {world_size} ranks: rank(s) {alive} still running after "
                        f"{timeout_s:.0f} s (hung collective?); killed them\n"
                        + _tails(_read_logs(log_dir, world_size))
                    )
        except mp.ProcessRaisedException as e:
            raise RankFailure(f"{name}: rank {e.error_index} of {world_size} failed:{e}") from None
        except mp.ProcessExitedException as e:  # a signal or os._exit: no Python traceback
            raise RankFailure(
                f"{name}: rank {e.error_index} of {world_size} failed: {e}\n"
                + _tails(_read_logs(log_dir, world_size))
            ) from None
        finally:
            for p in context.processes:
                if p.is_alive():
                    p.kill()
                p.join()
            for rank, text in enumerate(_read_logs(log_dir, world_size)):
                print(f"===== rank {rank} output =====\n{text}", end="" if text.endswith("\n") else "\n")
    codes = [p.exitcode for p in context.processes]
    if any(c != 0 for c in codes):  # join() raises first; never let this pass silently
        raise RankFailure(f"{name}: exit codes by rank: {codes}")
