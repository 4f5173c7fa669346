"""The two-node Slurm cluster of ``launchers/local_slurm.sh``, brought up once for the module
(and down at its end); a cluster already up (a developer's ``local_slurm.sh up``) is used
as it is and left up. Without root or the Slurm packages the tests skip, saying why; in CI
(CI=true, root and apt: .ci/run) that is a failure instead (tests/conftest.py:skip_unless_ci)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import skip_unless_ci
from tests.cluster.local_cluster import ROOT, SCRIPT, STATE, Cluster, why_not


@pytest.fixture(scope="module")
def slurm() -> Iterator[Cluster]:
    reason = why_not()
    if reason:
        print(f"\nSKIP tests/cluster: {reason}")
        skip_unless_ci(reason)
    already_up = subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode == 0
    if not already_up:
        t0 = time.monotonic()
        proc = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, f"local_slurm.sh up failed:\n{proc.stderr[-3000:]}"
        print(f"\nlocal_slurm.sh up: {time.monotonic() - t0:.1f} s")
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])  # torchx, python of this venv
    env = {**os.environ, "SLURM_CONF": str(STATE / "etc" / "slurm.conf"), "PATH": path,
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    try:
        yield Cluster(env)
    finally:
        if not already_up:
            subprocess.run([str(SCRIPT), "down"], capture_output=True, timeout=120)
