"""What the checkpoint file checksums cost, per GB saved and loaded.

    python benchmarks/checkpoint_integrity.py [--gb 1] [--dir /tmp] [--json OUT]

Saves a table-shaped state (fp32 tables of 128 columns, ``--gb`` in all) with
``torch.distributed.checkpoint`` in one process, then times, per GB:

* ``save_s``: ``dcp.save``;
* ``hash_at_save_s``: what ``Checkpointer.save`` adds, ``integrity.describe`` of
  the files just written (sizes and XXH3-128);
* ``verify_s``: what export and resume add before loading, ``integrity.check_files``;
* ``load_s``: ``dcp.load`` of the whole state (through the safe reader);
* the same files hashed with hashlib's BLAKE2b and SHA-256, for the choice of hash.

The files were just written, so every read here comes from the page cache: the
figures are the hashing's CPU cost. On a cold cache (a resume on fresh nodes)
the check reads the files from disk once more than the load does; the load then
finds them in the page cache when memory allows.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict

import torch
import torch.distributed.checkpoint as dcp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import RESULTS, environment, machine_name, write_json  # noqa: E402
from dlrm_dist.training.integrity import SafeLoadPlanner, SafeReader, check_files, describe  # noqa: E402

DIM = 128
ROWS_PER_TABLE = 1 << 20  # 512 MiB per fp32 table


def _state(gb: float) -> Dict[str, torch.Tensor]:
    rows = int(gb * 2**30) // (DIM * 4)
    tables, left, i = {}, rows, 0
    while left > 0:
        n = min(left, ROWS_PER_TABLE)
        tables[f"t_cat_{i}.weight"] = torch.rand(n, DIM)
        left, i = left - n, i + 1
    return tables


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _hash_all(folder: Path, make: Callable[[], Any]) -> None:
    for p in sorted(folder.iterdir()):
        with open(p, "rb") as f:
            hashlib.file_digest(f, make).hexdigest()


def measure(gb: float, parent: Path) -> Dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="ckpt-integrity-", dir=parent))
    try:
        state = {"model": _state(gb)}
        save_s = _timed(lambda: dcp.save(state, checkpoint_id=folder, no_dist=True))
        names = [p.name for p in folder.iterdir()]
        meta: Dict[str, Any] = {}
        hash_s = _timed(lambda: meta.update(files=describe(folder, names)))
        size = sum(e["bytes"] for e in meta["files"].values())
        verify_s = _timed(lambda: check_files(folder, meta))
        target = {"model": {k: torch.empty_like(v) for k, v in state["model"].items()}}
        del state
        load_s = _timed(lambda: dcp.load(target, storage_reader=SafeReader(str(folder)), planner=SafeLoadPlanner(),
                                         no_dist=True))
        blake_s = _timed(lambda: _hash_all(folder, hashlib.blake2b))
        sha_s = _timed(lambda: _hash_all(folder, hashlib.sha256))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    gib = size / 2**30
    per = {k: v / gib for k, v in (("save_s", save_s), ("hash_at_save_s", hash_s), ("verify_s", verify_s),
                                   ("load_s", load_s), ("blake2b_s", blake_s), ("sha256_s", sha_s))}
    return {"bytes": size, "files": len(names), "per_gib": per,
            "save_overhead": hash_s / save_s, "load_overhead": verify_s / load_s,
            "xxh3_gib_per_s": gib / verify_s, "blake2b_gib_per_s": gib / blake_s, "sha256_gib_per_s": gib / sha_s}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gb", type=float, default=1.0, help="checkpoint size in GiB")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where to write it")
    p.add_argument("--machine", default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    result = measure(args.gb, args.dir)
    per = result["per_gib"]
    print(f"{result['bytes'] / 2**30:.2f} GiB in {result['files']} files, per GiB: save {per['save_s']:.2f} s, "
          f"+ checksums {per['hash_at_save_s']:.2f} s ({100 * result['save_overhead']:.0f}%); "
          f"load {per['load_s']:.2f} s, + verify {per['verify_s']:.2f} s ({100 * result['load_overhead']:.0f}%)")
    print(f"hash speed from page cache: xxh3_128 {result['xxh3_gib_per_s']:.2f} GiB/s, "
          f"blake2b {result['blake2b_gib_per_s']:.2f} GiB/s, sha256 {result['sha256_gib_per_s']:.2f} GiB/s")
    out = args.json or RESULTS / machine_name(args.machine) / "checkpoint_integrity.json"
    write_json(out, {"benchmark": "checkpoint_integrity", "gb": args.gb, "dir": str(args.dir), **result,
                     "environment": environment()})
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
