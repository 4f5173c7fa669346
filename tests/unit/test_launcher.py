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


# ---- resources that fit the job (issue 15, section 1) ------------------------------------------------------- #


def _dryrun(root, scheduler: str, args: list, cfg: dict):
    from torchx.runner import get_runner

    with get_runner() as runner:
        return runner.dryrun_component(f"{root}/launchers/dlrm.py:train", args + ["--", "--config", "x.yaml"],
                                       scheduler, cfg=cfg, workspace=None)


def slurm_resources(root, *args: str) -> dict:
    """The ``#SBATCH`` options of the first node, as torchx's slurm scheduler writes them."""
    script = _dryrun(root, "slurm", list(args), {}).request.materialize()
    line = next(ln for ln in script.splitlines() if ln.startswith("#SBATCH --job-name=train-0"))
    opts = dict(o.split("=", 1) for o in line.split()[1:] if "=" in o)
    return {"cpu": int(opts["--cpus-per-task"]), "memMB": int(opts["--mem"]),
            "gpu": int(opts.get("--gpus-per-task", 0)), "script": script}


def kubernetes_resources(root, *args: str) -> dict:
    """The first pod's limits in the Volcano job torchx would submit."""
    pytest.importorskip("kubernetes", reason="torchx's kubernetes scheduler needs the kubernetes package")
    job = _dryrun(root, "kubernetes", list(args) + ["--image", "registry.example/dlrm:1"],
                  {"queue": "default"}).request.resource
    (container,) = job["spec"]["tasks"][0]["template"].spec.containers
    limits = container.resources.limits
    env = {e.name: e.value for e in container.env}
    return {"cpu": int(limits["cpu"].rstrip("m")) // 1000, "memMB": int(limits["memory"].rstrip("M")),
            "gpu": int(limits.get("nvidia.com/gpu", 0)), "env": env}


@pytest.mark.parametrize("resources", [slurm_resources, kubernetes_resources], ids=["slurm", "kubernetes"])
def test_cpu_and_memory_grow_with_gpus(root, resources):
    """A node of 8 GPU ranks asks for a core per rank and loader worker and ~4 GB per rank (the
    planner's 2.5 GiB CUDA process), not dist.ddp's 2 CPUs whatever the job."""
    by_gpus = {g: resources(root, "-j", f"2x{g}", "--gpu", str(g)) for g in (1, 2, 8)}
    assert [by_gpus[g]["gpu"] for g in (1, 2, 8)] == [1, 2, 8]
    cpus = [by_gpus[g]["cpu"] for g in (1, 2, 8)]
    mems = [by_gpus[g]["memMB"] for g in (1, 2, 8)]
    assert cpus[0] < cpus[1] < cpus[2] and mems[0] < mems[1] < mems[2]
    assert cpus[2] >= 8 * 3  # 8 ranks, each with data.num_workers=2 loader workers
    assert mems[2] >= 8 * 3 * 1024  # > 8 x (2.5 GiB process + workers)
    fewer_workers = resources(root, "-j", "2x8", "--gpu", "8", "--loader_workers", "0")
    assert fewer_workers["cpu"] < cpus[2] and fewer_workers["memMB"] < mems[2]


@pytest.mark.parametrize("resources", [slurm_resources, kubernetes_resources], ids=["slurm", "kubernetes"])
def test_cpu_job_and_overrides(root, resources):
    cpu_job = resources(root, "-j", "1x2")
    assert cpu_job["gpu"] == 0 and cpu_job["cpu"] >= 2 * 3 and cpu_job["memMB"] >= 2 * 2048
    told = resources(root, "-j", "1x2", "--cpu", "3", "--memMB", "5000")
    assert (told["cpu"], told["memMB"], told["gpu"]) == (3, 5000, 0)
    # torchx's named resources win over the sizing, as in dist.ddp
    named = resources(root, "-j", "1x8", "-h", "aws_p4d.24xlarge")
    assert (named["cpu"], named["gpu"]) == (96, 8)


