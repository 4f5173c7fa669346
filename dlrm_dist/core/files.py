"""Writing files so that a half-written one never looks complete."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` under a hidden ``.NAME.partial`` name, flush it to disk, then
    rename it over ``path``: readers see the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
