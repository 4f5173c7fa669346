"""dlrm_dist: hybrid-parallel DLRM training on TorchRec, launched by torchx.

The folders are the wings of the house; data flows one way, top to bottom:

    config.py   typed config sections (YAML + dotted overrides), strict
    core/       torch-free ground floor: the Criteo schema, the synthetic teacher, errors, units
    prep/       offline, torch-free: raw Criteo TSV -> npy days; synthetic TSV
    data/       online sources behind one split contract; the DataLoader
    model/      DLRM / DLRM-DCNv2 on torchrec.models.dlrm; owns where its tables are
    training/   the training job: recipe, distributed set-up, sharding, optimizers, loop,
                metrics, checkpoints
    planner/    ``dlrm-dist plan``: will the job fit, and where memory goes
    serving/    ``dlrm-dist export`` / ``predict``: one single-process model from a checkpoint
    train.py    ``python -m dlrm_dist.train``: one rank of the job (what torchx runs)
    cli.py      ``dlrm-dist``: one subcommand per module
"""
