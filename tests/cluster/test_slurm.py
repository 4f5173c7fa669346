"""Multi-host for real, on the two-node Slurm cluster of launchers/local_slurm.sh.

One rank per node through torchx's slurm scheduler (heterogeneous job, c10d
rendezvous at the first node's name, gloo between the two namespaces), as a user
launches it:
  - ``dist.ddp -j 2x1`` learns what ``-j 1x2`` on local_cwd learns; summary.json
    names both hosts; the host-memory check ran once on each host;
  - ``launchers/dlrm.py:train --max_restarts 1``: SIGKILL of the rank on node 2 ->
    torchrun restarts both, they resume from the last checkpoint and end with
    exactly the metrics and tensors of the uninterrupted run;
  - the ``preprocess`` component over 2 nodes writes the one-host output byte for byte;
  - a lost node (its slurmd and every process in it killed) ends the job within a
    bounded time, never a hang;
  - a lost node, then Slurm's requeue (torchx submits ``--requeue``): the job waits
    PENDING (Reason=BeginTime, the credential lifetime local_slurm.sh sets to 80 s, not 120),
    starts again when the node is back, resumes from the last checkpoint and ends with
    exactly the metrics and tensors of the uninterrupted run.

Config: the smoke model on 200 steps, with the planner's own choice of sharding
types (ranks may hold different mixes: each restores its own optimizer and LR
schedule state on resume).
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
from typing import Dict, List

import pytest

from tests.cluster.local_cluster import NODES, ROOT, SCRIPT, Cluster
from tests.distributed.test_checkpoint import assert_same_state

OVERRIDES = [
    "data.train_samples=25600",  # 200 steps of 64 x 2 ranks
    "data.val_samples=4096", "data.test_samples=4096",
    "train.batch_size=64", "train.eval_every=0", "train.checkpoint_every=50",
    "metrics.log_every=5", "metrics.progress_bar=false", "dist.device=cpu",
]
JOB_TIMEOUT_S = 420
STEPS = 200
METRICS = ("steps", "val_auc", "test_auc", "val_logloss", "test_logloss", "val_accuracy", "test_accuracy")
# what "resumed" looks like in a rank's log (dlrm_dist/train.py): the step directory it loaded
RESUMED = re.compile(r"resumed from \S*/checkpoints/step-(\d+) at step (\d+)")


def torchx(cluster: Cluster, scheduler: str, component: List[str], run_dir: Path, cwd: Path,
           extra: List[str] = (), wait: bool = True):
    """``torchx run --wait`` of the test job from ``cwd`` (Slurm's job dir); ``wait=False`` returns
    its Popen at once, so the test can hurt the job while torchx waits for it."""
    # --wait: torchx returns when the job ends (polling sacct), with 1 unless it SUCCEEDED
    args = ["torchx", "run", "--wait", "-s", scheduler, *component, "--",
            "--config", str(ROOT / "configs" / "smoke.yaml"), "--run-dir", str(run_dir), *OVERRIDES, *extra]
    if wait:
        return cluster.run(args, timeout=JOB_TIMEOUT_S, cwd=cwd)
    return subprocess.Popen(args, cwd=cwd, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def summary(run_dir: Path) -> Dict:
    return json.loads((run_dir / "summary.json").read_text())


def job_id(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("slurm://"):
            return line.rsplit("/", 1)[1]
    raise AssertionError(f"no slurm:// handle in:\n{output[-2000:]}")


@pytest.fixture(scope="module")
def baseline(slurm: Cluster, tmp_path_factory) -> Dict:
    """dist.ddp -j 2x1 on Slurm, the uninterrupted run the others compare with."""
    work = tmp_path_factory.mktemp("ddp2x1")
    proc = torchx(slurm, "slurm", ["dist.ddp", "-j", "2x1", "-m", "dlrm_dist.train"], work / "run", work)
    logs = {p.name: p.read_text(errors="replace") for p in work.glob("slurm-*")}
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:] + "\n".join(
        f"--- {n}\n{t[-2000:]}" for n, t in logs.items())
    return {"summary": summary(work / "run"), "logs": logs, "id": job_id(proc.stdout + proc.stderr),
            "run_dir": work / "run"}


def assert_resumed_like_the_baseline(run_dir: Path, logs: str, baseline: Dict, killed_step: int, tmp: Path) -> int:
    """The run went back to a checkpoint at or before ``killed_step`` and ended exactly as the
    uninterrupted baseline: the same summary metrics (==) and, bit for bit, the same tensors in
    the final checkpoint (weights, fused optimizer state, dense optimizer state). Returns the
    step it resumed from."""
    resumed = [(int(a), int(b)) for a, b in RESUMED.findall(logs)]
    assert resumed, logs[-6000:]
    step = resumed[-1][0]
    assert resumed[-1][1] == step and 0 < step <= killed_step, (resumed, killed_step)
    got, whole = summary(run_dir), baseline["summary"]
    assert {k: got[k] for k in METRICS} == {k: whole[k] for k in METRICS}
    assert_same_state(baseline["run_dir"] / f"checkpoints/step-{STEPS}", run_dir / f"checkpoints/step-{STEPS}", tmp)
    return step


def test_ddp_2x1_on_slurm_runs_a_rank_per_node_and_learns_like_1x2_local(slurm: Cluster, baseline, tmp_path):
    s = baseline["summary"]
    assert s["world_size"] == 2 and sorted(s["hosts"]) == NODES, s["hosts"]
    assert s["steps"] == 200 and s["val_auc"] > 0.7, s
    # the host-memory check: once per host, by each host's local rank 0 (one rank per host here)
    for node in NODES:
        lines = sum(t.count(f"host memory check on {node}:") for t in baseline["logs"].values())
        assert lines == 1, (node, lines)
    # the same job on one host: same data, same global batch -> the same model, up to float noise
    proc = torchx(slurm, "local_cwd", ["dist.ddp", "-j", "1x2", "-m", "dlrm_dist.train"], tmp_path / "run", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    local = summary(tmp_path / "run")
    assert local["global_batch_size"] == s["global_batch_size"] and local["steps"] == s["steps"]
    assert abs(local["val_auc"] - s["val_auc"]) < 2e-3 and abs(local["test_auc"] - s["test_auc"]) < 2e-3, (local, s)
    print(f"\nsamples/s: slurm 2x1 {s['train_samples_per_s']:.0f}, local_cwd 1x2 {local['train_samples_per_s']:.0f}; "
          f"val AUC {s['val_auc']:.5f} vs {local['val_auc']:.5f} (load {os.getloadavg()[0]:.1f})")


def _wait_for(pred, timeout: float, what: str, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _events(run_dir: Path) -> List[Dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_killed_rank_on_node2_restarts_resumes_and_ends_like_the_uninterrupted_run(slurm: Cluster, baseline, tmp_path):
    run_dir = tmp_path / "run"
    job = torchx(slurm, "slurm", [f"{ROOT}/launchers/dlrm.py:train", "-j", "2x1", "--max_restarts", "1"], run_dir, tmp_path,
                 extra=["train.resume=latest"], wait=False)
    try:
        # after the first checkpoint, and a few steps past it
        _wait_for(lambda: (run_dir / "checkpoints" / "latest").exists()
                  and any(e["event"] == "train" and e["step"] >= 60 for e in _events(run_dir)),
                  240, "the first checkpoint")
        (victim,) = _wait_for(lambda: slurm.rank_pids("dlrm-n2"), 10, "the rank on dlrm-n2")
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        killed_step = max(e["step"] for e in _events(run_dir) if e["event"] == "train")
        out, _ = job.communicate(timeout=JOB_TIMEOUT_S)
    finally:
        if job.poll() is None:
            job.kill()
    logs = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("slurm-*"))
    assert job.returncode == 0, out[-2000:] + logs[-6000:]
    assert "failed (exitcode: -9)" in logs, logs[-6000:]
    after = [e for e in _events(run_dir) if e["event"] == "train" and e["time"] > killed_at]
    assert after, "no training step logged after the kill"
    assert after[0]["step"] <= killed_step  # it went back to a checkpoint, and on to the end
    step = assert_resumed_like_the_baseline(run_dir, logs, baseline, killed_step, tmp_path)
    print(f"\nSIGKILL at step >= {killed_step} -> resumed from step {step}; first logged step after it "
          f"(step {after[0]['step']}): {after[0]['time'] - killed_at:.1f} s (load {os.getloadavg()[0]:.1f})")


def test_preprocess_component_over_two_nodes_equals_one_host_byte_for_byte(slurm: Cluster, tmp_path):
    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    from criteo_text import random_lines, write_lines

    raw = tmp_path / "raw"
    raw.mkdir()
    for day in range(5):
        write_lines(raw / f"day_{day}", random_lines(300, seed=70 + day))
    args = ["--dataset", "criteo_1tb", "--input", str(raw), "--workers", "1"]
    one = slurm.run([sys.executable, "-m", "dlrm_dist.cli", "preprocess", *args, "--output", str(tmp_path / "one"),
                     "--no-progress"], timeout=300)
    assert one.returncode == 0, one.stderr
    proc = slurm.run(["torchx", "run", "--wait", "-s", "slurm", f"{ROOT}/launchers/dlrm.py:preprocess", "--nnodes", "2",
                      "--cpu", "1", "--memMB", "2048", "--", *args, "--output", str(tmp_path / "two")],
                     timeout=JOB_TIMEOUT_S, cwd=tmp_path)
    logs = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("slurm-*"))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs
    assert "(node 0 of 2)" in logs and "(node 1 of 2)" in logs, logs
    names = sorted(p.name for p in (tmp_path / "one").iterdir() if not p.name.startswith("."))
    assert "manifest.json" in names and "day_4_sparse.npy" in names
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir() if not p.name.startswith("."))
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_lost_node_ends_the_attempt_within_a_bounded_time(slurm: Cluster, tmp_path):
    """Node 2 vanishes mid-run (slurmd, step daemons and ranks SIGKILLed). Within a bound the
    attempt ends NODE_FAIL: Slurm either fails the job or, since torchx submits with
    ``--requeue``, requeues it (PENDING, to start again when nodes are back; with
    ``train.resume=latest`` it resumes). Never a hang; rank 0's log names the lost peer."""
    run_dir = tmp_path / "run"
    job = torchx(slurm, "slurm", [f"{ROOT}/launchers/dlrm.py:train", "-j", "2x1"], run_dir, tmp_path, wait=False)
    jid = None
    try:
        _wait_for(lambda: any(e["event"] == "train" and e["step"] >= 20 for e in _events(run_dir)),
                  240, "training to start")
        jid = next(tmp_path.glob("slurm-*-train-0.err")).name.split("-")[1]
        t0 = time.monotonic()
        kill = slurm.run([str(SCRIPT), "kill-node", "dlrm-n2"], timeout=60)
        assert kill.returncode == 0, kill.stderr

        def attempt_ended():  # -D: every attempt of a requeued job
            states = slurm.run(["sacct", "-n", "-X", "-D", "-P", "-j", jid, "-o", "State"]).stdout.split()
            return states if any(st in {"NODE_FAIL", "FAILED", "REQUEUED"} for st in states) else None

        # the bound: SlurmdTimeout (10 s) + a ping round + srun teardown
        states = _wait_for(attempt_ended, 120, f"job {jid} to end after node 2 was lost", poll=1)
        took = time.monotonic() - t0
    finally:
        if jid:
            slurm.run(["scancel", jid])  # a requeued attempt would wait for the node, then start again
        if job.poll() is None:
            job.kill()
        job.communicate()
        slurm.up()  # brings node 2's slurmd back (ReturnToService=2 lets it rejoin)
    logs = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("slurm-*"))
    assert any(m in logs for m in ("Connection reset by peer", "Connection closed by peer")), logs[-4000:]
    assert "rank 0 failed" in logs or "rank 1 failed" in logs, logs[-4000:]
    assert not (run_dir / "summary.json").exists()
    print(f"\nlost node: job {jid} attempt ended {states} {took:.1f} s after node 2 was killed")


