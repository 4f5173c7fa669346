"""Capacity planning before anyone books a cluster (``dlrm-dist plan``): will it fit,
and how fast will it run.

plan              the CLI: a job (nodes x GPUs, capacities) -> TorchRec's plan -> the report
capacity          memory per rank and per host: tables, optimizer state, dense, buffers, host RAM
plan_report       the plan as text and JSON
preprocess_cost   disk and RAM of preprocessing the Criteo datasets
step_time         the step-time model: terms per rank, overlap per pipeline, bottleneck
traffic           bytes a step moves per rank: embedding memory, all-to-all and all-reduce per link
dense_flops       the dense step's matmuls, counted from the model
performance       the model applied to a planned job (--hardware), TorchRec's estimate beside it, --plot
"""
