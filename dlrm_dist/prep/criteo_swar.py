"""The usual Criteo TSV path: tokenise and decode a block with numpy alone.

pyarrow's CSV reader spent ~1.1 us of CPU a line building 40 binary columns
that were then decoded again (hex ids, integers): half of preprocessing's CPU
time. A Criteo line has a fixed shape (40 fields: 39 tabs, one newline), so a
few whole-block numpy passes do it all:

1. the positions of the bytes below 14 (the alphabet's tabs and newlines) give
   every field's start and length at once; every 40th must be a newline;
2. the 8 bytes after each delimiter are gathered as one little-endian uint64
   (from an overlapping, byte-strided view of the block: no copy);
3. each word is validated and decoded eight characters at a time with integer
   arithmetic inside the word ("SWAR", SIMD within a register): '0' is
   subtracted from every byte, a multiplication moves the field's bytes to the
   top of the word and drops what follows them, then hex (the 26 ids) or
   decimal (the label and the 13 integers) digits are checked and combined.
   The rare field longer than 8 characters is decoded apart, in Python.

It accelerates, it does not define the format: :func:`parse_regular` returns
None for any block it cannot vouch for (a CR, no final newline, a wrong field
count, a character out of place, a label other than a bare 0 or 1), and the
caller then takes the pyarrow path, which decides (and
``criteo_tsv.find_bad_lines`` names the bad line). What it does return equals
the pyarrow path's result (``tests/unit/test_criteo_swar.py``). The caller must
have checked the block's byte alphabet (``criteo_tsv._ALPHABET``) first: the
checks below rely on it.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np

from dlrm_dist.core.criteo import NUM_DENSE_FEATURES, NUM_SPARSE_FEATURES

NUM_FIELDS = 1 + NUM_DENSE_FEATURES + NUM_SPARSE_FEATURES
# Lines decoded at a time, so that their temporaries (~1 MB) stay in the L2 cache:
# ~5% less CPU than a whole 4 MB block at once in our measurement.
CHUNK_LINES = 4096
_U64 = np.uint64
_ZEROS = _U64(0x3030303030303030)  # eight ASCII '0'
_LOW_NIBBLES = _U64(0x0F0F0F0F0F0F0F0F)
_ONES = _U64(0x0101010101010101)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# By gap g = field length + 1 (the distance between the delimiters around it): a word
# times 2^(8 (8 - L)) (mod 2^64) keeps the field's L bytes, moved to the word's top
# (the text's first, most significant, digit lowest of them), and drops what follows.
# 0 for an empty field (value 0) and, through np.take's "clip", for one longer than 8
# (decoded apart).
_ALIGN_BY_GAP = np.array([0, 0] + [1 << (8 * (8 - n)) for n in range(1, 9)] + [0], dtype=np.uint64)


def _words_after(data: np.ndarray, delims: np.ndarray) -> np.ndarray:
    """The 8 bytes after each of ``delims`` ((lines, k) positions, at most
    len(data) - 2; data at least 9 bytes) as little-endian uint64; bytes past the end
    read as 0."""
    # word i = bytes i+1 .. i+8: an overlapping view with a stride of one byte, no copy
    words = np.ndarray((data.size - 8,), dtype="<u8", buffer=data, offset=1, strides=(1,))
    if delims[-1].max() < words.size:  # only the block's last line can reach its end
        return words[delims]
    out = words[np.minimum(delims, words.size - 1)]
    tail = np.zeros(16, np.uint8)  # the block's last 8 bytes, then zeros
    tail[:8] = data[-8:]
    tail_words = np.ndarray((9,), dtype="<u8", buffer=tail, strides=(1,))
    late = delims >= words.size  # 1 + delims: len(data) - 7 ... len(data) - 1
    out[late] = tail_words[1 + delims[late] - (data.size - 8)]
    return out


def _digits(words: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """Each field's characters minus '0', in the top bytes of its word (the first, most
    significant, character lowest among them; zero bytes below: leading zeros).

    Subtracting '0' from the whole word can borrow only upwards, from a byte below
    '0' into the bytes after it: never into an earlier (valid) character of the field,
    and bytes after the field are then dropped by the aligning multiplication."""
    words -= _ZEROS
    words *= np.take(_ALIGN_BY_GAP, gaps, mode="clip")
    return words


def _hex_values(words: np.ndarray, gaps: np.ndarray, out: np.ndarray) -> bool:
    """Fields of 0-8 hex digits -> their values into ``out`` (uint64); False if one is not hex."""
    x = _digits(words, gaps)
    # Given the alphabet, each byte is now 0-9 (a digit), 0x11-0x16 ('A'-'F'),
    # 0x31-0x36 ('a'-'f'), or has bits 0xC0 set: '-' (0x2D - 0x30 = 0xFD) and any byte
    # after it that its borrow reached.
    if np.any(x & _U64(0xC0C0C0C0C0C0C0C0)):
        return False
    nib = (x & _LOW_NIBBLES) + ((x >> _U64(4)) & _ONES) * _U64(9)  # letters: bit 4 set
    # pack the 8 nibbles, the first one most significant: pairs -> bytes -> 16 -> 32 bits
    v = ((nib << _U64(4)) | (nib >> _U64(8))) & _U64(0x00FF00FF00FF00FF)
    v = ((v << _U64(8)) | (v >> _U64(16))) & _U64(0x0000FFFF0000FFFF)
    np.bitwise_and((v << _U64(16)) | (v >> _U64(32)), _U64(0xFFFFFFFF), out=out)
    return True


def _decimal_values(words: np.ndarray, gaps: np.ndarray, out: np.ndarray) -> bool:
    """Fields of 0-8 characters ``-?[0-9]+`` (or empty) -> int64 into ``out``; False if
    one is not."""
    neg = (words & _U64(0xFF)) == _U64(ord("-"))
    any_neg = bool(neg.any())
    if any_neg:
        if np.any(neg & (gaps == 2)):
            return False  # a lone "-"
        words ^= neg * _U64(ord("-") ^ ord("0"))  # the sign becomes a leading '0'
    x = _digits(words, gaps)
    # each byte must be 0-9: adding 0x76 sets bit 7 of a byte 10-127, x of one >= 128
    if np.any(((x + _U64(0x7676767676767676)) | x) & _U64(0x8080808080808080)):
        return False
    x = (x * _U64(10) + (x >> _U64(8))) & _U64(0x00FF00FF00FF00FF)  # 2-digit lanes
    x = (x * _U64(100) + (x >> _U64(16))) & _U64(0x0000FFFF0000FFFF)  # 4-digit lanes
    np.bitwise_and(x * _U64(10000) + (x >> _U64(32)), _U64(0xFFFFFFFF), out=out.view(np.uint64))
    if any_neg:
        np.negative(out, out=out, where=neg)
    return True


def _long_fields(block: bytes, delims: np.ndarray, gaps: np.ndarray, base: int, out: np.ndarray) -> bool:
    """Fields longer than 8 characters (rare: big counts, 9-16 digit ids) into ``out``,
    the plain Python way; False if one is not a valid value of its kind."""
    long = gaps > 9
    for i in np.flatnonzero(long).tolist():
        start, n = int(delims.flat[i]) + 1, int(gaps.flat[i]) - 1
        text = block[start:start + n]
        if base == 16 and (n > 16 or text.startswith(b"-")):
            return False
        try:
            value = int(text, base)  # the alphabet leaves no '+', '_', spaces or '0x'
        except ValueError:
            return False
        if not _INT64_MIN <= value <= _INT64_MAX:
            return False
        out.flat[i] = value
    return True


Decoder = Callable[[np.ndarray, np.ndarray, np.ndarray], bool]


def _decode_fields(block: bytes, data: np.ndarray, delims: np.ndarray, gaps: np.ndarray,
                   decode: Decoder, base: int, out: np.ndarray) -> bool:
    """The fields after ``delims`` (their gaps to the next delimiter given) into ``out``."""
    if not decode(_words_after(data, delims), gaps, out):  # a field longer than 8 -> 0 ...
        return False
    return _long_fields(block, delims, gaps, base, out) if np.any(gaps > 9) else True  # ... but these


def parse_regular(block: bytes, num_lines: int) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(labels (n,) uint8, dense raw (n, 13) int64, ids (n, 26) uint64) of a block of
    ``num_lines`` whole, newline-terminated lines, or None: see the module docstring."""
    data = np.frombuffer(block, np.uint8)
    if num_lines == 0 or data[-1] != ord("\n") or b"\r" in block:
        return None
    delims = np.flatnonzero(data < 14)  # tabs and newlines: no other byte of the alphabet is < 14
    if delims.size != NUM_FIELDS * num_lines:
        return None
    delims = delims.reshape(num_lines, NUM_FIELDS)
    # all num_lines newlines end a group of 40 delimiters, so the other 39 are tabs
    if not np.all(data[delims[:, -1]] == ord("\n")):
        return None
    line_starts = np.empty(num_lines, dtype=delims.dtype)
    line_starts[0] = 0
    line_starts[1:] = delims[:-1, -1] + 1
    labels = data[line_starts] - np.uint8(ord("0"))  # a byte below '0' wraps around to > 1
    if not (np.all(delims[:, 0] - line_starts == 1) and np.all(labels <= 1)):
        return None
    dense = np.empty((num_lines, NUM_DENSE_FEATURES), np.int64)
    ids = np.empty((num_lines, NUM_SPARSE_FEATURES), np.uint64)
    for a in range(0, num_lines, CHUNK_LINES):
        d = delims[a:a + CHUNK_LINES]
        gaps = np.diff(d, axis=1)  # field j + 1's length + 1
        nd = NUM_DENSE_FEATURES
        if not (_decode_fields(block, data, d[:, :nd], gaps[:, :nd], _decimal_values, 10, dense[a:a + len(d)])
                and _decode_fields(block, data, d[:, nd:-1], gaps[:, nd:], _hex_values, 16, ids[a:a + len(d)])):
            return None
    return labels, dense, ids
