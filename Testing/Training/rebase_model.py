"""Move a model file onto another source normalisation, prior model or set of later stages, weights unchanged, as
the ``--init-model`` of a fine-tuning (see ``MedSynthLogic.training.rebase``).

usage:
  python Testing/Training/rebase_model.py normalise MODEL OUT --source '{"mode": "median", "median_value": 0.5, "clip_max": 2.0}'
  python Testing/Training/rebase_model.py prior REFINER PRIOR OUT
  python Testing/Training/rebase_model.py extend MODEL DONOR OUT
  python Testing/Training/rebase_model.py prior-cases REFINER PRIOR OUT
Each refuses to overwrite OUT unless --overwrite is given. ``prior-cases`` changes no weight: it gives a refiner
file from before session 42 its prior's training cases, read from the prior's own file (which must hold the same
weights), so ``medsynth evaluate`` can name every case its synthesis has seen
(``MedSynthLogic.training.prior.with_prior_cases``).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    from MedSynthLogic.config import IntensityConfig, from_dict
    from MedSynthLogic.training import extended_model_file, rebased_refiner_file, renormalised_model_file
    from MedSynthLogic.training.prior import with_prior_cases

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="op", required=True)
    n = sub.add_parser("normalise", help="the same weights under another source normalisation")
    n.add_argument("model")
    n.add_argument("out")
    n.add_argument("--source", required=True, help="the new source IntensityConfig as JSON")
    r = sub.add_parser("prior", help="a refiner's stages on top of another prior model")
    r.add_argument("refiner")
    r.add_argument("prior")
    r.add_argument("out")
    e = sub.add_parser("extend", help="MODEL's stages followed by DONOR's later ones")
    e.add_argument("model")
    e.add_argument("donor")
    e.add_argument("out")
    c = sub.add_parser("prior-cases", help="a refiner's record given its prior's training cases (weights unchanged)")
    c.add_argument("refiner")
    c.add_argument("prior")
    c.add_argument("out")
    for q in (n, r, e, c):
        q.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    if args.op == "normalise":
        out = renormalised_model_file(args.model, args.out, from_dict(IntensityConfig, json.loads(args.source)), args.overwrite)
    elif args.op == "prior":
        out = rebased_refiner_file(args.refiner, args.prior, args.out, args.overwrite)
    elif args.op == "prior-cases":
        out = with_prior_cases(args.refiner, args.prior, args.out, args.overwrite)
    else:
        out = extended_model_file(args.model, args.donor, args.out, args.overwrite)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
