"""A rank killed, stopped or failing, and saves killed or out of disk, on 2 local ranks.

Every case runs the shipped smoke config (sharding left to the planner) the way
a user would, under torchrun or torchx, and acts on a rank from outside:
SIGKILL, SIGSTOP, a full file system. Only what cannot be timed from outside
uses the test hooks of ``dlrm_dist.training.faults`` (an exception in one rank, a stall
inside ``dcp.save``). A recovered run must equal the uninterrupted one bit for
bit: ``==`` on its summary, ``torch.equal`` on every tensor of its checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

import pytest

from tests.conftest import ROOT, skip_unless_ci
from tests.distributed.test_checkpoint import BASE, SUMMARY_KEYS, assert_same_state

STEPS, EVERY = 60, 20  # 60 steps, a checkpoint every 20
RUN = BASE + [f"train.max_steps={STEPS}", f"train.checkpoint_every={EVERY}", "train.keep_checkpoints=0",
              "metrics.log_every=1"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _env(**extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("DLRM_DIST_FAULT", None)
    return {**env, **extra}


def _start(cmd: List[str], log: Path, **env: str) -> subprocess.Popen:
    """Start a job in its own process group (cleanup kills what it leaves), output to ``log``."""
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(**env), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _train_cmd(run_dir: Path, *overrides: str) -> List[str]:
    return ["-m", "dlrm_dist.train", "--run-dir", str(run_dir)] + RUN + list(overrides)


def _finish(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None or time.monotonic() > deadline:
            _finish(proc, 0)
            raise AssertionError(f"never saw {what}; job exit code {proc.poll()}\n{log.read_text()[-4000:]}")
        time.sleep(0.05)


def _train_events(run_dir: Path) -> List[dict]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["event"] == "train"]


def _reached(run_dir: Path, step: int) -> Callable[[], bool]:
    return lambda: any(e["step"] >= step for e in _train_events(run_dir))


def rank_pid(run_dir: Path, rank: int) -> Optional[int]:
    """The pid of ``rank``'s worker of the job writing ``run_dir``: the process whose
    command line names the run directory and whose environment torchrun gave
    RANK (the agent itself has none)."""
    for proc in Path("/proc").iterdir():
        try:
            if str(run_dir) not in (proc / "cmdline").read_bytes().decode(errors="replace"):
                continue
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"RANK={rank}".encode() in env and any(v.startswith(b"TORCHELASTIC_RESTART_COUNT=") for v in env):
            return int(proc.name)
    return None


def _summary(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {k: summary[k] for k in SUMMARY_KEYS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every recovered one must equal."""
    run_dir = tmp_path_factory.mktemp("faults") / "reference"
    log = run_dir.parent / "reference.log"
    assert _finish(_start(TORCHRUN + _train_cmd(run_dir), log), 600) == 0, log.read_text()[-4000:]
    return run_dir


def test_killed_rank_restarts_resumes_and_matches(reference: Path, tmp_path: Path):
    """SIGKILL rank 1 under launchers/dlrm.py:train --max_restarts 2 on torchx local_cwd:
    the job restarts, resumes from the last checkpoint and ends equal to the reference."""
    run_dir, log = tmp_path / "run", tmp_path / "torchx.log"
    cmd = ["torchx", "run", "-s", "local_cwd", "launchers/dlrm.py:train", "-j", "1x2", "--max_restarts", "2",
           "--", "--config", "configs/smoke.yaml", "--run-dir", str(run_dir)] + RUN[2:] + ["train.resume=latest"]
    proc = _start(cmd, log)
    _wait_for(f"step {EVERY + 5}", _reached(run_dir, EVERY + 5), proc, log)
    pid = rank_pid(run_dir, 1)
    assert pid, "no rank 1 worker found"
    os.kill(pid, signal.SIGKILL)
    killed_at, killed_step = time.time(), max(e["step"] for e in _train_events(run_dir))
    assert _finish(proc, 600) == 0, log.read_text()[-6000:]
    assert "resumed from" in log.read_text()
    assert _summary(run_dir) == _summary(reference)
    assert_same_state(reference / f"checkpoints/step-{STEPS}", run_dir / f"checkpoints/step-{STEPS}", tmp_path)
    after = [e for e in _train_events(run_dir) if e["time"] > killed_at]
    assert after[0]["step"] <= killed_step  # it went back to a checkpoint, and on to the end
    print(f"SIGKILL of rank 1 at step >= {killed_step} -> first step after resume (step {after[0]['step']}): "
          f"{after[0]['time'] - killed_at:.1f} s; load {os.getloadavg()[0]:.1f}")


