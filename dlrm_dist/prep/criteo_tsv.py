"""Parse blocks of raw Criteo TSV text into numpy arrays: fast, and strict.

A Criteo line is ``label, I1..I13, C1..C26``: 40 tab-separated fields, the
label 0/1, 13 integers (may be negative), 26 categoricals in hex (Criteo writes
8 lowercase digits); every feature may be empty (-> 0, as TorchRec and the
MLPerf reference do). A line is valid exactly when :func:`check_line` says so.

:func:`parse_block` checks the block's byte alphabet, then tries, in order:

* ``criteo_swar.parse_regular`` (numpy alone, about half the next one's CPU time):
  the usual block, whose lines are all valid and plain (no CR, a final
  newline, a bare 0/1 label). It declines any other block rather than judge it.
* the pyarrow path, which decides the rest: it hands the block to
  ``pyarrow.csv`` (C++, no Python per line) and decodes the hex columns with
  numpy on the raw bytes. It does not locate errors: it raises
  :class:`BlockInvalid` when anything in the block is off. pyarrow alone is
  more lenient than the format (its integer parsing trims spaces and reads
  ``0x1f``, an empty line becomes a row of empty fields, a bare ``\\r`` ends a
  line), so the block's byte alphabet, row count and labels are checked too;
  with those checks it accepts exactly the valid lines
  (``tests/unit/test_preprocess.py`` tries each kind).

:func:`find_bad_lines` (slow, only for a block the pyarrow path refused) checks line by
line in Python and names each bad line and what is wrong with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from dlrm_dist.core.criteo import DENSE_TRANSFORMS, NUM_DENSE_FEATURES, NUM_SPARSE_FEATURES
from dlrm_dist.prep.criteo_swar import parse_regular
from dlrm_dist.core.units import MiB

NUM_FIELDS = 1 + NUM_DENSE_FEATURES + NUM_SPARSE_FEATURES
COLUMN_NAMES = ["label"] + [f"I{j}" for j in range(1, 14)] + [f"C{j}" for j in range(1, 27)]
MAX_HEX_DIGITS = 16
# Every byte a valid block can hold. pyarrow would also accept ' ', 'x', '+'...
_ALPHABET = b"0123456789abcdefABCDEF-\t\n\r"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_DENSE_RE = re.compile(rb"-?[0-9]+")
_HEX_RE = re.compile(rb"[0-9a-fA-F]{1,16}")


class BlockInvalid(ValueError):
    """The fast path refused a block; :func:`find_bad_lines` says which line and why."""


@dataclass(frozen=True)
class BadLine:
    line: int
    """1-based line number in the raw file."""
    reason: str


@dataclass(frozen=True)
class ParseSpec:
    transform: str = "log1p"
    """Dense transform, a key of ``transforms.DENSE_TRANSFORMS``."""
    max_ind_range: Optional[int] = None
    """Categorical ids are taken modulo this when given."""

    @property
    def sparse_dtype(self) -> np.dtype:
        """int32 when every id fits (ids < max_ind_range <= 2^31), else int64."""
        fits = self.max_ind_range is not None and self.max_ind_range <= 2**31
        return np.dtype(np.int32 if fits else np.int64)


class Parsed(NamedTuple):
    dense: np.ndarray  # (N, 13) float32, transformed
    sparse: np.ndarray  # (N, 26) ParseSpec.sparse_dtype
    labels: np.ndarray  # (N, 1) int32


def empty_parsed(spec: ParseSpec) -> Parsed:
    return Parsed(np.empty((0, NUM_DENSE_FEATURES), np.float32),
                  np.empty((0, NUM_SPARSE_FEATURES), spec.sparse_dtype), np.empty((0, 1), np.int32))


def _hex_lut() -> np.ndarray:
    """Value of every little-endian pair of ASCII hex digits (c0 | c1 << 8) -> byte
    ``0xc0c1``; 0xFFFF marks a pair with a non-hex byte. Decoding two characters per
    lookup halves the numpy work; numpy has no hex parser and pyarrow has none either."""
    nib = np.full(256, 0xFF, dtype=np.uint16)
    for digits, base in ((b"0123456789", 0), (b"abcdef", 10), (b"ABCDEF", 10)):
        nib[np.frombuffer(digits, np.uint8)] = base + np.arange(len(digits), dtype=np.uint16)
    hi, lo = np.meshgrid(nib, nib, indexing="xy")  # hi[c1, c0] = nib[c0], lo[c1, c0] = nib[c1]
    lut = (hi << 4) | lo
    lut[(hi > 15) | (lo > 15)] = 0xFFFF
    return lut.reshape(-1)


_HEX_PAIRS = _hex_lut()  # a constant table (128 KB), not state


def _decode_hex_rows(chars: np.ndarray) -> np.ndarray:
    """(k, 2m) uint8 ASCII hex digits, most significant first -> (k, m) uint8 bytes."""
    pairs = _HEX_PAIRS[chars.view("<u2")]
    if pairs.size and pairs.max() > 0xFF:
        raise BlockInvalid("a categorical value is not hexadecimal")
    return pairs.astype(np.uint8)


def _hex_column(arr: pa.Array) -> np.ndarray:
    """A binary column of hex strings -> uint values (empty -> 0).

    Criteo's values are all 8 digits (or empty): those take the fast branch, a
    reshape of the column's contiguous data buffer. Other lengths (1-16 digits)
    are right-aligned into a 16-digit grid first."""
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int32, count=n + 1, offset=4 * arr.offset)
    data = np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
    lengths = np.diff(offsets)
    full = lengths == 8
    n_full = int(np.count_nonzero(full))
    if n_full + int(np.count_nonzero(lengths == 0)) == n:
        values = _decode_hex_rows(data.reshape(n_full, 8)).view(">u4").reshape(-1)
        if n_full == n:
            return values
        out = np.zeros(n, dtype=np.uint32)
        out[full] = values
        return out
    if lengths.max() > MAX_HEX_DIGITS:
        raise BlockInvalid("a categorical value has more than 16 hex digits")
    grid = np.full((n, MAX_HEX_DIGITS), ord("0"), dtype=np.uint8)
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(data.size) - np.repeat(offsets[:-1] - offsets[0], lengths)
    grid[rows, cols + (MAX_HEX_DIGITS - lengths)[rows]] = data
    values = _decode_hex_rows(grid).view(">u8").reshape(-1)
    if values.size and values.max() > _INT64_MAX:
        raise BlockInvalid("a categorical value does not fit in int64")
    return values


def _modulo(values: np.ndarray, max_ind_range: Optional[int]) -> np.ndarray:
    if max_ind_range is None or max_ind_range > np.iinfo(values.dtype).max:
        return values  # every value is already below the range
    return values % values.dtype.type(max_ind_range)


def _read_table(block: bytes) -> pa.Table:
    """Tokenise the block into 40 binary columns. Integers are converted afterwards
    (``_int_column``): pyarrow's CSV integer conversion, with its null detection, took
    ~15% longer than tokenising as binary and casting (measured on 4-16 MB blocks)."""
    try:
        return pacsv.read_csv(
            pa.py_buffer(block),
            read_options=pacsv.ReadOptions(column_names=COLUMN_NAMES, use_threads=False,
                                           block_size=max(len(block) + 1, MiB)),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False,
                                              double_quote=False, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.binary() for c in COLUMN_NAMES},
                                                 strings_can_be_null=False, check_utf8=False),
        ).combine_chunks()
    except pa.ArrowInvalid as e:
        raise BlockInvalid(str(e)) from None


def _int_column(arr: pa.Array, empty_is_zero: bool = True) -> np.ndarray:
    """Decimal strings -> int64 (empty -> 0 unless it is an error)."""
    if empty_is_zero:  # "" -> "0"; the view is zero-copy, and safe: the block is ASCII
        arr = pc.utf8_lpad(arr.view(pa.string()), width=1, padding="0")
    try:
        return pc.cast(arr, pa.int64()).to_numpy()
    except pa.ArrowInvalid as e:
        raise BlockInvalid(str(e)) from None


def count_lines(block: bytes) -> int:
    return block.count(b"\n") + (0 if not block or block.endswith(b"\n") else 1)


def parse_block(block: bytes, spec: ParseSpec, num_lines: Optional[int] = None) -> Parsed:
    """Whole lines of Criteo TSV -> arrays; raises BlockInvalid unless every line is valid.

    ``num_lines``: the block's line count when the caller already has it."""
    if not block:
        return empty_parsed(spec)
    if block.translate(None, _ALPHABET):
        raise BlockInvalid("unexpected character")
    if num_lines is None:
        num_lines = count_lines(block)
    regular = parse_regular(block, num_lines)  # numpy alone, for the usual block
    if regular is not None:
        labels, dense, ids = regular
        if spec.max_ind_range is None:
            sparse = ids.view(np.int64)  # every id is below 2^63
        else:
            if ids.max() < 2**32:
                ids = ids.astype(np.uint32)  # a 32-bit modulo is cheaper
            sparse = _modulo(ids, spec.max_ind_range).astype(spec.sparse_dtype)
        return Parsed(DENSE_TRANSFORMS[spec.transform](dense), sparse,
                      labels.astype(np.int32).reshape(-1, 1))
    return _parse_with_arrow(block, spec, num_lines)


