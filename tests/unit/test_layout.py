"""The house rules of the package layout, checked rather than trusted.

* Offline preparation (``dlrm_dist.prep``, ``dlrm-dist synth``) runs without torch.
* No import cycle among ``dlrm_dist`` modules.
* The user-error path: a wrong ``data.path`` is one line and exit code 2, at once.
* Table names and the EmbeddingBagCollection path come from the model only.
"""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path
from typing import Dict, Set

import numpy as np
import pytest

from tests.conftest import ROOT, run_cmd

PACKAGE = ROOT / "dlrm_dist"

# A sitecustomize that makes torch (and what needs it) unimportable in the process
# and in every child process it starts (preprocessing workers).
_NO_TORCH = '''
import sys
class _NoTorch:
    BLOCKED = ("torch", "torchrec", "fbgemm_gpu", "torchmetrics", "torchx")
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            raise ImportError(f"{name} is blocked: this process must not need torch")
        return None
sys.meta_path.insert(0, _NoTorch())
'''


def test_synth_and_preprocess_run_without_torch(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_NO_TORCH)
    env = {"PYTHONPATH": f"{site}:{ROOT}"}
    probe = run_cmd(["python", "-c", "import torch"], env=env)
    assert probe.returncode != 0 and "blocked" in probe.stderr  # the blocker really blocks

    raw, npy = tmp_path / "raw", tmp_path / "npy"
    synth = run_cmd(["python", "-m", "dlrm_dist.cli", "synth", "--format", "tsv", "--days", "2",
                     "--rows-per-day", "3000", "--num-embeddings", "500", "--output", str(raw)], env=env)
    assert synth.returncode == 0, synth.stderr
    assert 0.6 < json.loads((raw / "teacher.json").read_text())["val_auc"] < 1.0
    prep = run_cmd(["python", "-m", "dlrm_dist.cli", "preprocess", "--dataset", "criteo_1tb", "--input", str(raw),
                    "--output", str(npy), "--workers", "2", "--no-progress"], env=env)
    assert prep.returncode == 0, prep.stderr
    assert np.load(npy / "day_1_sparse.npy").shape == (3000, 26)
    assert json.loads((npy / "manifest.json").read_text())["rows_per_day"] == [3000, 3000]


def _imports(path: Path, module: str) -> Set[str]:
    """dlrm_dist modules ``path`` imports at run time (anywhere in the file, lazy
    imports included; ``if TYPE_CHECKING:`` blocks excluded)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # drop TYPE_CHECKING-only imports
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m.startswith("dlrm_dist")}


def _graph() -> Dict[str, Set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return {name: {m for m in _imports(path, name) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_cycle_among_modules() -> None:
    graph = _graph()
    assert "dlrm_dist.prep.preprocess" in graph and "dlrm_dist.data.contract" in graph
    state: Dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


TORCH_FREE = {"dlrm_dist", "dlrm_dist.config"}
"""Outside prep: the modules offline preparation may import (with everything in core/)."""


def test_prep_never_imports_online_code() -> None:
    """Offline preparation depends on nothing that imports torch."""
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith("dlrm_dist.prep"):
            bad = {d for d in deps if not d.startswith(("dlrm_dist.prep", "dlrm_dist.core")) and d not in TORCH_FREE}
            assert not bad, f"{name} imports {bad}"
        if name.startswith("dlrm_dist.core"):  # the ground floor stands on nothing above it
            bad = {d for d in deps if not d.startswith("dlrm_dist.core") and d != "dlrm_dist"}
            assert not bad, f"{name} imports {bad}"


def test_no_arrow_from_online_code_into_prep() -> None:
    """Online code (data, training, model, planner, serving) takes schema facts from
    core/, never from the offline preparation: the house's arrows point one way.
    Only the CLI (which dispatches to ``prep``'s commands by name) may name it."""
    graph = _graph()
    for name, deps in graph.items():
        if not name.startswith("dlrm_dist.prep") and name != "dlrm_dist.cli":
            into_prep = {d for d in deps if d.startswith("dlrm_dist.prep")}
            assert not into_prep, f"{name} imports {into_prep}"


def test_every_folder_with_python_is_a_package_setup_finds() -> None:
    """A folder without ``__init__.py`` is left out of the wheel by ``find_packages``
    (``dlrm_dist/prep`` once was): every folder of the package must be found."""
    from setuptools import find_packages

    found = set(find_packages(str(ROOT), include=["dlrm_dist", "dlrm_dist.*"]))
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert folders <= found, f"folders with Python files that are not packages: {sorted(folders - found)}"


def test_the_top_level_lists_the_wings() -> None:
    """``ls dlrm_dist`` is a picture of the architecture: a few entry modules and the rooms."""
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    rooms = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert modules == ["__init__.py", "cli.py", "config.py", "train.py"]
    assert rooms == ["core", "data", "hardware", "model", "planner", "prep", "serving", "training"]


def test_a_wrong_data_path_is_one_line_and_exit_2_before_anything_else(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    start = time.monotonic()
    proc = run_cmd(["python", "-m", "dlrm_dist.train", "--config", "configs/criteo_kaggle.yaml",
                    "data.path=/no/such/dir", "--run-dir", str(run_dir)])
    seconds = time.monotonic() - start
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.path" in lines[0] and "/no/such/dir" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not run_dir.exists()  # nothing written: no run directory that looks like a run
    assert seconds < 30  # a generous bound for a loaded CI machine; it takes ~0.5 s


def test_table_names_and_the_collection_path_are_the_models_own() -> None:
    """Nobody but dlrm_dist/model spells the submodule path or the table prefix."""
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "model":
            continue
        text = path.read_text()
        assert "sparse_arch" not in text, f"{path} spells the model's submodule path"
        assert '"t_' not in text and "'t_" not in text, f"{path} spells the table prefix"


def test_a_checkpoint_of_other_tables_is_refused_not_unpinned() -> None:
    from dlrm_dist.training.checkpoint import CheckpointError, pin_sharding_types
    from dlrm_dist.config import ShardingConfig
    from dlrm_dist.model import table_name

    pinned = pin_sharding_types(ShardingConfig(), {table_name("cat_3"): "row_wise"})
    assert pinned.tables["cat_3"].sharding_types == ["row_wise"]
    with pytest.raises(CheckpointError, match="emb_cat_3"):
        pin_sharding_types(ShardingConfig(), {"emb_cat_3": "row_wise"}, "step-20/meta.json")


def test_numpy_auroc_matches_torchmetrics() -> None:
    import torch
    from torchmetrics.functional.classification import binary_auroc

    from dlrm_dist.core.teacher import auroc

    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=5000), 1)  # many ties
    labels = (rng.random(5000) < 1 / (1 + np.exp(-scores))).astype(np.int64)
    expected = float(binary_auroc(torch.from_numpy(scores), torch.from_numpy(labels)))
    assert auroc(scores, labels) == pytest.approx(expected, abs=1e-6)  # torchmetrics: float32
