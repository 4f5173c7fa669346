"""Where each raw Criteo day comes from, and reading it as blocks of whole lines.

* Terabyte: a folder of ``day_0 ... day_N``, each plain or ``.gz``; one file per day.
* Kaggle: ``train.txt`` split by line order into 7 days of as-equal-as-possible
  size, the first days taking the extra lines (what the DLRM reference does).
  Each day is a byte range of the file, so days can be read in parallel.

Blocks always end at a line end (except a file's unterminated last line), and
each comes with the 1-based number of its first line in its file, so an error
can name the exact line.
"""

from __future__ import annotations

import os
import queue
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, List, Optional, Tuple, TypeVar

import numpy as np
import pyarrow as pa

from dlrm_dist.core.errors import UserError

T = TypeVar("T")
KAGGLE_DAYS = 7
_SCAN_BYTES = 64 << 20
_MAX_LINE_BLOCKS = 16  # a "line" longer than 16 blocks means the file is not TSV text


class InputError(UserError, ValueError):
    """The input is missing or not what was asked for; the message says what to do."""


@dataclass(frozen=True)
class DaySource:
    day: int
    path: str
    """The raw file holding this day."""
    start_byte: int = 0
    end_byte: Optional[int] = None
    """Byte range of the day in ``path``; None reads to the end."""
    first_line: int = 1
    """1-based line number, in ``path``, of the day's first line."""
    lines: Optional[int] = None
    """Lines in the day when known in advance (Kaggle), for the progress bar."""

    def identity(self) -> Dict[str, object]:
        """What a finished day's marker records, to tell a stale output from a fresh one."""
        st = os.stat(self.path)
        return dict(asdict(self), size=st.st_size, mtime_ns=st.st_mtime_ns)


def find_terabyte_days(folder: Path) -> List[DaySource]:
    """``day_{i}`` / ``day_{i}.gz`` files of ``folder``, by day number."""
    if not folder.is_dir():
        raise InputError(f"--input {folder}: not a folder (criteo_1tb expects a folder of day_0 ... day_N)")
    found: Dict[int, Path] = {}
    for p in folder.iterdir():
        m = re.fullmatch(r"day_(\d+)(\.gz)?", p.name)
        if not m or not p.is_file():
            continue
        day = int(m.group(1))
        if day in found:
            raise InputError(f"--input {folder}: day {day} is there twice ({found[day].name}, {p.name})")
        found[day] = p
    if not found:
        raise InputError(f"--input {folder}: no day_0 ... day_N files (plain or .gz) in it")
    return [DaySource(day, str(found[day])) for day in sorted(found)]


def kaggle_day_sizes(total_lines: int, days: int = KAGGLE_DAYS) -> List[int]:
    """Lines per day: as equal as possible, the first ``total % days`` days one line longer."""
    base, extra = divmod(total_lines, days)
    return [base + (1 if d < extra else 0) for d in range(days)]


def _newline_counts(path: Path) -> Tuple[List[Tuple[int, int]], bool]:
    """One scan: (start byte, newlines) per chunk, and whether the file ends with a newline."""
    chunks, last = [], b""
    with open(path, "rb") as f:
        while True:
            start = f.tell()
            chunk = f.read(_SCAN_BYTES)
            if not chunk:
                break
            chunks.append((start, chunk.count(b"\n")))
            last = chunk[-1:]
    return chunks, last == b"\n"


def _byte_after_newline(path: Path, chunks: List[Tuple[int, int]], k: int) -> int:
    """Byte offset just after the k-th (1-based) newline of the file."""
    seen = 0
    for start, count in chunks:
        if seen + count >= k:
            with open(path, "rb") as f:
                f.seek(start)
                data = np.frombuffer(f.read(_SCAN_BYTES), np.uint8)
            return start + int(np.flatnonzero(data == 10)[k - seen - 1]) + 1
        seen += count
    raise AssertionError(f"{path}: fewer than {k} newlines")  # callers ask only for existing ones


def split_kaggle(path: Path) -> List[DaySource]:
    """``train.txt`` (or a folder holding it) -> 7 day byte ranges by line order."""
    if path.is_dir():
        path = path / "train.txt"
    if path.name.startswith("test.txt"):
        raise InputError(f"--input {path}: Kaggle's test.txt has no labels; give train.txt")
    if path.suffix == ".gz":
        raise InputError(f"--input {path}: decompress it first; splitting Kaggle into days needs seeking")
    if not path.is_file():
        raise InputError(f"--input {path}: no such file (criteo_kaggle expects train.txt, "
                         "or a folder holding it; its test.txt has no labels and is not used)")
    chunks, ends_with_newline = _newline_counts(path)
    size = path.stat().st_size
    newlines = sum(c for _, c in chunks)
    total = newlines + (0 if ends_with_newline or size == 0 else 1)

    def line_start(k: int) -> int:  # byte offset of 0-based line k (size: past the end)
        return 0 if k == 0 else size if k > newlines else _byte_after_newline(path, chunks, k)

    days, first = [], 0
    for day, n in enumerate(kaggle_day_sizes(total)):
        days.append(DaySource(day, str(path), line_start(first), line_start(first + n), first + 1, n))
        first += n
    return days


def _open(src: DaySource) -> BinaryIO:
    if src.path.endswith(".gz"):
        return pa.input_stream(src.path, compression="gzip")  # type: ignore[return-value]
    f = open(src.path, "rb")
    f.seek(src.start_byte)
    return f


def iter_blocks(src: DaySource, block_bytes: int) -> Iterator[Tuple[int, int, bytes]]:
    """(number of its first line, its line count, block of whole lines) over the day,
    about ``block_bytes`` each."""
    remaining = None if src.end_byte is None else src.end_byte - src.start_byte
    line, carry = src.first_line, b""
    with _open(src) as f:
        while True:
            want = block_bytes if remaining is None else min(block_bytes, remaining)
            chunk = f.read(want) if want > 0 else b""
            if remaining is not None:
                remaining -= len(chunk)
            if not chunk:
                if carry:
                    yield line, 1, carry  # the file's last line, without a newline
                return
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:
                carry += chunk
                if len(carry) > _MAX_LINE_BLOCKS * block_bytes:
                    raise InputError(f"{src.path}, line {line}: longer than {len(carry)} bytes "
                                     "without a newline; is this a Criteo TSV file?")
                continue
            block, carry = b"".join((carry, memoryview(chunk)[:cut])), chunk[cut:]  # one copy
            lines = int(np.count_nonzero(np.frombuffer(block, np.uint8) == 10))  # 4x bytes.count's speed
            yield line, lines, block
            line += lines


def prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """``items``, produced by a thread up to ``depth`` ahead: reading (and gunzipping) the
    next block overlaps parsing this one; both release the GIL. Memory stays bounded."""
    q: "queue.Queue[object]" = queue.Queue(maxsize=depth)
    stop, end = threading.Event(), object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(end)
        except BaseException as e:  # handed to the consumer, raised there
            put(e)

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
