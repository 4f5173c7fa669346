"""tests/conftest.py:skip_unless_ci: a test CI must run skips elsewhere and fails in CI."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import run_cmd

NEEDS_ROOT = '''
from tests.conftest import skip_unless_ci

def test_needs_what_only_ci_has():
    skip_unless_ci("needs a thing this machine lacks")
'''


def _pytest(tmp_path: Path, ci: str):
    test = tmp_path / "test_needs.py"
    test.write_text(NEEDS_ROOT)
    return run_cmd([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(test)],
                   timeout=120, env={"CI": ci})


def test_skips_with_the_reason_outside_ci(tmp_path: Path):
    proc = _pytest(tmp_path, ci="")
    assert proc.returncode == 0, proc.stdout
    assert "1 skipped" in proc.stdout and "needs a thing this machine lacks" in proc.stdout, proc.stdout


def test_fails_with_the_reason_in_ci(tmp_path: Path):
    proc = _pytest(tmp_path, ci="true")
    assert proc.returncode == 1, proc.stdout
    assert "1 failed" in proc.stdout and "CI=true" in proc.stdout, proc.stdout
    assert "needs a thing this machine lacks" in proc.stdout, proc.stdout
