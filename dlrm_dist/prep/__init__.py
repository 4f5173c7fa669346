"""Offline preparation, free of torch: raw Criteo TSV -> npy days, and synthetic TSV.

preprocess   ``dlrm-dist preprocess``: the driver (workers, bounded memory, manifest)
raw_days     which raw file and byte range each day comes from
criteo_tsv   one block of TSV -> arrays (pyarrow), criteo_swar its fast path
npy_stream   appending arrays to a growing .npy file
synth_tsv    ``dlrm-dist synth``: raw Criteo-format days from the synthetic teacher
"""
