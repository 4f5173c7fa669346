"""torchx component for dlrm_dist: topology and resources only, no hyperparameters.

torchx's built-in ``dist.ddp`` is enough for a single attempt:

    torchx run -s local_cwd dist.ddp -j 1x2 -m dlrm_dist.train -- --config configs/smoke.yaml

This component is the same job with what ``dist.ddp`` leaves out: torchrun's
``--max-restarts`` (``dist.ddp`` never passes it and ``local_cwd`` ignores
``--max_retries``), and the environment that makes restarts reliable:

    torchx run -s local_cwd launchers/dlrm.py:train -j 1x2 --max_restarts 2 -- --config configs/smoke.yaml
    torchx run -s slurm launchers/dlrm.py:train -j 4x8 --gpu 8 -- --config configs/criteo_1tb.yaml

Resources follow the job (``dist.ddp`` asks for 2 CPUs and 1 GB per node whatever
runs there, and Slurm / Kubernetes enforce it): unless ``--cpu`` / ``--memMB`` or a
named resource ``-h`` say otherwise, a node asks for :func:`node_resources` of its
ranks and their loader workers. With ``--gpu N`` the ranks are told to expect N GPUs
(``DLRM_DIST_EXPECT_GPUS``): a rank that cannot use them stops instead of training
on the CPU (dlrm_dist.training.distributed).

``preprocess`` spreads the days of ``dlrm-dist preprocess`` over the nodes of a
job (node r converts days i with i % nnodes == r into the shared output folder;
the last node to finish writes manifest.json, see dlrm_dist.prep.preprocess):

    torchx run -s slurm launchers/dlrm.py:preprocess --nnodes 4 -- \
        --dataset criteo_1tb --input /data/raw --output /data/npy --max-ind-range 40000000

``doctor`` runs ``dlrm-dist doctor`` on every node of a job with the job's grant
(GPUs, memory limit, /dev/shm, mounts), before booking them for training:

    torchx run -s slurm launchers/dlrm.py:doctor --nnodes 2 --gpu 8 -- --dir /shared/ckpt --collectives

(No ``from __future__ import annotations`` here: torchx reads the parameter
types at run time to parse the command line.)
"""

import shlex
from typing import Dict, List, Optional, Tuple

from torchx import specs
from torchx.specs import macros
from torchx.components.dist import ddp, parse_nnodes

from dlrm_dist.hardware.host import EXPECT_GPUS_ENV  # GPUs per node granted: the ranks' device check reads it

# What one node of a training job needs, per rank (dlrm_dist.planner.capacity has the
# figures; tests/unit/test_launcher.py fails if these fall below them).
GPU_RANK_MB = 4096
"""Host RAM of a CUDA rank: its process (capacity.CUDA_PROCESS_HOST_BYTES, 2.5 GiB:
CUDA torch, fbgemm, NCCL's host buffers) plus batches in flight and pinned copies."""
CPU_RANK_MB = 2048
"""Host RAM of a CPU rank before its tables (capacity.CPU_PROCESS_BYTES: 400 MiB with a +cpu torch,
~1 GiB with PyPI's CUDA build of torch 2.14.1 on a CPU host; plus
batches, activations and a small model's tables). A CPU rank holds its shard of the
tables in host RAM: size bigger models with ``dlrm-dist plan`` and pass ``--memMB``."""
WORKER_MB = 512
"""A DataLoader worker, forked from its rank: measured 14-30 MiB of private memory at
batch 4096-32768 (synthetic source, this CPU machine) plus its prefetched batches in
/dev/shm (2 x 12 MB at 32768 one-hot; a DCNv2 multi-hot batch of 8192 is ~15 MB);
512 MB leaves room for larger batches and the Criteo source's index arrays."""
AGENT_MB, AGENT_CPU = 1024, 1
"""torchrun's agent (rendezvous, the TCPStore) beside the ranks."""


def node_resources(nproc_per_node: int, gpu: int, loader_workers: int) -> Tuple[int, int]:
    """(CPUs, MB) a node of ``nproc_per_node`` ranks needs: a core for each rank and
    each of its loader workers (so workers never steal the cores that feed the GPUs),
    RAM for each rank's process and workers, and the agent's share. Hand-written:
    torchx's named resources are fixed machine shapes, not a job's sizes."""
    workers = nproc_per_node * max(0, loader_workers)
    cpu = nproc_per_node + workers + AGENT_CPU
    mem = nproc_per_node * (GPU_RANK_MB if gpu > 0 else CPU_RANK_MB) + workers * WORKER_MB + AGENT_MB
    return cpu, mem


