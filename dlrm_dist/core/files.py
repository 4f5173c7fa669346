"""Writing files so that a half-written one never looks complete."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` under a hidden ``.NAME.HOST-PID.partial`` name, flush it to disk,
    then rename it over ``path``: readers see the old file or the whole new one.

    The temporary name is the writer's own, so two writers of the same file (two
    preprocessing nodes that finish together and both write manifest.json) never
    rename each other's half-written file: the last whole one wins."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}.partial")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A hidden ``.STEM.partial.SUFFIX`` path to write (e.g. with ``torch.save``; the
    suffix kept for writers that check it), renamed over ``path`` when the block
    succeeds and deleted when it raises."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
