"""Shared fixtures: the repository root, a subprocess runner with the package importable, and
``skip_unless_ci``: the skip of a test that CI must run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parents[1]
# CI sets CI=true (.ci/run, and GitHub Actions / GitLab CI do the same).
IN_CI = os.environ.get("CI", "").lower() == "true"


def skip_unless_ci(reason: str) -> None:
    """Skip a test that needs what only some machines have (root, apt, the Slurm packages).

    Outside CI it skips with ``reason`` (``pytest -rs`` prints it). In CI, which has root and
    apt (.ci/run), the same condition means the test never ran: a green run would then say
    nothing about the cluster or the full disk, so it fails instead, naming the reason."""
    if IN_CI:
        pytest.fail(f"CI=true, and this test must run in CI, but: {reason}", pytrace=False)
    pytest.skip(reason)


def run_cmd(args: List[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run a command from the repo root with this interpreter's bin/ first on PATH."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.update(kwargs.pop("env", {}))
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture
def root() -> Path:
    return ROOT
