"""The test-only fault hooks (dlrm_dist.training.faults) are inert unless armed, fire only
where asked and only in a job's first attempt; dist.timeout_s is checked."""

from __future__ import annotations

import pytest

from dlrm_dist.training import faults
from dlrm_dist.config import ConfigError, load_config


def test_hooks_are_inert_without_the_variable(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.after_step(1, 5)
    assert faults.storage_writer("/tmp/x", 1, 5) is None


def test_raise_fires_on_its_rank_and_step_in_the_first_attempt_only(monkeypatch):
    monkeypatch.setenv(faults.ENV, "raise:1:5")
    faults.after_step(0, 5)
    faults.after_step(1, 4)
    with pytest.raises(RuntimeError, match="injected failure on rank 1 after step 5"):
        faults.after_step(1, 5)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # the restarted job recovers
    faults.after_step(1, 5)


def test_a_malformed_value_is_an_error(monkeypatch):
    monkeypatch.setenv(faults.ENV, "raise_at:1")
    with pytest.raises(ValueError, match="expected ACTION:RANK:STEP"):
        faults.after_step(1, 5)


def test_timeout_must_be_positive():
    assert load_config(None, ["dist.timeout_s=20"]).dist.timeout_s == 20.0
    with pytest.raises(ConfigError, match="dist.timeout_s"):
        load_config(None, ["dist.timeout_s=0"])