def train(
    *script_args: str,
    j: str = "1x2",
    gpu: int = 0,
    cpu: int = -1,
    memMB: int = -1,
    loader_workers: int = 2,
    h: Optional[str] = None,
    max_restarts: int = 0,
    image: str = "ghcr.io/pytorch/torchx:0.7.0",
    env: Optional[Dict[str, str]] = None,
    rdzv_port: int = 29500,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Train DLRM with ``python -m dlrm_dist.train`` on every rank.

    Args:
        script_args: arguments of dlrm_dist.train (``--config FILE [overrides]``)
        j: {nnodes}x{nproc_per_node}, e.g. 2x8 for two hosts of eight GPUs
        gpu: GPUs per node (also the ranks per node on GPU hosts); ranks then refuse to run without them
        cpu: CPUs per node; -1: a core per rank and per loader worker, plus one
        memMB: host memory per node in MB; -1: 4 GB per GPU rank (2 GB per CPU rank)
            + 0.5 GB per loader worker + 1 GB (CPU ranks hold their tables too: ``dlrm-dist plan``)
        loader_workers: data.num_workers of the config (shipped GPU configs: 2), to size cpu/memMB
        h: a named resource of the scheduler instead of cpu/gpu/memMB (e.g. aws_p4d.24xlarge)
        max_restarts: times torchrun restarts the whole worker group after a failure
        image: container image (slurm / kubernetes)
        env: extra environment variables
        rdzv_port: rendezvous port on the first node
        mounts: container mounts, as in dist.ddp
    """
    job_env = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", **(env or {})}
    auto_cpu, auto_mem = node_resources(parse_nnodes(j)[2], gpu, loader_workers)
    app = ddp(
        *script_args, m="dlrm_dist.train", image=image, name="dlrm", h=h, gpu=gpu, j=j,
        cpu=auto_cpu if cpu < 0 else cpu, memMB=auto_mem if memMB < 0 else memMB,
        env=job_env, rdzv_port=rdzv_port, mounts=mounts,
    )
    role = app.roles[0]
    if role.resource.gpu > 0:  # --gpu, or the GPUs of the named resource -h
        role.env.setdefault(EXPECT_GPUS_ENV, str(role.resource.gpu))
    if max_restarts:
        # dist.ddp runs ``bash -c "torchrun ..."``: add torchrun's own restart flag, after a check
        # of the checkpoint to resume (torchrun would restart a damaged one's failure as a fault).
        role.args = [a.replace("torchrun ", f"torchrun --max-restarts {max_restarts} ", 1) for a in role.args]
        role.args[-1] = f"python -m dlrm_dist.training.resume {shlex.join(script_args)} && {role.args[-1]}"
    return app


def preprocess(
    *preprocess_args: str,
    nnodes: int = 2,
    cpu: int = 8,
    memMB: int = 16384,
    h: Optional[str] = None,
    image: str = "ghcr.io/pytorch/torchx:0.7.0",
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """``dlrm-dist preprocess`` over ``nnodes`` hosts, each converting its share of the days.

    Args:
        preprocess_args: arguments of dlrm-dist preprocess (--dataset, --input, --output ...);
            --input and --output must be on a filesystem every node sees
        nnodes: hosts (one process each; --workers sets the days converted at once per host)
        cpu: CPUs per node
        memMB: host memory per node in MB (~100 MB + 15x --block-mb per worker)
        h: a named resource of the scheduler instead of cpu/memMB
        image: container image (slurm / kubernetes)
        env: extra environment variables
        mounts: container mounts, as in dist.ddp (e.g. type=volume,src=criteo,dst=/data)
    """
    resource = specs.resource(cpu=cpu, gpu=0, memMB=memMB, h=h)
    role = specs.Role(
        name="preprocess",
        image=image,
        entrypoint="python",
        args=["-m", "dlrm_dist.cli", "preprocess", *preprocess_args, "--no-progress",
              "--nnodes", str(nnodes), "--node-rank", macros.replica_id],
        num_replicas=nnodes,
        resource=resource,
        env={"PYTHONUNBUFFERED": "1", **(env or {})},
        mounts=specs.parse_mounts(mounts) if mounts else [],
    )
    return specs.AppDef(name="dlrm-preprocess", roles=[role])


def doctor(
    *doctor_args: str,
    nnodes: int = 1,
    gpu: int = 0,
    cpu: int = 4,
    memMB: int = 8192,
    h: Optional[str] = None,
    image: str = "ghcr.io/pytorch/torchx:0.7.0",
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """``dlrm-dist doctor`` on each of ``nnodes`` nodes, granted what a training job would be:
    the GPUs, the cgroup limit, the container's /dev/shm and mounts are the job's own.

    Args:
        doctor_args: arguments of dlrm-dist doctor (--dir DIR, --collectives ...)
        nnodes: nodes to check (one process each)
        gpu: GPUs per node; the node fails the check unless torch can use them all
        cpu: CPUs per node
        memMB: host memory per node in MB
        h: a named resource of the scheduler instead of cpu/gpu/memMB
        image: container image (slurm / kubernetes)
        env: extra environment variables
        mounts: container mounts, as in dist.ddp (e.g. type=volume,src=ckpt,dst=/ckpt)
    """
    resource = specs.resource(cpu=cpu, gpu=gpu, memMB=memMB, h=h)
    job_env = {"PYTHONUNBUFFERED": "1", **(env or {})}
    if resource.gpu > 0:
        job_env.setdefault(EXPECT_GPUS_ENV, str(resource.gpu))
    role = specs.Role(
        name="doctor", image=image, entrypoint="python", args=["-m", "dlrm_dist.cli", "doctor", *doctor_args],
        num_replicas=nnodes, resource=resource, env=job_env,
        mounts=specs.parse_mounts(mounts) if mounts else [],
    )
    return specs.AppDef(name="dlrm-doctor", roles=[role])
