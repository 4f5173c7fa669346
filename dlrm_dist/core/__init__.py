"""The ground floor: torch-free facts and helpers every wing stands on.

criteo    the Criteo schema (feature counts and names, table sizes, row counts, dense transforms)
teacher   the synthetic data's planted signal (numpy), shared by ``data`` and ``prep``
hashing   the deterministic id hashing both of them use
errors    UserError and the one-line, exit-code-2 path for mistakes a user can fix
files     atomic writes (nothing half-written that looks complete)
units     byte units (MiB, GiB, GB)
"""
