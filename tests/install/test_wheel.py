"""The package as a user installs it: a wheel, outside the checkout.

``pip wheel .`` once built a wheel without ``dlrm_dist/prep`` (no ``__init__.py``),
so a container image or shared environment failed on import. Here the wheel is
built, installed into a folder of its own, and used from a directory that is not
the checkout: the shipped config is found by name, and a run trains to the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT


def _run(args, cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_wheel_holds_every_package_and_trains_outside_the_checkout(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                  str(ROOT)], cwd=tmp_path, env=dict(os.environ))
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("dlrm_dist-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "dlrm_dist").rglob("__init__.py")}
    for package in packages:  # every package of the checkout, each with its modules
        assert f"{package}/__init__.py" in names, f"{package} is missing from {wheel.name}"
    assert "dlrm_dist/configs/smoke.yaml" in names

    site = tmp_path / "site"
    install = _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   cwd=tmp_path, env=dict(os.environ))
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Only the installed copy is importable: no checkout on the path, and run from a folder without configs/.
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    where = _run([sys.executable, "-c", "import dlrm_dist, dlrm_dist.prep.preprocess; print(dlrm_dist.__file__)"],
                 cwd=elsewhere, env=env)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(site)

    run_dir = elsewhere / "run"
    train = _run([sys.executable, "-m", "dlrm_dist.cli", "train", "--config", "smoke", "--run-dir", str(run_dir),
                  "dist.device=cpu", "train.max_steps=8", "train.eval_every=0", "metrics.progress_bar=false",
                  "data.train_samples=4096", "data.val_samples=1024", "data.test_samples=1024"],
                 cwd=elsewhere, env=env)
    assert train.returncode == 0, train.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 8 and 0.0 < summary["val_auc"] <= 1.0
