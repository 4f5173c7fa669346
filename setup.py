"""dlrm_dist: hybrid-parallel DLRM training on TorchRec, launched by torchx.

TorchRec and FBGEMM are deliberately NOT in install_requires: torchrec's own
metadata asks for ``fbgemm-gpu`` (the 465 MB CUDA build), which a CPU host must
not pull, and ``fbgemm-gpu`` is ABI-locked to one torch minor version. The
Makefile's ``install`` target installs ``fbgemm-gpu`` or ``fbgemm-gpu-cpu`` by
what the host has, then ``torchrec`` with ``--no-deps``; all three are pinned
together in requirements/stack.txt.
"""

from pathlib import Path

from setuptools import find_packages, setup


def stack_pin(name: str) -> str:
    """One place pins the ABI-locked trio: requirements/stack.txt (the Makefile reads it too)."""
    lines = (Path(__file__).parent / "requirements/stack.txt").read_text().splitlines()
    pins = dict(line.strip().split("=", 1) for line in lines if "=" in line and not line.lstrip().startswith("#"))
    return pins[name]


setup(
    name="dlrm_dist",
    version="0.1.0",
    description="Hybrid-parallel DLRM on TorchRec: sharded tables, DDP MLPs, torchx launch",
    packages=find_packages(include=["dlrm_dist", "dlrm_dist.*"]),
    # the shipped configs (``--config smoke``) and hardware profiles travel with the package
    package_data={"dlrm_dist": ["configs/*.yaml", "hardware/*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        f"torch=={stack_pin('TORCH_VERSION')}",
        "torchmetrics==1.0.3",  # torchrec pins it
        "tensordict",
        "pyre-extensions",
        "iopath",
        "torchx==0.7.0",
        "pyarrow>=14",
        "numpy>=1.24",
        "pyyaml>=6",
        "psutil>=5.9",
        "tqdm>=4.60",
        "tensorboard>=2.14",
        "matplotlib>=3.7",
        "xxhash>=3.0",  # checkpoint file checksums (dlrm_dist.training.integrity)
    ],
    # kubernetes: torchx's kubernetes scheduler (and its --dryrun); <29 keeps urllib3 < 2 for torchx 0.7
    extras_require={"test": ["pytest>=7", "kubernetes>=26,<29"], "kubernetes": ["kubernetes>=26,<29"]},
    entry_points={"console_scripts": ["dlrm-dist=dlrm_dist.cli:main"]},
)
