"""``dlrm-dist preprocess``: raw Criteo TSV days -> ``day_{i}_{dense,sparse,labels}.npy``.

    dlrm-dist preprocess --dataset criteo_1tb|criteo_kaggle --input PATH --output DIR
        [--workers N] [--max-ind-range N] [--on-bad-line error|skip]
        [--dense-transform log1p|log_plus3] [--verify] [--no-progress]

Output per day ``i`` (the layout TorchRec's ``BinaryCriteoUtils`` /
``InMemoryBinaryCriteoIterDataPipe`` and the MLPerf reference read):
``day_{i}_dense.npy`` float32 (N, 13) transformed, ``day_{i}_sparse.npy``
(N, 26) int32 when ``--max-ind-range`` <= 2^31 else int64, and
``day_{i}_labels.npy`` int32 (N, 1); plus ``manifest.json``.

How it stays fast and bounded: each day is one pass over its raw file in
blocks of ~4 MB (parsed by ``criteo_tsv``) whose arrays are appended to the
outputs at once, so a worker holds a few blocks, never a day.

How it is resumable and atomic: a day is written under hidden ``.partial``
names, renamed when all three files are complete, and then marked done by
``day_{i}.done.json`` (rows, bad lines, sizes and sha256 of each file, the
settings and the raw file it came from). A rerun skips days whose marker
matches and redoes every other day; ``manifest.json`` is written last, from
the markers, once every day is done. A killed run leaves no file that looks
complete: partials have other names and a day without a marker is redone.

Over several hosts (``--nnodes N --node-rank R``, what the torchx component
``launchers/dlrm.py:preprocess`` passes each node of a job): node R converts the
days i with i % N == R into the shared output folder; each node locks and cleans
only its own days. ``manifest.json`` is written by whichever node finds every
day's marker complete after finishing its own share, i.e. the last to finish (two
finishing together write the same bytes, atomically). A node that finishes
earlier says which days it leaves to the others; a rerun of the lost share (or of
the whole job: finished days are skipped) completes the manifest.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Callable, Dict, List, Optional, Tuple

from tqdm import tqdm

from dlrm_dist.core.criteo import NUM_DENSE_FEATURES, NUM_SPARSE_FEATURES
from dlrm_dist.prep.criteo_tsv import BadLine, ParseSpec, parse_block_tolerant
from dlrm_dist.prep.npy_stream import NpyStreamWriter, WriteBehind, sha256_file
from dlrm_dist.prep.raw_days import DaySource, InputError, find_terabyte_days, iter_blocks, prefetch, split_kaggle
from dlrm_dist.core.errors import entry_point
from dlrm_dist.core.files import write_text_atomic
from dlrm_dist.core.units import GiB, MiB

KINDS = ("dense", "sparse", "labels")
MAX_BAD_LINE_EXAMPLES = 20
TRANSFORM_FORMULAS = {"log1p": "log(1 + max(x, 0)), empty = 0",
                      "log_plus3": "log(max(x + 3, 1)), empty = 0"}


def tool_version() -> str:
    import dlrm_dist

    return str(getattr(dlrm_dist, "__version__", "0.1.0"))


class BadLineError(InputError):
    """A malformed line under ``--on-bad-line error``; the message names file and line."""


@dataclass(frozen=True)
class Settings:
    dataset: str
    transform: str = "log1p"
    max_ind_range: Optional[int] = None
    on_bad_line: str = "error"
    block_bytes: int = 4 << 20
    block_delay_s: float = 0.0
    """Test hook: sleep after each block, so a test can kill a run mid-day."""

    def recorded(self) -> Dict[str, object]:
        """The settings that determine the output (a changed one means: redo the day).
        ``on_bad_line`` is not one of them: see ``load_done_marker``."""
        return {"dataset": self.dataset, "dense_transform": self.transform,
                "max_ind_range": self.max_ind_range, "version": tool_version()}


@dataclass(frozen=True)
class DayTask:
    source: DaySource
    out_dir: str
    settings: Settings

    def final(self, kind: str) -> Path:
        return Path(self.out_dir) / f"day_{self.source.day}_{kind}.npy"

    def partial(self, kind: str) -> Path:
        return Path(self.out_dir) / f".day_{self.source.day}_{kind}.npy.partial"

    @property
    def marker(self) -> Path:
        return Path(self.out_dir) / f"day_{self.source.day}.done.json"


def write_json_atomic(path: Path, obj: object) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _convert(task: DayTask, out: WriteBehind, progress: Callable[[int], None]) -> Tuple[int, List[BadLine]]:
    """Stream the day's blocks into the writers; returns (bad lines, first examples)."""
    s = task.settings
    spec = ParseSpec(s.transform, s.max_ind_range)
    skipped, examples = 0, []
    for first_line, num_lines, block in prefetch(iter_blocks(task.source, s.block_bytes)):
        parsed, bad = parse_block_tolerant(block, first_line, spec, num_lines)
        if bad and s.on_bad_line == "error":
            raise BadLineError(f"{task.source.path}, line {bad[0].line}: {bad[0].reason} "
                               "(--on-bad-line skip skips and counts such lines)")
        skipped += len(bad)
        examples.extend(bad[: MAX_BAD_LINE_EXAMPLES - len(examples)])
        out.append(parsed)
        progress(num_lines)
        if s.block_delay_s:
            time.sleep(s.block_delay_s)
    return skipped, examples


