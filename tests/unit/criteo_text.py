"""Raw Criteo text for the data tests, and an obviously-correct reference parser.

The reference is what a reader of the format would write in five minutes:
split on tabs, ``int(x)`` for the integers, ``int(x, 16)`` for the categoricals,
0 for an empty field. The preprocessing code must agree with it line by line.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

HEX = "0123456789abcdef"


def random_lines(n: int, seed: int, empty: float = 0.15, big: int = 10**12) -> List[str]:
    """Valid Criteo lines with everything the format allows: empty fields, negative and
    large integers (up to ``big``), 8-digit hex (mostly), upper-case and shorter hex ids."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        fields = [str(rng.integers(0, 2))]
        for _ in range(13):
            kind = rng.random()
            if kind < empty:
                fields.append("")
            elif kind < empty + 0.1:
                fields.append(str(rng.integers(-3, 0)))  # Kaggle has -3, Terabyte -1
            elif kind < empty + 0.12:
                fields.append(str(rng.integers(big // 10, big)))
            else:
                fields.append(str(rng.integers(0, 3000)))
        for _ in range(26):
            kind = rng.random()
            value = int(rng.integers(0, 2**32))
            if kind < empty:
                fields.append("")
            elif kind < empty + 0.03:
                fields.append(f"{value:08X}")
            elif kind < empty + 0.05:
                fields.append(f"{value % 4096:x}")  # 1-3 digits
            else:
                fields.append(f"{value:08x}")
        lines.append("\t".join(fields))
    return lines


def reference_parse(lines: Sequence[str]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels (N,), dense raw ints (N, 13), sparse ids (N, 26)) the plain Python way."""
    labels, dense, sparse = [], [], []
    for line in lines:
        fields = line.split("\t")
        assert len(fields) == 40, line
        labels.append(int(fields[0]))
        dense.append([int(v) if v else 0 for v in fields[1:14]])
        sparse.append([int(v, 16) if v else 0 for v in fields[14:]])
    return (np.array(labels, dtype=np.int64).reshape(-1), np.array(dense, dtype=np.int64).reshape(-1, 13),
            np.array(sparse, dtype=np.int64).reshape(-1, 26))


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    """Write lines (newline-terminated); gzip when the name ends with .gz."""
    data = "".join(line + "\n" for line in lines).encode()
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def load_day(folder: Path, day: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.load(folder / f"day_{day}_{k}.npy") for k in ("dense", "sparse", "labels"))  # type: ignore
