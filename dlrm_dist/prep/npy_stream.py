"""Write a 2-D ``.npy`` file row block by row block, without knowing the row count.

A raw Criteo day is read once, as a stream (a Terabyte day is ~45 GB, often
gzipped), so its row count is known only at the end. numpy's own writers need
the shape up front (``np.save``, ``open_memmap``) and size their header by the
shape's digits, so it cannot be rewritten in place later. Here the header has a
fixed size (128 bytes, a multiple of 64 as the format asks), is written as a
placeholder first and rewritten with the final shape on ``close``. The result
is a standard version 1.0 npy file: ``np.load``, ``np.load(mmap_mode="r")``
and TorchRec's ``BinaryCriteoUtils`` read it.
"""

from __future__ import annotations

import hashlib
import os
import struct
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

HEADER_BYTES = 128


def npy_header(dtype: np.dtype, shape: Tuple[int, ...]) -> bytes:
    """A version 1.0 header of exactly HEADER_BYTES bytes for a C-order array."""
    magic = np.lib.format.magic(1, 0)
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (
        np.lib.format.dtype_to_descr(np.dtype(dtype)), tuple(shape))
    room = HEADER_BYTES - len(magic) - 2  # 2: the little-endian uint16 header length
    if len(text) + 1 > room:
        raise ValueError(f"npy header for shape {shape} does not fit in {HEADER_BYTES} bytes")
    body = (text.ljust(room - 1) + "\n").encode("latin-1")
    return magic + struct.pack("<H", len(body)) + body


class NpyStreamWriter:
    """Append (n, ncols) blocks of one dtype to ``path``; ``close`` fixes the header."""

    def __init__(self, path: Path, dtype: np.dtype, ncols: int) -> None:
        self.path, self.dtype, self.ncols = Path(path), np.dtype(dtype), ncols
        self.rows = 0
        self._file = open(self.path, "wb")
        self._file.write(b"\0" * HEADER_BYTES)  # not a valid header until close()

    def append(self, block: np.ndarray) -> None:
        if block.dtype != self.dtype or block.ndim != 2 or block.shape[1] != self.ncols:
            raise ValueError(f"{self.path.name}: expected (n, {self.ncols}) {self.dtype}, "
                             f"got {block.shape} {block.dtype}")
        self._file.write(np.ascontiguousarray(block).data)
        self.rows += block.shape[0]

    def _write_header(self) -> None:
        self._file.seek(0)
        self._file.write(npy_header(self.dtype, (self.rows, self.ncols)))
        self._file.flush()

    def close(self) -> int:
        """Write the real header, flush to disk (so a later rename is durable); return rows."""
        self._write_header()
        os.fsync(self._file.fileno())
        self._file.close()
        return self.rows

    def close_and_hash(self) -> Tuple[int, str]:
        """``close()``, and the finished file's sha256, read back (from the page cache)
        while the fsync waits for the disk: rows and digest."""
        self._write_header()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsync") as pool:
            synced = pool.submit(os.fsync, self._file.fileno())
            digest = sha256_file(self.path)
            synced.result()
        self._file.close()
        return self.rows, digest

    def abort(self) -> None:
        """Close and delete the partial file."""
        self._file.close()
        self.path.unlink(missing_ok=True)


class WriteBehind:
    """Appends to several writers from one background thread, one block behind the
    caller: writing block k overlaps parsing block k+1 (file writes release the GIL).
    At most one block is in flight, so memory stays bounded."""

    def __init__(self, writers: Sequence[NpyStreamWriter]) -> None:
        self.writers = list(writers)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="write-behind")
        self._pending: Optional[Future] = None

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # re-raises a write error here

    def append(self, blocks: Sequence[np.ndarray]) -> None:
        self._wait()
        self._pending = self._pool.submit(lambda: [w.append(b) for w, b in zip(self.writers, blocks)])

    def close(self) -> List[Tuple[int, str]]:
        """Finish writing; close each writer (see NpyStreamWriter.close_and_hash), all at
        once (fsync and hashing release the GIL): rows and sha256 of each."""
        try:
            self._wait()
        finally:
            self._pool.shutdown()
        with ThreadPoolExecutor(max_workers=len(self.writers), thread_name_prefix="close") as pool:
            return list(pool.map(NpyStreamWriter.close_and_hash, self.writers))

    def abort(self) -> None:
        """Stop and delete every partial file."""
        try:
            self._wait()
        except Exception:
            pass  # the write error is not the one being reported
        finally:
            self._pool.shutdown()
            for w in self.writers:
                w.abort()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
