"""Shared fixtures: the repository root and a subprocess runner with the package importable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cmd(args: List[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run a command from the repo root with this interpreter's bin/ first on PATH."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.update(kwargs.pop("env", {}))
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture
def root() -> Path:
    return ROOT
