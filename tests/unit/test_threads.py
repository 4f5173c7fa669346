"""CPU threads per rank: ranks on one host share its cores instead of oversubscribing them."""

from __future__ import annotations

import os

import pytest

from dlrm_dist.config import DistConfig
from dlrm_dist.training.distributed import cpu_threads


def test_default_is_an_equal_share_of_this_process_cores(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(DistConfig(), local_world_size=1) == cores
    assert cpu_threads(DistConfig(), local_world_size=2) == max(1, cores // 2)
    assert cpu_threads(DistConfig(), local_world_size=4 * cores) == 1  # never 0


def test_omp_num_threads_then_the_config_key_override(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads(DistConfig(), local_world_size=2) == 3
    assert cpu_threads(DistConfig(num_threads=5), local_world_size=2) == 5
