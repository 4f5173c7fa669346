"""Byte units, one vocabulary for the whole package: GiB is 2**30 (what nvidia-smi,
free and the ``*_gb`` config keys mean), GB is 10**9 (only beside published
decimal figures, e.g. "104.5 GB of Terabyte tables")."""

MiB = 1024**2
GiB = 1024**3
GB = 10**9
