"""The torchx component adds what dist.ddp leaves out, and torchx can read it."""

from __future__ import annotations

import os

import pytest

from launchers.dlrm import train
from tests.conftest import run_cmd


def test_component_adds_torchrun_restarts_and_runs_our_module():
    app = train("--config", "configs/smoke.yaml", j="2x8", gpu=8, max_restarts=3)
    role = app.roles[0]
    cmd = role.args[-1]
    # the checkpoint to resume is checked before torchrun, which would retry a damaged one
    assert cmd.startswith("python -m dlrm_dist.training.resume --config configs/smoke.yaml && torchrun --max-restarts 3 ")
    assert "--nnodes 2" in cmd and "--nproc_per_node 8" in cmd
    assert "-m dlrm_dist.train --config configs/smoke.yaml" in cmd
    assert role.env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    assert role.resource.gpu == 8 and role.num_replicas == 2


def test_torchx_cli_parses_the_component():
    proc = run_cmd(["torchx", "run", "--dryrun", "-s", "local_cwd", "launchers/dlrm.py:train", "-j", "1x2",
                    "--max_restarts", "1", "--", "--config", "configs/smoke.yaml"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torchrun --max-restarts 1" in proc.stdout + proc.stderr


def test_preprocess_component_gives_each_node_its_share_of_days():
    from launchers.dlrm import preprocess
    from torchx.specs import macros

    app = preprocess("--dataset", "criteo_1tb", "--input", "/data/raw", "--output", "/data/npy", nnodes=4)
    (role,) = app.roles
    assert role.num_replicas == 4 and role.entrypoint == "python"
    assert role.args[:3] == ["-m", "dlrm_dist.cli", "preprocess"]
    assert role.args[-4:] == ["--nnodes", "4", "--node-rank", macros.replica_id]
    # what replica 2 runs once the scheduler fills in the macro
    values = macros.Values(img_root="", app_id="x", replica_id="2", rank0_env="X")
    assert values.apply(role).args[-1] == "2"


def test_kubernetes_dryrun_pod_spec(root):
    """`torchx run --dryrun -s kubernetes launchers/dlrm.py:train -j 2x8 --gpu 8`: the Volcano job
    torchx would submit has 2 replicas, 8 GPUs each, torchrun over 2 nodes, our env and mount."""
    pytest.importorskip("kubernetes", reason="torchx's kubernetes scheduler needs the kubernetes package "
                                               "(pip install -e '.[test]')")
    from torchx.runner import get_runner

    args = ["-j", "2x8", "--gpu", "8", "--image", "registry.example/dlrm:1", "--max_restarts", "1",
            "--mounts", "type=volume,src=criteo-npy,dst=/data",
            "--", "--config", "configs/criteo_1tb.yaml", "data.path=/data/npy"]
    with get_runner() as runner:
        info = runner.dryrun_component(f"{root}/launchers/dlrm.py:train", args, "kubernetes",
                                       cfg={"queue": "default", "namespace": "dlrm"}, workspace=None)
    job = info.request.resource
    assert job["kind"] == "Job" and job["metadata"]["name"].startswith("dlrm-") and job["spec"]["queue"] == "default"
    tasks = job["spec"]["tasks"]
    assert len(tasks) == 2 and all(t["replicas"] == 1 for t in tasks)  # one task per replica (node)
    for task in tasks:
        (container,) = task["template"].spec.containers
        assert container.image == "registry.example/dlrm:1"
        assert container.resources.limits["nvidia.com/gpu"] == "8"
        cmd = " ".join(container.command)
        assert "torchrun --max-restarts 1 " in cmd and "--nnodes 2" in cmd and "--nproc_per_node 8" in cmd
        assert "-m dlrm_dist.train --config configs/criteo_1tb.yaml data.path=/data/npy" in cmd
        env = {e.name: e.value for e in container.env}
        assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
        # rendezvous at the first pod: its own name on pod 0, Volcano's VC_TRAIN_0_HOSTS on the others
        assert "--rdzv_backend c10d --rdzv_endpoint ${" in cmd and "}:29500" in cmd
        assert [m.mount_path for m in container.volume_mounts if m.mount_path == "/data"] == ["/data"]
        volumes = {v.name: v for v in task["template"].spec.volumes}
        assert any(v.persistent_volume_claim and v.persistent_volume_claim.claim_name == "criteo-npy"
                   for v in volumes.values())


def test_torchx_cli_kubernetes_dryrun_reads_torchxconfig(root):
    pytest.importorskip("kubernetes", reason="torchx's kubernetes scheduler needs the kubernetes package")
    # --workspace "": no image build from the checkout (that needs docker; see README, multi-host)
    proc = run_cmd(["torchx", "run", "--dryrun", "--workspace", "", "-s", "kubernetes", "launchers/dlrm.py:train", "-j", "2x1",
                    "--", "--config", "configs/smoke.yaml"], timeout=120,
                   env={"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "queue: default" in out and "torchrun" in out and "dlrm_dist.train" in out
