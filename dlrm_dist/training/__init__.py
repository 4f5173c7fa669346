"""The training job: one rank's pieces, in the order a run uses them.

recipe        ``build_run``: data -> plan -> sharded model -> optimizers -> loader (train and benchmarks)
distributed   DistEnv: rank, world, device, backend, timeout; process-group set-up and teardown
sharding      Topology + TorchRec's planner -> plan -> DistributedModelParallel (the all-to-alls live here)
optim         fused embedding optimizer (in backward) + dense optimizer + LR schedule
trainer       the loop over TorchRec's train pipeline; evaluation; when to log and save
metrics       AUROC / logloss / accuracy / throughput and their sinks (stdout, JSONL, TensorBoard)
checkpoint    torch.distributed.checkpoint save / resume / reshard
faults        fault injection for tests (a rank that dies or hangs on cue)
profiling     torch.profiler traces of chosen steps
report        ``dlrm-dist report``: summarise and plot finished runs
"""