def test_ranks_are_told_how_many_gpus_to_expect(root):
    assert "DLRM_DIST_EXPECT_GPUS=8" in slurm_resources(root, "-j", "2x8", "--gpu", "8")["script"]
    assert "DLRM_DIST_EXPECT_GPUS" not in slurm_resources(root, "-j", "1x2")["script"]
    assert train(j="1x8", h="aws_p4d.24xlarge").roles[0].env["DLRM_DIST_EXPECT_GPUS"] == "8"


def test_rank_memory_covers_the_planners_process_estimate():
    """The component's per-rank RAM must not fall below what the capacity planner says a rank's
    process holds before its data (these constants live in two places: this test ties them)."""
    from launchers import dlrm
    from dlrm_dist.planner import capacity

    assert dlrm.GPU_RANK_MB * 2**20 > capacity.CUDA_PROCESS_HOST_BYTES
    assert dlrm.CPU_RANK_MB * 2**20 > capacity.CPU_PROCESS_BYTES


def _readme_commands(root) -> list:
    """The ``torchx run`` commands of README's "On one GPU host, and on a cluster", one string each."""
    text = (root / "README.md").read_text()
    section = text[text.index("### On one GPU host, and on a cluster"):text.index("### Checkpoints and resume")]
    joined = section.replace("\\\n", " ")
    return [" ".join(line.split()) for line in joined.splitlines() if line.startswith("torchx run ")]


def test_readme_cluster_commands_ask_for_resources_that_fit(root):
    """Every slurm / kubernetes command the README shows, dry-run by the real torchx CLI: each node
    asks for at least what node_resources says its ranks and loader workers need, and its ranks
    are told to expect their GPUs."""
    import re
    import shlex

    from launchers.dlrm import node_resources

    commands = [c for c in _readme_commands(root) if " -s slurm " in c or " -s kubernetes " in c]
    assert len(commands) >= 3, commands
    for command in commands:
        args = shlex.split(command)
        if "kubernetes" in args:
            pytest.importorskip("kubernetes", reason="torchx's kubernetes scheduler needs the kubernetes package")
            args[2:2] = ["--workspace", ""]
        args.insert(2, "--dryrun")
        proc = run_cmd(args, timeout=120)
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
        out = proc.stdout + proc.stderr
        j, gpu = args[args.index("-j") + 1], int(args[args.index("--gpu") + 1])
        need_cpu, need_mem = node_resources(int(j.split("x")[1]), gpu, 2)
        if "slurm" in args:
            cpu, mem = map(int, re.search(r"--cpus-per-task=(\d+) --mem=(\d+)", out).groups())
        else:
            cpu, mem = re.search(r"limits:\s+cpu: (\d+)m\s+memory: (\d+)M", out).groups()
            cpu, mem = int(cpu) // 1000, int(mem)
        assert cpu >= need_cpu and mem >= need_mem, (command, cpu, mem)
        assert f"DLRM_DIST_EXPECT_GPUS={gpu}" in out or f"name: DLRM_DIST_EXPECT_GPUS\n" in out, command


def test_doctor_component_checks_each_node_with_the_jobs_grant(root):
    """`torchx run -s local_cwd launchers/dlrm.py:doctor` runs dlrm-dist doctor for real on this node;
    on slurm each node gets the GPUs (and is told to expect them) as a training job would."""
    script = _dryrun_doctor(root, "slurm", ["--nnodes", "2", "--gpu", "8", "--", "--dir", "/shared/ckpt"])
    assert script.count("--gpus-per-task=8") == 2 and "DLRM_DIST_EXPECT_GPUS=8" in script
    assert "python -m dlrm_dist.cli doctor --dir /shared/ckpt" in script
    proc = run_cmd(["torchx", "run", "-s", "local_cwd", "launchers/dlrm.py:doctor", "--", "--dir",
                    "runs/doctor-test"],
                   timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ready (" in proc.stdout + proc.stderr


def _dryrun_doctor(root, scheduler: str, args: list) -> str:
    from torchx.runner import get_runner

    with get_runner() as runner:
        info = runner.dryrun_component(f"{root}/launchers/dlrm.py:doctor", args, scheduler, cfg={}, workspace=None)
    return info.request.materialize()
