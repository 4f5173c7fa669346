"""``dlrm-dist synth``: raw Criteo-format days drawn from the synthetic teacher.

    dlrm-dist synth --format tsv --days D --rows-per-day N --output DIR
        [--seed S] [--num-embeddings K | --config FILE] [--gzip]

Writes ``day_0 ... day_{D-1}`` (or ``day_i.gz``) in the Terabyte layout that
``dlrm-dist preprocess --dataset criteo_1tb`` reads: label, 13 integer counts
(small negatives included, as in Criteo), 26 categorical ids as 8-digit
lowercase hex. Day ``d`` holds samples ``[0, N)`` of the teacher's stream
``100 + d``, so the files are a pure function of the arguments.

``teacher.json`` records the teacher's own AUC on the first half (ceil(N/2)
rows) of the last day, the rows the criteo loader uses for validation: the
ceiling a model trained on these days approaches. No field is left empty: the
labels are the teacher's on exactly the values written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from dlrm_dist.config import load_config

from dlrm_dist.core.criteo import NUM_DENSE_FEATURES, NUM_SPARSE_FEATURES
from dlrm_dist.core.errors import entry_point
from dlrm_dist.core.teacher import Samples, Teacher, teacher_auc

STREAM_BASE = 100  # day d is the teacher's stream 100 + d
PIECE_ROWS = 1 << 18  # rows drawn and written at a time, to bound memory
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)
_SHIFTS = np.arange(28, -1, -4, dtype=np.uint64)
SCHEMA = pa.schema([("label", pa.int64())] + [(f"I{j}", pa.int64()) for j in range(1, 14)]
                   + [(f"C{j}", pa.string()) for j in range(1, 27)])


def hex8_array(ids: np.ndarray) -> pa.Array:
    """Ids < 2^32 -> 8-digit lowercase hex strings. Vectorised: formatting tens of
    millions of ids with Python's ``format`` would dominate the run time."""
    if ids.size and (ids.min() < 0 or ids.max() >= 2**32):
        raise ValueError("categorical ids must be in [0, 2^32) to be written as 8 hex digits")
    chars = _HEX_DIGITS[(ids.astype(np.uint64)[:, None] >> _SHIFTS) & np.uint64(0xF)]
    offsets = np.arange(0, 8 * len(ids) + 1, 8, dtype=np.int32)
    return pa.StringArray.from_buffers(len(ids), pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars)))


def samples_table(s: Samples) -> pa.Table:
    """One Criteo row per sample: label, I1..I13, C1..C26."""
    cols = {"label": pa.array(s.labels.astype(np.int64))}
    cols.update({f"I{j + 1}": pa.array(s.dense_raw[:, j]) for j in range(NUM_DENSE_FEATURES)})
    cols.update({f"C{f + 1}": hex8_array(s.sparse[:, f]) for f in range(NUM_SPARSE_FEATURES)})
    return pa.table(cols)


def write_day(teacher: Teacher, day: int, rows: int, path: Path, gzip: bool) -> None:
    """Write one raw day to ``path`` (via a temporary name, so a partial day never looks whole)."""
    tmp = path.with_name(f".{path.name}.partial")
    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    sink = pa.CompressedOutputStream(str(tmp), "gzip") if gzip else pa.OSFile(str(tmp), "wb")
    with sink, pacsv.CSVWriter(sink, SCHEMA, write_options=options) as w:
        for lo in range(0, rows, PIECE_ROWS):
            w.write_table(samples_table(teacher.draw(STREAM_BASE + day, lo, min(lo + PIECE_ROWS, rows))))
    os.replace(tmp, path)


def build_teacher(args: argparse.Namespace) -> Teacher:
    if args.config:
        cfg = load_config(args.config)
        seed = cfg.data.seed if args.seed is None else args.seed
        return Teacher(cfg.model.table_sizes(), seed=seed, zipf_exponent=cfg.data.zipf_exponent,
                       scale=cfg.data.teacher_scale)
    return Teacher([args.num_embeddings] * NUM_SPARSE_FEATURES, seed=args.seed or 0)


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dlrm-dist synth", description=__doc__.split("\n")[0])
    p.add_argument("--format", choices=["tsv"], required=True)
    p.add_argument("--days", type=int, required=True)
    p.add_argument("--rows-per-day", type=int, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--seed", type=int, default=None, help="teacher seed (default 0, or data.seed of --config)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--num-embeddings", type=int, default=100000, help="ids per feature (all 26 tables)")
    group.add_argument("--config", type=Path, help="take table sizes, seed and teacher settings from this config")
    p.add_argument("--gzip", action="store_true", help="write day_i.gz")
    args = p.parse_args(argv)
    if args.days < 1 or args.rows_per_day < 1:
        p.error("--days and --rows-per-day must be >= 1")
    if args.num_embeddings < 1 or args.num_embeddings > 2**32:
        p.error("--num-embeddings must be in [1, 2^32]")
    return args


@entry_point("dlrm-dist synth")
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    teacher = build_teacher(args)
    args.output.mkdir(parents=True, exist_ok=True)
    for day in range(args.days):
        write_day(teacher, day, args.rows_per_day, args.output / f"day_{day}{'.gz' if args.gzip else ''}", args.gzip)
    val_rows = (args.rows_per_day + 1) // 2
    info = {"val_auc": teacher_auc(teacher, STREAM_BASE + args.days - 1, val_rows), "val_rows": val_rows,
            "val_day": args.days - 1, "days": args.days, "rows_per_day": args.rows_per_day,
            "seed": teacher.seed, "table_sizes": teacher.cardinalities,
            "zipf_exponent": teacher.zipf_exponent, "teacher_scale": teacher.scale,
            "streams": f"day d = teacher stream {STREAM_BASE} + d"}
    (args.output / "teacher.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {args.days} days x {args.rows_per_day:,} rows to {args.output}; "
          f"teacher AUC on the validation half of day {args.days - 1}: {info['val_auc']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
