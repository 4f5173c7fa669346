"""dlrm_dist: hybrid-parallel DLRM training on TorchRec, launched by torchx.

TorchRec and FBGEMM are deliberately NOT in install_requires: torchrec's own
metadata asks for ``fbgemm-gpu`` (the 465 MB CUDA build), which a CPU host must
not pull, and ``fbgemm-gpu`` is ABI-locked to one torch minor version. The
Makefile's ``install`` target installs ``fbgemm-gpu`` or ``fbgemm-gpu-cpu`` by
what the host has, then ``torchrec`` with ``--no-deps``; all three are pinned
together in requirements/stack.txt.
"""

from setuptools import find_packages, setup

setup(
    name="dlrm_dist",
    version="0.1.0",
    description="Hybrid-parallel DLRM on TorchRec: sharded tables, DDP MLPs, torchx launch",
    packages=find_packages(include=["dlrm_dist", "dlrm_dist.*"]),
    package_data={"dlrm_dist.hardware": ["profiles.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "torch==2.14.1",
        "torchmetrics==1.0.3",  # torchrec 1.8.0 pins it
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
    ],
    # kubernetes: torchx's kubernetes scheduler (and its --dryrun); <29 keeps urllib3 < 2 for torchx 0.7
    extras_require={"test": ["pytest>=7", "kubernetes>=26,<29"], "kubernetes": ["kubernetes>=26,<29"]},
    entry_points={"console_scripts": ["dlrm-dist=dlrm_dist.cli:main"]},
)