def _parse_with_arrow(block: bytes, spec: ParseSpec, num_lines: int) -> Parsed:
    """What parse_block does with a block that parse_regular declined."""
    table = _read_table(block)
    if table.num_rows != num_lines:
        raise BlockInvalid("row count differs from line count (empty line or bare CR)")
    labels = _int_column(table.column(0).chunk(0), empty_is_zero=False)
    if labels.min() < 0 or labels.max() > 1:
        raise BlockInvalid("a label is not 0 or 1")
    dense = np.empty((table.num_rows, NUM_DENSE_FEATURES), dtype=np.int64)
    for j in range(NUM_DENSE_FEATURES):
        dense[:, j] = _int_column(table.column(1 + j).chunk(0))
    sparse = np.empty((table.num_rows, NUM_SPARSE_FEATURES), dtype=spec.sparse_dtype)
    for f in range(NUM_SPARSE_FEATURES):
        values = _hex_column(table.column(1 + NUM_DENSE_FEATURES + f).chunk(0))
        sparse[:, f] = _modulo(values, spec.max_ind_range)
    return Parsed(DENSE_TRANSFORMS[spec.transform](dense), sparse,
                  labels.astype(np.int32).reshape(-1, 1))


def check_line(line: bytes) -> Optional[str]:
    """What is wrong with one line (without its newline), or None: the format's definition."""
    if line.endswith(b"\r"):  # a CRLF line ending, as pyarrow accepts
        line = line[:-1]
    fields = line.split(b"\t")
    if len(fields) != NUM_FIELDS:
        return f"expected {NUM_FIELDS} tab-separated fields, got {len(fields)}"
    label = fields[0]
    if not _DENSE_RE.fullmatch(label) or int(label) not in (0, 1):
        return f"label must be 0 or 1, got {label.decode('latin-1')!r}"
    for j in range(1, 1 + NUM_DENSE_FEATURES):
        v = fields[j]
        if v and (not _DENSE_RE.fullmatch(v) or not _INT64_MIN <= int(v) <= _INT64_MAX):
            return f"integer feature I{j} (field {j + 1}) is not a 64-bit integer: {v.decode('latin-1')!r}"
    for j in range(1 + NUM_DENSE_FEATURES, NUM_FIELDS):
        v = fields[j]
        if v and (not _HEX_RE.fullmatch(v) or int(v, 16) > _INT64_MAX):
            name = f"C{j - NUM_DENSE_FEATURES}"
            return (f"categorical feature {name} (field {j + 1}) is not 1-16 hex digits "
                    f"below 2^63: {v.decode('latin-1')!r}")
    return None