def keep_freed_memory() -> None:
    """Have glibc's malloc keep freed memory for reuse instead of returning it to the OS.

    Parsing a block makes dozens of temporary arrays of a few MB each; by default
    glibc serves those with fresh pages (mmap, or a heap it trims on every free), and
    zero-filling them on first touch cost up to ~1 us of system CPU per line in our
    measurement, as much as the parsing itself. Kept, they are reused: RSS stays at its (bounded) peak. A
    no-op where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-1, GiB)  # M_TRIM_THRESHOLD: trim only beyond 1 GB free
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: mmap only beyond 32 MB (its maximum)
    except (OSError, AttributeError):
        pass


def preprocess_day(task: DayTask, progress: Callable[[int], None]) -> Tuple[dict, float]:
    """Convert one day; returns its done-marker and the seconds it took."""
    keep_freed_memory()
    t0 = time.perf_counter()
    dtypes = {"dense": "float32", "sparse": ParseSpec(max_ind_range=task.settings.max_ind_range).sparse_dtype,
              "labels": "int32"}
    ncols = {"dense": NUM_DENSE_FEATURES, "sparse": NUM_SPARSE_FEATURES, "labels": 1}
    out = WriteBehind([NpyStreamWriter(task.partial(k), dtypes[k], ncols[k]) for k in KINDS])
    try:
        skipped, examples = _convert(task, out, progress)
        closed = dict(zip(KINDS, out.close()))
    except BaseException:
        out.abort()
        raise
    rows = closed["dense"][0]
    files = {}
    for k in KINDS:
        files[k] = {"name": task.final(k).name, "bytes": task.partial(k).stat().st_size,
                    "sha256": closed[k][1], "dtype": str(dtypes[k]), "shape": [rows, ncols[k]]}
    for k in KINDS:
        os.replace(task.partial(k), task.final(k))
    marker = {"day": task.source.day, "rows": rows, "skipped_lines": skipped, "on_bad_line": task.settings.on_bad_line,
              "bad_line_examples": [{"line": b.line, "reason": b.reason} for b in examples],
              "files": files, "settings": task.settings.recorded(), "source": task.source.identity()}
    write_json_atomic(task.marker, marker)
    return marker, time.perf_counter() - t0


def load_done_marker(task: DayTask, verify: bool = False) -> Optional[dict]:
    """The day's marker if its outputs are complete and match the current settings and input.

    A day finished without bad lines is reused whatever ``--on-bad-line`` says now (the
    usual rerun after a bad line stopped a run is with ``skip``: the days before it stand);
    a day that skipped lines is redone under ``error``, which must then stop there."""
    try:
        marker = json.loads(task.marker.read_text())
    except (OSError, ValueError):
        return None
    if marker.get("settings") != task.settings.recorded() or marker.get("source") != task.source.identity():
        return None
    if marker.get("skipped_lines") and task.settings.on_bad_line == "error":
        return None
    for kind in KINDS:
        path, meta = task.final(kind), marker["files"][kind]
        if not path.is_file() or path.stat().st_size != meta["bytes"]:
            return None
        if verify and sha256_file(path) != meta["sha256"]:
            return None
    return marker


def _pool_job(task: DayTask, queue: "mp.Queue[int]") -> Tuple[dict, float]:
    return preprocess_day(task, queue.put)


def _report(bar: tqdm, marker: dict, seconds: float) -> None:
    rate = (marker["rows"] + marker["skipped_lines"]) / max(seconds, 1e-9)
    skipped = f", {marker['skipped_lines']} bad lines skipped" if marker["skipped_lines"] else ""
    bar.write(f"day {marker['day']}: {marker['rows']:,} rows{skipped} in {seconds:.1f} s ({rate:,.0f} rows/s)")


def run_days(tasks: List[DayTask], workers: int, bar: tqdm) -> List[dict]:
    """Convert the days, ``workers`` at a time (in this process when 1)."""
    if workers <= 1 or len(tasks) <= 1:
        markers = []
        for task in tasks:
            marker, seconds = preprocess_day(task, bar.update)
            _report(bar, marker, seconds)
            markers.append(marker)
        return markers
    ctx = mp.get_context("spawn")  # not fork: pyarrow's and the allocator's threads do not survive it
    with ctx.Manager() as manager, ctx.Pool(workers) as pool:
        queue = manager.Queue()
        pending = {t.source.day: pool.apply_async(_pool_job, (t, queue)) for t in tasks}
        markers = []
        while pending:
            try:
                bar.update(queue.get(timeout=0.2))
            except Empty:
                pass
            for day in [d for d, r in pending.items() if r.ready()]:
                marker, seconds = pending.pop(day).get()  # re-raises the worker's error
                _report(bar, marker, seconds)
                markers.append(marker)
        while not queue.empty():
            bar.update(queue.get())
    return sorted(markers, key=lambda m: m["day"])


def build_manifest(settings: Settings, input_path: str, markers: List[dict]) -> dict:
    markers = sorted(markers, key=lambda m: m["day"])
    return {
        "tool": "dlrm_dist preprocess", "version": tool_version(), "dataset": settings.dataset,
        "input": input_path, "dense_transform": settings.transform,
        "dense_transform_formula": TRANSFORM_FORMULAS[settings.transform],
        "max_ind_range": settings.max_ind_range, "on_bad_line": settings.on_bad_line,
        "sparse_dtype": str(ParseSpec(max_ind_range=settings.max_ind_range).sparse_dtype),
        "num_days": len(markers), "total_rows": sum(m["rows"] for m in markers),
        "rows_per_day": [m["rows"] for m in markers],
        "skipped_lines_per_day": [m["skipped_lines"] for m in markers],
        "days": [{k: m[k] for k in ("day", "rows", "skipped_lines", "on_bad_line", "bad_line_examples",
                                    "files", "source")} for m in markers],
    }


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dlrm-dist preprocess", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, choices=["criteo_1tb", "criteo_kaggle"])
    p.add_argument("--input", required=True, type=Path,
                   help="criteo_1tb: folder of day_0 ... day_N (plain or .gz); criteo_kaggle: train.txt or its folder")
    p.add_argument("--output", required=True, type=Path, help="folder for the npy days and manifest.json")
    p.add_argument("--workers", type=int, default=0, help="days converted in parallel (default: CPU count)")
    p.add_argument("--max-ind-range", type=int, default=None,
                   help="store categorical ids modulo this (int32 ids when <= 2^31)")
    p.add_argument("--on-bad-line", choices=["error", "skip"], default="error",
                   help="error: stop at the first malformed line; skip: drop and count them")
    p.add_argument("--dense-transform", choices=sorted(TRANSFORM_FORMULAS), default="log1p",
                   help="log1p: log(1+max(x,0)) (default); log_plus3: log(max(x+3,1)), MLPerf-era")
    p.add_argument("--verify", action="store_true", help="recheck sha256 of finished days before skipping them")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--block-mb", type=float, default=4.0, help="raw text parsed per block (RSS ~100 MB + 15x this)")
    p.add_argument("--block-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--nnodes", type=int, default=1, help="hosts sharing the days (one job over several hosts)")
    p.add_argument("--node-rank", type=int, default=0, help="this host converts days i with i %% nnodes == node-rank")
    args = p.parse_args(argv)
    if args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
        p.error(f"--node-rank must be in [0, --nnodes): got {args.node_rank} of {args.nnodes}")
    if args.max_ind_range is not None and args.max_ind_range <= 0:
        p.error("--max-ind-range must be > 0")
    if args.workers < 0 or args.block_mb <= 0:
        p.error("--workers must be >= 0 and --block-mb > 0")
    return args


def _remove_partials(tasks: List[DayTask]) -> None:
    """Partials of these days only: other nodes may be writing theirs right now."""
    for task in tasks:
        for kind in KINDS:
            task.partial(kind).unlink(missing_ok=True)
        # and its marker's temporary file (core.files: .NAME.HOST-PID.partial), when a
        # worker was killed while writing it
        for tmp in task.marker.parent.glob(f".{task.marker.name}.*partial"):
            tmp.unlink(missing_ok=True)


def _prepare(tasks: List[DayTask], out: Path, verify: bool) -> Tuple[List[dict], List[DayTask]]:
    """Split days into done (their markers) and to-do; clear what a killed run left."""
    _remove_partials(tasks)
    done, todo = [], []
    for task in tasks:
        marker = load_done_marker(task, verify)
        if marker is not None:
            done.append(marker)
            continue
        todo.append(task)
        for path in [task.marker] + [task.final(k) for k in KINDS]:
            path.unlink(missing_ok=True)
    if todo:
        (out / "manifest.json").unlink(missing_ok=True)
    return done, todo


def run(args: argparse.Namespace) -> None:
    sources = (find_terabyte_days(args.input) if args.dataset == "criteo_1tb" else split_kaggle(args.input))
    settings = Settings(args.dataset, args.dense_transform, args.max_ind_range, args.on_bad_line,
                        int(args.block_mb * MiB), args.block_delay)
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    share = "" if args.nnodes == 1 else f" (node {args.node_rank} of {args.nnodes})"
    lock_name = ".preprocess.lock" if args.nnodes == 1 else f".preprocess-{args.node_rank}-of-{args.nnodes}.lock"
    with open(out / lock_name, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(f"another dlrm-dist preprocess{share} is writing {out}") from None
        all_tasks = [DayTask(src, str(out), settings) for src in sources]
        tasks = [t for i, t in enumerate(all_tasks) if i % args.nnodes == args.node_rank]
        done, todo = _prepare(tasks, out, args.verify)
        if done:
            print(f"resuming: {len(done)} of {len(tasks)} days already done, skipped")
        workers = min(args.workers or os.cpu_count() or 1, max(len(todo), 1))
        total = sum(t.source.lines for t in todo) if all(t.source.lines is not None for t in todo) else None
        t0 = time.perf_counter()
        with tqdm(total=total, unit=" rows", unit_scale=True, desc="preprocess", disable=args.no_progress) as bar:
            try:
                markers = run_days(todo, workers, bar)
            finally:  # partials of days a failure or Ctrl-C cut short (pool workers are killed)
                _remove_partials(todo)
        seconds = time.perf_counter() - t0
        write_manifest_if_complete(all_tasks, settings, str(args.input), out)
    rows = sum(m["rows"] + m["skipped_lines"] for m in markers)
    print(f"wrote {len(tasks)} days{share} to {out} ({rows:,} lines converted in {seconds:.1f} s, "
          f"{rows / max(seconds, 1e-9):,.0f} lines/s with {workers} worker(s))")


def write_manifest_if_complete(all_tasks: List[DayTask], settings: Settings, input_path: str, out: Path) -> None:
    """manifest.json from every day's marker, once all are there (see the module doc)."""
    markers = [load_done_marker(t) for t in all_tasks]
    missing = [t.source.day for t, m in zip(all_tasks, markers) if m is None]
    if missing:
        print(f"days {missing} are other nodes' share and not done yet: the node that finishes "
              f"last writes manifest.json")
        return
    write_json_atomic(out / "manifest.json", build_manifest(settings, input_path, markers))


@entry_point("dlrm-dist preprocess")
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        run(args)  # an InputError (a UserError) is reported by entry_point: exit 2
    except KeyboardInterrupt:
        print("dlrm-dist preprocess: interrupted; finished days are kept, rerun the same command "
              "to do the rest", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
