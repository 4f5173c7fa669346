"""The torchx component adds what dist.ddp leaves out, and torchx can read it."""

from __future__ import annotations

from launchers.dlrm import train
from tests.conftest import run_cmd


def test_component_adds_torchrun_restarts_and_runs_our_module():
    app = train("--config", "configs/smoke.yaml", j="2x8", gpu=8, max_restarts=3)
    role = app.roles[0]
    cmd = role.args[-1]
    assert cmd.startswith("torchrun --max-restarts 3 ")
    assert "--nnodes 2" in cmd and "--nproc_per_node 8" in cmd
    assert "-m dlrm_dist.train --config configs/smoke.yaml" in cmd
    assert role.env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    assert role.resource.gpu == 8 and role.num_replicas == 2


def test_torchx_cli_parses_the_component():
    proc = run_cmd(["torchx", "run", "--dryrun", "-s", "local_cwd", "launchers/dlrm.py:train", "-j", "1x2",
                    "--max_restarts", "1", "--", "--config", "configs/smoke.yaml"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torchrun --max-restarts 1" in proc.stdout + proc.stderr
