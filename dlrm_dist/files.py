"""Writing files so that a half-written one never looks complete."""

from __future__ import annotations

import os
from pathlib import Path


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
