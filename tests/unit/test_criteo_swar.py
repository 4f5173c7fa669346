"""The numpy-only Criteo TSV path: exact where it answers, and it declines what it cannot vouch for."""

from __future__ import annotations

import random

import numpy as np
import pytest

from criteo_text import random_lines, reference_parse
from dlrm_dist.prep.criteo_swar import parse_regular
from dlrm_dist.prep.criteo_tsv import ParseSpec, _parse_with_arrow, check_line, parse_block


def block_of(lines):
    return "".join(line + "\n" for line in lines).encode()


@pytest.mark.parametrize("seed", range(6))
def test_equals_the_reference_and_the_arrow_path(seed):
    lines = random_lines(300 + seed, seed=100 + seed, big=[10**12, 10**18, 10**8][seed % 3])
    # the block's last fields, short, end right at the block's end
    fields = lines[-1].split("\t")
    fields[-2:] = ["", "d9d"] if seed % 2 else ["1", ""]
    lines[-1] = "\t".join(fields)
    block = block_of(lines)
    got = parse_regular(block, len(lines))
    assert got is not None
    labels, dense, ids = reference_parse(lines)
    np.testing.assert_array_equal(got[0], labels)
    np.testing.assert_array_equal(got[1], dense)
    np.testing.assert_array_equal(got[2].astype(np.int64), ids)
    for spec in (ParseSpec(), ParseSpec("log_plus3", 40_000_000), ParseSpec(max_ind_range=2**40)):
        fast, arrow = parse_block(block, spec), _parse_with_arrow(block, spec, len(lines))
        for a, b in zip(fast, arrow):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)


ODD_VALUES = ["", "-", "--1", "-0", "0", "00", "1-", "-a", "a-", "9223372036854775807", "9223372036854775808",
              "-9223372036854775808", "-9223372036854775809", "7fffffffffffffff", "8000000000000000",
              "ffffffff", "FFFFFFFFF", "-12345678", "12345678", "123456789", "-1234567", "0000000000000000001",
              "00000000000000001", "1" * 17, "fF09aA", "-ff", "1a"]


def test_never_accepts_a_bad_line_and_is_exact_when_it_accepts():
    """Random Criteo blocks with one field replaced by an odd value (or random alphabet
    characters): a block parse_regular answers for is valid line by line (check_line,
    the format's definition) and parsed exactly; it answers for most valid ones."""
    rng = random.Random(7)
    alphabet = "0123456789abcdefABCDEF-"
    answered = valid_blocks = 0
    for it in range(1500):
        lines = random_lines(rng.randint(1, 8), seed=1000 + it)
        i, j = rng.randrange(len(lines)), rng.randrange(40)
        fields = lines[i].split("\t")
        if rng.random() < 0.5:
            fields[j] = rng.choice(ODD_VALUES)
        else:
            fields[j] = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 18)))
        lines[i] = "\t".join(fields)
        valid = all(check_line(line.encode()) is None for line in lines)
        got = parse_regular(block_of(lines), len(lines))
        valid_blocks += valid
        if got is None:
            continue
        answered += 1
        assert valid, (lines[i], j)
        labels, dense, ids = reference_parse(lines)
        assert np.array_equal(got[0], labels) and np.array_equal(got[1], dense), (lines[i], j)
        assert np.array_equal(got[2].astype(np.int64), ids), (lines[i], j)
    assert answered > 0.9 * valid_blocks


@pytest.mark.parametrize("why, block", [
    ("CRLF line ends", b"\r\n".join(line.encode() for line in random_lines(5, seed=3)) + b"\r\n"),
    ("no newline at the end", block_of(random_lines(5, seed=3))[:-1]),
    ("label 00", block_of(["00" + random_lines(1, seed=3)[0][1:]])),
])
def test_declines_what_the_arrow_path_decides(why, block):
    lines = block.replace(b"\r", b"").decode().splitlines()
    assert parse_regular(block, len(lines)) is None
    labels, dense, ids = reference_parse(lines)
    parsed = parse_block(block, ParseSpec())  # still parsed, by the arrow path
    np.testing.assert_array_equal(parsed.labels[:, 0], labels)
    np.testing.assert_array_equal(parsed.sparse, ids)
