"""The user-error path: one base class, caught only at the command-line entry points.

Library code raises a :class:`UserError` subclass whose message names what is
wrong (the config key, the file, the folder) and what to do. The entry points
(``dlrm-dist ...``, ``python -m dlrm_dist.train``) turn it into that one line
on stderr and exit code 2, printed by rank 0 only when there are ranks, since
every rank meets the same error. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, List, Optional

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Wrong input from the user: a config, a path, a checkpoint, a data folder."""


class DataError(UserError, ValueError):
    """A data source cannot be built as configured (folder missing, too few samples ...)."""


class CapacityError(UserError):
    """The job cannot fit this host's memory."""


def report(prog: str, error: UserError) -> int:
    """Print ``prog: error: message`` once (rank 0 of a job, or a lone process) and
    return the exit code for user errors."""
    if os.environ.get("RANK", "0") == "0":
        print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def entry_point(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a command's ``main(argv) -> int``: a :class:`UserError` becomes one
    line on stderr (see :func:`report`) and exit code 2, anything else propagates."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: Optional[List[str]] = None) -> int:
            try:
                return main(argv)
            except UserError as e:
                return report(prog, e)

        return run

    return wrap
