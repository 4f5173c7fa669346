"""torchx component for dlrm_dist: topology and resources only, no hyperparameters.

torchx's built-in ``dist.ddp`` is enough for a single attempt:

    torchx run -s local_cwd dist.ddp -j 1x2 -m dlrm_dist.train -- --config configs/smoke.yaml

This component is the same job with what ``dist.ddp`` leaves out: torchrun's
``--max-restarts`` (``dist.ddp`` never passes it and ``local_cwd`` ignores
``--max_retries``), and the environment that makes restarts reliable:

    torchx run -s local_cwd launchers/dlrm.py:train -j 1x2 --max_restarts 2 -- --config configs/smoke.yaml
    torchx run -s slurm launchers/dlrm.py:train -j 4x8 --gpu 8 -- --config configs/criteo_1tb.yaml

``preprocess`` spreads the days of ``dlrm-dist preprocess`` over the nodes of a
job (node r converts days i with i % nnodes == r into the shared output folder;
the last node to finish writes manifest.json, see dlrm_dist.prep.preprocess):

    torchx run -s slurm launchers/dlrm.py:preprocess --nnodes 4 -- \
        --dataset criteo_1tb --input /data/raw --output /data/npy --max-ind-range 40000000

(No ``from __future__ import annotations`` here: torchx reads the parameter
types at run time to parse the command line.)
"""

import shlex
from typing import Dict, List, Optional

from torchx import specs
from torchx.specs import macros
from torchx.components.dist import ddp


def train(
    *script_args: str,
    j: str = "1x2",
    gpu: int = 0,
    cpu: int = 2,
    memMB: int = 8192,
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
        gpu: GPUs per node (also the ranks per node on GPU hosts)
        cpu: CPUs per node
        memMB: host memory per node in MB (check with ``dlrm-dist plan``)
        h: a named resource of the scheduler instead of cpu/gpu/memMB
        max_restarts: times torchrun restarts the whole worker group after a failure
        image: container image (slurm / kubernetes)
        env: extra environment variables
        rdzv_port: rendezvous port on the first node
        mounts: container mounts, as in dist.ddp
    """
    job_env = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", **(env or {})}
    app = ddp(
        *script_args, m="dlrm_dist.train", image=image, name="dlrm", h=h, cpu=cpu, gpu=gpu,
        memMB=memMB, j=j, env=job_env, rdzv_port=rdzv_port, mounts=mounts,
    )
    role = app.roles[0]
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
