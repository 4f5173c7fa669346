"""The machine: what a node is and what it can do.

doctor      ``dlrm-dist doctor``: is this node ready for a job (exit 0/1)
host        facts read off this host: GPUs the driver sees, the memory limit the process has
stack       torch's build and FBGEMM's variant: do they agree with each other and the host (make install)
collectives all_reduce / all_to_all timed over the backend training picks (doctor, benchmarks/comm.py)
profiles    hardware profiles (GPUs and nodes people book) the planner's step-time model reads
calibrate   ``dlrm-dist calibrate``: measure this machine into a profile
measure     what calibrate measures, one figure per function
"""
