"""What a checkpoint's ``meta.json`` promises about its files, and reading them safely.

**Sizes and checksums.** At save, every rank hashes the files it wrote (DCP's
``__{rank}_*.distcp`` and its ``rank-{rank}.json``), rank 0 those it writes
alone (DCP's ``.metadata``, ``config.yaml``), and ``meta.json`` lists them all::

    "files": {"__0_0.distcp": {"bytes": 840516, "xxh3_128": "9f0c..."}, ...}

Before anything is loaded, export and resume check every file they read
against that list: present, the recorded size, the recorded checksum. A file
that fails is named with what is wrong, in a :class:`CheckpointDamaged`, and
nothing is read from the checkpoint. Damage on disk does not heal: a restart
would meet it again.

xxHash's XXH3 (the ``xxhash`` package, a binding of the reference C library)
hashes at memory speed, so the check costs about what reading the files costs
(``benchmarks/checkpoint_integrity.py`` measures it); a 128-bit digest makes a
collision by chance negligible. It is a checksum against damage (bit flips,
truncation, a lost file), not a signature: whoever can write the checkpoint can
write ``meta.json`` too.

**No code from a file.** DCP writes ``.metadata`` with ``pickle`` and reads it
with ``pickle.load``, and reads non-tensor entries with ``torch.load(
weights_only=False)``: a crafted checkpoint could run code on every rank.
:class:`SafeReader` and :class:`SafeLoadPlanner` read the same files with only
DCP's own metadata classes and plain data allowed.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import torch
import xxhash
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.planner import ReadItem

from dlrm_dist.core.errors import UserError

HASH = "xxh3_128"
# The layout of a step-N folder (see dlrm_dist.training.checkpoint)
DCP_METADATA = ".metadata"
META = "meta.json"
CONFIG = "config.yaml"
RANK_STATE = "rank-{rank}.json"
LATEST = "latest"  # beside the step-N folders: the name of the newest complete one
STEP_DIR = re.compile(r"step-(\d+)")


class CheckpointError(UserError):
    """A checkpoint to resume from is missing or incomplete; the message names the path."""


class CheckpointDamaged(CheckpointError):
    """A file of a checkpoint is missing, or its size or checksum is not what the
    save recorded in meta.json: the message names the checkpoint, the file and what
    is wrong. Not transient: retrying reads the same bytes."""

    def __init__(self, path: Path, problems: List[str], context: str = "") -> None:
        self.path, self.problems = Path(path), list(problems)
        super().__init__(f"{self.summary()}; nothing was loaded from it{context}, and retrying will not help: "
                         "restore the file or use another checkpoint")

    def summary(self) -> str:
        """"checkpoint P is damaged: FILE is ... (and N more)"."""
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"checkpoint {self.path} is damaged: {self.problems[0]}{more}"


def file_digest(path: Path) -> str:
    """XXH3-128 of a file's bytes, as hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, xxhash.xxh3_128).hexdigest()  # type: ignore[arg-type]


def describe(directory: Path, names: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    """``{name: {"bytes": size, "xxh3_128": digest}}`` of files in ``directory``."""
    return {n: {"bytes": (directory / n).stat().st_size, HASH: file_digest(directory / n)} for n in sorted(names)}


def rank_files(directory: Path, rank: int, rank_state_name: str) -> List[str]:
    """The files one rank wrote into a ``step-N`` folder: its DCP data files and its state file."""
    return sorted(p.name for p in directory.glob(f"__{rank}_*.distcp")) + [rank_state_name]


def check_file(directory: Path, name: str, recorded: Dict[str, Any]) -> str:
    """What is wrong with one file ("" when nothing): missing, size, checksum."""
    path = directory / name
    if not path.is_file():
        return f"{name} is missing (meta.json lists it, {recorded['bytes']} bytes)"
    size = path.stat().st_size
    if size != recorded["bytes"]:
        cut = " (truncated)" if size < recorded["bytes"] else ""
        return f"{name} is {size} bytes, meta.json recorded {recorded['bytes']}{cut}"
    digest = file_digest(path)
    if digest != recorded[HASH]:
        return f"{name} has checksum {digest}, meta.json recorded {recorded[HASH]} (its bytes changed after the save)"
    return ""


def check_files(directory: Path, meta: Dict[str, Any], names: Optional[Iterable[str]] = None,
                checksums: bool = True) -> List[str]:
    """Problems of the recorded files ``names`` (default: every file meta.json lists),
    one line each, cheapest checks first (all sizes before any checksum; only those
    with ``checksums=False``)."""
    files: Dict[str, Dict[str, Any]] = meta.get("files", {})
    chosen = sorted(files if names is None else names)
    problems = [f"{n} is not listed in meta.json" for n in chosen if n not in files]
    chosen = [n for n in chosen if n in files]
    for n in chosen:
        path = directory / n
        if not path.is_file() or path.stat().st_size != files[n]["bytes"]:
            problems.append(check_file(directory, n, files[n]))
    if problems or not checksums:
        return problems
    return [p for p in (check_file(directory, n, files[n]) for n in chosen) if p]


# --------------------------------------------------------------- reading without running code

_METADATA_MODULES = ("torch.distributed.checkpoint.metadata",)
_ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("torch.distributed.checkpoint.filesystem",
            "_StorageInfo"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "Path"),
            ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    """``pickle`` restricted to the classes DCP's ``.metadata`` is made of (the
    pattern of the ``pickle`` docs, "Restricting Globals"). Hand-written because
    torch's weights-only unpickler reads only ``torch.save`` archives, and DCP
    pickles its metadata raw."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or module in _METADATA_MODULES and not name.startswith("__"):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refused {module}.{name}: not part of a checkpoint's metadata")


class SafeReader(FileSystemReader):
    """DCP's file reader whose ``.metadata`` is unpickled with only DCP's classes."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        path = Path(self.path) / DCP_METADATA
        try:
            with open(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"{path}: {e}; loading it could run code") from None
        from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{path}: not a torch.distributed.checkpoint metadata file")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's load planner with non-tensor entries read as plain data only
    (``torch.load(weights_only=True)`` instead of DCP's ``weights_only=False``)."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            loaded = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"checkpoint entry {read_item.dest_index.fqn}: {str(e).splitlines()[0]}") from None
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element  # what DCP's own planner calls

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded
