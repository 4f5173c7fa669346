"""After training: one single-process model out of a sharded checkpoint.

export    ``dlrm-dist export``: checkpoint -> model file (+ an AOT serving program)
program   the exported model's file format and the module that serves it
predict   ``dlrm-dist predict``: click probabilities for an npy folder
"""
