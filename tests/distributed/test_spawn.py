"""The spawn helper itself: ranks see torchrun's environment and can talk over gloo;
a failing rank's message reaches pytest; a hang becomes a failure, not a stuck CI job."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist

from tests.distributed.spawn import RankFailure, RankTimeout, run_on_ranks


def _all_reduce_ranks(world_size: int) -> None:
    assert os.environ["MASTER_ADDR"] == "127.0.0.1"
    assert int(os.environ["WORLD_SIZE"]) == int(os.environ["LOCAL_WORLD_SIZE"]) == world_size
    assert os.environ["RANK"] == os.environ["LOCAL_RANK"]
    dist.init_process_group("gloo")
    t = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(t)
    assert t.item() == sum(range(world_size))


def _fail_on_rank_1() -> None:
    if os.environ["RANK"] == "1":
        raise AssertionError("deliberate failure on rank 1")


def _exit_on_rank_0() -> None:
    if os.environ["RANK"] == "0":
        print("rank 0 about to exit", flush=True)
        os._exit(3)  # no Python traceback: the exit code and the output must still tell


def _hang() -> None:
    print(f"rank {os.environ['RANK']} waiting forever", flush=True)
    time.sleep(600)


def test_ranks_get_env_and_process_group():
    run_on_ranks(_all_reduce_ranks, 2, world_size=2, timeout_s=60)


def test_failing_rank_message_reaches_pytest():
    with pytest.raises(RankFailure, match="deliberate failure on rank 1"):
        run_on_ranks(_fail_on_rank_1, world_size=2, timeout_s=60)


def test_exit_code_without_traceback_fails():
    with pytest.raises(RankFailure, match="(?s)exit code 3.*rank 0 about to exit"):
        run_on_ranks(_exit_on_rank_0, world_size=2, timeout_s=60)


def test_hang_times_out_with_each_ranks_last_output():
    start = time.monotonic()
    with pytest.raises(RankTimeout, match="(?s)still running.*rank 1 waiting forever"):
        run_on_ranks(_hang, world_size=2, timeout_s=15)  # > a cold fork-server start
    assert time.monotonic() - start < 45


def test_spawn_start_method_also_works():
    run_on_ranks(_all_reduce_ranks, 2, world_size=2, timeout_s=120, start_method="spawn")