def split_lines(block: bytes) -> List[bytes]:
    lines = block.split(b"\n")
    return lines[:-1] if block.endswith(b"\n") else lines


def find_bad_lines(block: bytes, first_line: int) -> List[BadLine]:
    """Every bad line of ``block`` whose first line is number ``first_line`` of its file."""
    bad = []
    for i, line in enumerate(split_lines(block)):
        reason = check_line(line)
        if reason is not None:
            bad.append(BadLine(first_line + i, reason))
    return bad


def parse_block_tolerant(block: bytes, first_line: int, spec: ParseSpec,
                         num_lines: Optional[int] = None) -> Tuple[Parsed, List[BadLine]]:
    """The good lines of ``block`` parsed, and its bad lines (fast path unless there are any)."""
    try:
        return parse_block(block, spec, num_lines), []
    except BlockInvalid as fast_error:
        bad = find_bad_lines(block, first_line)
        if not bad:  # the two paths disagree: a bug here, not in the data
            raise RuntimeError(f"block at line {first_line}: fast parser refused it "
                               f"({fast_error}) but every line is valid") from None
    skip = {b.line - first_line for b in bad}
    good = b"".join(line + b"\n" for i, line in enumerate(split_lines(block)) if i not in skip)
    return parse_block(good, spec), bad
