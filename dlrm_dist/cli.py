"""``dlrm-dist`` console script: one entry point, one module per subcommand.

    dlrm-dist train      --config FILE [--run-dir DIR] [section.key=value ...]
    dlrm-dist preprocess --dataset criteo_1tb|criteo_kaggle --input PATH --output DIR ...
    dlrm-dist synth      --format tsv --days D --rows-per-day N --output DIR
    dlrm-dist plan       --config FILE --nodes N --gpus-per-node G [--hardware NAME|FILE] ...
    dlrm-dist calibrate  --output FILE [--ranks N] [--seconds S]
    dlrm-dist report     RUN_DIR [RUN_DIR ...] [--output report.png]
    dlrm-dist export     CHECKPOINT --output model.pt [--dtype fp32|fp16|int8] [--program model.pt2]
    dlrm-dist predict    --model model.pt --data DIR [--split val|test] [--output preds.npy]
    dlrm-dist doctor     [--dir DIR ...] [--collectives] [--expect-gpus N]

Each subcommand's module has ``main(argv) -> int``; they are imported lazily so
``dlrm-dist plan --help`` does not pay for what ``train`` needs.
"""

from __future__ import annotations

import importlib
import sys
from typing import List, Optional

COMMANDS = {
    "train": ("dlrm_dist.train", "train DLRM (one process, or one rank under torchrun / torchx)"),
    "preprocess": ("dlrm_dist.prep.preprocess", "raw Criteo TSV days -> npy days"),
    "synth": ("dlrm_dist.prep.synth_tsv", "write raw Criteo-format days from the synthetic teacher"),
    "plan": ("dlrm_dist.planner.plan", "will this job fit? sharding plan and memory per rank and host"),
    "calibrate": ("dlrm_dist.hardware.calibrate", "measure this machine into a hardware profile for plan --hardware"),
    "report": ("dlrm_dist.training.report", "summarise and plot finished runs (summary.json, metrics.jsonl)"),
    "export": ("dlrm_dist.serving.export", "sharded checkpoint -> one single-process model (+ serving program)"),
    "predict": ("dlrm_dist.serving.predict", "click probabilities of an exported model for an npy folder"),
    "doctor": ("dlrm_dist.hardware.doctor", "is this node ready for a job? versions, GPUs, memory limit, shm, collectives"),
}


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: dlrm-dist COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\ndlrm-dist: unknown command '{argv[0]}'", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
