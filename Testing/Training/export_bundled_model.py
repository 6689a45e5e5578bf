"""Export the bundled model from a training checkpoint with its provenance and measured quality in the header.

usage: python Testing/Training/export_bundled_model.py CHECKPOINT OUT [--stages N]
           [--provenance Testing/Training/bundled_provenance.json] [--evaluation docs/evaluation/bundled/metrics.json]
           [--evaluation-command "the command that wrote it"]

The provenance file says how each stage was trained (command, hardware, data split); the evaluation is the
``medsynth evaluate`` report of the validation cases. Both go into the model file's JSON header next to the
checkpoint's own record (iterations, train config, wall time), so ``medsynth info`` answers "where does this
model come from and how good is it" without this repository.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from MedSynthLogic.training import export_checkpoint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--stages", type=int, default=None, help="stages to export (default: the completed ones)")
    p.add_argument("--provenance", default="Testing/Training/bundled_provenance.json")
    p.add_argument("--evaluation", default=None, help="metrics.json of `medsynth evaluate` on the validation cases")
    p.add_argument("--evaluation-command", default="Testing/Evaluation/run_quality_report.sh <brats18 cases>",
                   help="the command that wrote --evaluation, recorded beside it")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)

    training = json.loads(Path(args.provenance).read_text(encoding="utf-8"))
    evaluation = None
    if args.evaluation:
        report = json.loads(Path(args.evaluation).read_text(encoding="utf-8"))
        evaluation = {
            "cases": [c["case"] for c in report["cases"]],
            "protocol": report["protocol"],
            "summary": report["summary"],
            "report": args.evaluation,
            "command": args.evaluation_command,
        }
    out = export_checkpoint(args.checkpoint, args.out, stages=args.stages, training=training, evaluation=evaluation,
                            overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