def test_hung_rank_fails_the_job_within_the_timeout(tmp_path: Path):
    """SIGSTOP rank 1 with dist.timeout_s=20: rank 0's collective times out after 20 s
    and it exits naming the step and the collective; torchrun then SIGTERMs the
    stopped rank and SIGKILLs it after its 30 s shutdown grace (torch 2.13 ignores
    ``--shutdown-timeout`` on this path). The job never hangs."""
    timeout_s, torchrun_grace_s = 20, 30
    run_dir, log = tmp_path / "run", tmp_path / "torchrun.log"
    proc = _start(TORCHRUN + _train_cmd(run_dir, f"dist.timeout_s={timeout_s}"), log)
    pid = None
    try:
        _wait_for("step 5", _reached(run_dir, 5), proc, log)
        pid = rank_pid(run_dir, 1)
        assert pid, "no rank 1 worker found"
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        _wait_for("rank 0's error", lambda: "rank 0 failed in" in log.read_text(), proc, log, timeout_s + 60)
        error_after = time.monotonic() - stopped
        code = _finish(proc, torchrun_grace_s + 60)
        exit_after = time.monotonic() - stopped
    finally:
        if pid and Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
    out = log.read_text()
    assert code != 0
    assert timeout_s - 1 < error_after < timeout_s + 10, f"rank 0 failed {error_after:.0f} s after the stop"
    assert exit_after < timeout_s + torchrun_grace_s + 30, f"the job took {exit_after:.0f} s to end"
    line = next(l for l in out.splitlines() if "rank 0 failed in" in l)
    # Where: the step and the collectives under way. With metrics.log_every=1 every step ends
    # with the loss all-reduce, which has its own phase label; the stopped rank is in either.
    where = re.search(r"rank 0 failed in (train step (\d+) \(.*all-to-all.*\)|the loss all-reduce after step (\d+)):",
                      line)
    assert where, line
    assert int(where.group(2) or where.group(3)) >= 5, line  # a step at or after the stop
    # 2 CPU ranks (dist.device=cpu in BASE), so gloo says "Timed out waiting 20000ms for send ..." or "Application timeout caused pair
    # closure", depending on which side of the pair notices first
    assert "timed out" in line.lower() or "timeout caused" in line.lower(), line
    assert f"dist.timeout_s={timeout_s}" in line, line
    print(f"SIGSTOP rank 1 -> rank 0 fails: {error_after:.1f} s, job exits: {exit_after:.1f} s "
          f"(dist.timeout_s={timeout_s}); load {os.getloadavg()[0]:.1f}")


def test_failing_rank_stops_the_others_at_once(tmp_path: Path):
    """Rank 1 raises after step 5 (test hook): torchrun tears the job down within
    seconds, long before dist.timeout_s."""
    run_dir, log = tmp_path / "run", tmp_path / "torchrun.log"
    proc = _start(TORCHRUN + _train_cmd(run_dir, "dist.timeout_s=300"), log, DLRM_DIST_FAULT="raise:1:5")
    _wait_for("the injected failure", lambda: "injected failure" in log.read_text(), proc, log)
    raised = time.monotonic()
    code = _finish(proc, 120)
    took = time.monotonic() - raised
    assert code != 0
    assert took < 30, f"the job took {took:.0f} s to stop after rank 1 failed"
    assert "RuntimeError: DLRM_DIST_FAULT: injected failure on rank 1 after step 5" in log.read_text()
    print(f"rank 1 raised -> job exit: {took:.1f} s; load {os.getloadavg()[0]:.1f}")


def test_kill_during_save_resumes_from_the_last_complete_checkpoint(reference: Path, tmp_path: Path):
    """SIGKILL rank 1 while it is inside dcp.save of step 40 (stalled there by the
    test hook): step-40 stays incomplete, latest names step-20, and the rerun with
    resume=latest resumes from step-20 and ends equal to the reference."""
    run_dir, log = tmp_path / "run", tmp_path / "torchrun.log"
    save_step = 2 * EVERY
    proc = _start(TORCHRUN + _train_cmd(run_dir, "train.resume=latest"), log,
                  DLRM_DIST_FAULT=f"stall_save:1:{save_step}")
    _wait_for("the stall inside dcp.save", lambda: "stalls inside dcp.save" in log.read_text(), proc, log)
    os.kill(rank_pid(run_dir, 1), signal.SIGKILL)
    assert _finish(proc, 120) != 0
    ckpts = run_dir / "checkpoints"
    assert any((ckpts / f"step-{save_step}").glob("*.distcp"))  # the save was under way ...
    assert not (ckpts / f"step-{save_step}/meta.json").exists()  # ... and never completed
    assert (ckpts / "latest").read_text().strip() == f"step-{EVERY}"

    log2 = tmp_path / "rerun.log"
    assert _finish(_start(TORCHRUN + _train_cmd(run_dir, "train.resume=latest"), log2), 600) == 0, \
        log2.read_text()[-4000:]
    assert f"resumed from {ckpts / f'step-{EVERY}'} at step {EVERY}" in log2.read_text()
    assert _summary(run_dir) == _summary(reference)
    assert_same_state(reference / f"checkpoints/step-{STEPS}", ckpts / f"step-{STEPS}", tmp_path)


@pytest.fixture
def small_disk(reference: Path, tmp_path: Path):
    """A tmpfs with room for one checkpoint of the reference run and a half."""
    if os.geteuid() != 0:
        skip_unless_ci("mounting a small tmpfs needs root")
    size = sum(f.stat().st_size for f in (reference / f"checkpoints/step-{EVERY}").iterdir())
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size * 3 // 2 // 4096 * 4096 + 4096}", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        skip_unless_ci(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_names_the_problem_and_keeps_the_last_checkpoint(reference: Path, small_disk: Path,
                                                                      tmp_path: Path):
    """The second save does not fit: the job stops with "no space left on device" and
    the free space, and the first checkpoint is still complete and unchanged."""
    run_dir, log = tmp_path / "run", tmp_path / "torchrun.log"
    code = _finish(_start(TORCHRUN + _train_cmd(run_dir, f"train.checkpoint_dir={small_disk}"), log), 600)
    out = log.read_text()
    assert code != 0
    assert f"dlrm-dist train: error: saving checkpoint {small_disk / f'step-{2 * EVERY}'}: no space left on device (" \
        in out, out[-4000:]
    assert "MiB free there" in out
    assert (small_disk / "latest").read_text().strip() == f"step-{EVERY}"
    assert not (small_disk / f"step-{2 * EVERY}").exists()  # the partial save was removed
    assert_same_state(reference / f"checkpoints/step-{EVERY}", small_disk / f"step-{EVERY}", tmp_path)
