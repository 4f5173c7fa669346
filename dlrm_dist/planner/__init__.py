"""Capacity planning before anyone books a cluster (``dlrm-dist plan``).

plan              the CLI: a job (nodes x GPUs, capacities) -> TorchRec's plan -> the report
capacity          memory per rank and per host: tables, optimizer state, dense, buffers, host RAM
plan_report       the plan as text and JSON
preprocess_cost   disk and RAM of preprocessing the Criteo datasets
"""
