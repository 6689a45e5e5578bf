"""Export the bundled model from a training checkpoint or a model file with its provenance and measured quality in the header.

usage: python Testing/Training/export_bundled_model.py CHECKPOINT_OR_MODEL OUT [--stages N]
           [--provenance Testing/Training/bundled_provenance.json] [--evaluation docs/evaluation/bundled/metrics.json]
           [--evaluation-command "the command that wrote it"]

The provenance file says how each stage was trained (command, hardware, data split); the evaluation is the
``medsynth evaluate`` report of the validation cases. Both go into the model file's JSON header next to the
checkpoint's own record (iterations, train config, wall time), so ``medsynth info`` answers "where does this
model come from and how good is it" without this repository. A model file (``.safetensors``, e.g. a run's output or
a blend of it, ``blend_with_prior.py``) keeps its own training record and metrics, and gains the same two entries.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from MedSynthLogic.training import export_checkpoint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a training checkpoint (.pt) or a model file (.safetensors)")
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
    if args.checkpoint.endswith(".safetensors"):
        out = _restamp(args.checkpoint, args.out, args.stages, training, evaluation, args.overwrite)
    else:
        out = export_checkpoint(args.checkpoint, args.out, stages=args.stages, training=training, evaluation=evaluation,
                                overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def _restamp(model: str, out: str, stages: "int | None", training: dict, evaluation: "dict | None", overwrite: bool) -> Path:
    """A model file written again with the provenance added to its training record and the evaluation to its metrics."""
    from MedSynthLogic.model_file import load_model, save_model

    loaded = load_model(model, stages=stages)
    record = {**loaded.header.get("training", {}), "exported_from_model": Path(model).name, **training}
    metrics = dict(loaded.header.get("metrics", {}))
    if evaluation:
        metrics["evaluation"] = evaluation
    return save_model(out, loaded.chain, loaded.config, record, metrics, overwrite=overwrite)


if __name__ == "__main__":
    sys.exit(main())