def _job_states(slurm: Cluster, jid: str) -> List[str]:
    """The state of each component of heterogeneous job ``jid``'s latest attempt (sacct)."""
    out = slurm.run(["sacct", "-n", "-X", "-P", "-j", jid, "-o", "State"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]  # "CANCELLED by 0" -> CANCELLED


def _squeue(slurm: Cluster, jid: str) -> List[str]:
    """``STATE REASON`` of each component of ``jid`` while Slurm still lists it."""
    return slurm.run(["squeue", "-h", "-j", jid, "-o", "%T %r"]).stdout.strip().splitlines()


def test_lost_node_requeue_resumes_and_ends_like_the_uninterrupted_run(slurm: Cluster, baseline, tmp_path):
    """Node 2 is lost mid-run (after a checkpoint). torchx submits with ``--requeue``: Slurm
    ends the attempt NODE_FAIL and requeues the job, which waits PENDING with
    Reason=BeginTime (the job-credential lifetime + 1 s: 120 s by default, 80 s on
    local_slurm.sh) and then for nodes. Node 2 comes back; the job starts again with the same
    command, ``train.resume=latest`` takes the last complete checkpoint, and the run ends
    exactly as the uninterrupted one."""
    run_dir = tmp_path / "run"
    job = torchx(slurm, "slurm", [f"{ROOT}/launchers/dlrm.py:train", "-j", "2x1"], run_dir, tmp_path,
                 extra=["train.resume=latest"], wait=False)
    jid = None
    try:
        _wait_for(lambda: (run_dir / "checkpoints" / "latest").exists()
                  and any(e["event"] == "train" and e["step"] >= 60 for e in _events(run_dir)),
                  240, "the first checkpoint")
        jid = next(tmp_path.glob("slurm-*-train-0.err")).name.split("-")[1]
        killed_step = max(e["step"] for e in _events(run_dir) if e["event"] == "train")
        t_kill = time.monotonic()
        kill = slurm.run([str(SCRIPT), "kill-node", "dlrm-n2"], timeout=60)
        assert kill.returncode == 0, kill.stderr
        # requeued: PENDING again, then (once the scheduler has looked at it) held by BeginTime
        _wait_for(lambda: any(r.startswith("PENDING") for r in _squeue(slurm, jid)),
                  120, f"job {jid} to be requeued after node 2 was lost", poll=0.5)
        t_requeued = time.monotonic()
        held = _wait_for(lambda: (lambda q: q if q and "PENDING None" not in q else None)(_squeue(slurm, jid)),
                         30, f"the scheduler to give requeued job {jid} a reason", poll=0.5)
        assert all(r == "PENDING BeginTime" for r in held), held
        up = slurm.run([str(SCRIPT), "up"], timeout=120)  # node 2 is back (ReturnToService=2)
        assert up.returncode == 0, up.stderr
        _wait_for(lambda: _squeue(slurm, jid) and all(r.startswith("RUNNING") for r in _squeue(slurm, jid)),
                  180, f"job {jid} to start again", poll=0.5)
        t_running = time.monotonic()
        ended = {"COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY"}

        def run_ended():
            states = _job_states(slurm, jid)
            return states if states and all(st in ended for st in states) else None

        states = _wait_for(run_ended, JOB_TIMEOUT_S, f"job {jid} to end after its requeue", poll=2)
        t_done = time.monotonic()
    finally:
        if jid and not all(st == "COMPLETED" for st in _job_states(slurm, jid)):
            slurm.run(["scancel", jid])
        if job.poll() is None:  # torchx --wait may have returned at the failed attempt, or still wait
            job.kill()
        job.communicate()
        slurm.up()
    attempts = slurm.run(["sacct", "-n", "-X", "-D", "-P", "-j", jid, "-o", "State"]).stdout.split()
    assert "NODE_FAIL" in attempts or "REQUEUED" in attempts, attempts  # the first attempt, as sacct kept it
    logs = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("slurm-*"))
    assert all(st == "COMPLETED" for st in states), (states, logs[-6000:])
    # the requeue hold: cred_expire (80 s on local_slurm.sh) + 1, plus a backfill pass (bf_interval=2);
    # Slurm's default (120 s) would hold it 121 s
    assert t_running - t_requeued < 105, f"the requeued job started {t_running - t_requeued:.0f} s after its requeue"
    step = assert_resumed_like_the_baseline(run_dir, logs, baseline, killed_step, tmp_path)
    print(f"\nlost node at step >= {killed_step}: requeued (PENDING, BeginTime) {t_requeued - t_kill:.1f} s "
          f"after the kill, RUNNING again {t_running - t_requeued:.1f} s after that, resumed from step {step}, "
          f"COMPLETED {t_done - t_running:.1f} s later (load {os.getloadavg()[0]:.1f})")
