"""Peak RSS of one evaluation's metrics, in a fresh process (ru_maxrss is a process's
high-water mark, so every mode needs its own).

    python -m tests.unit.eval_memory --mode exact|binned|torchmetrics_binned \
        --batch-size 8192 --thresholds 100000 --batches 16

``exact`` and ``binned`` are ``EvalMetrics`` as training builds it (thresholds 0 or
N); ``torchmetrics_binned`` is what ``EvalMetrics`` used before issue 15:
torchmetrics' ``BinaryAUROC(thresholds=N)``. Prints one JSON line: the peak RSS
before the first update (imports, data), the resident memory just before it
(``rss_before_bytes``: what the evaluation grows from; the import's high-water
mark can hide a small growth) and the peak after ``compute``, in bytes.
``--limit-gb`` caps the address space so the old path fails with a MemoryError
instead of taking a shared machine's RAM.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys


def _reset_high_water() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _high_water() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["exact", "binned", "torchmetrics_binned"], required=True)
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--thresholds", type=int, default=100_000)
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--limit-gb", type=float, default=0)
    args = p.parse_args()
    if args.limit_gb:
        cap = int(args.limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    import psutil
    import torch
    from torchmetrics.classification import BinaryAUROC

    from dlrm_dist.training.metrics import EvalMetrics, peak_rss_bytes

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(args.batches, args.batch_size, generator=g) < 0.25).float()
    logits = labels + torch.randn(args.batches, args.batch_size, generator=g) - 1.5
    cpu = torch.device("cpu")
    metrics = EvalMetrics(cpu, 0 if args.mode == "exact" else args.thresholds)
    if args.mode == "torchmetrics_binned":
        metrics.auroc = BinaryAUROC(thresholds=args.thresholds)
    before = peak_rss_bytes()
    rss_before = psutil.Process().memory_info().rss
    window = _reset_high_water()
    try:
        for i in range(args.batches):
            metrics.update(logits[i], labels[i])
        auc = metrics.compute()["auc"]
    except (MemoryError, RuntimeError) as e:  # the address-space cap was hit
        print(json.dumps({"mode": args.mode, "error": f"{type(e).__name__}: {str(e)[:200]}",
                          "limit_gb": args.limit_gb}))
        return 3
    print(json.dumps({"mode": args.mode, "batch_size": args.batch_size, "thresholds": args.thresholds,
                      "batches": args.batches, "auc": auc, "peak_rss_before_bytes": before,
                      "rss_before_bytes": rss_before,
                      "peak_rss_bytes": peak_rss_bytes(),
                      # the high-water mark of the evaluation alone (reset just before it), so
                      # an import that peaked higher than the evaluation does not hide it
                      "eval_peak_rss_bytes": _high_water() if window else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
