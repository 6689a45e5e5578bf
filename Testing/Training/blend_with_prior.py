"""Write a refiner model (one stage on top of a prior model) whose correction is scaled by WEIGHT.

usage: python Testing/Training/blend_with_prior.py MODEL OUT [--weight 0.5] [--overwrite]

With 0.5 the new file synthesises the mean of the prior's synthesis and the refiner's: the "P+ blend" candidate of
UNET_RECIPE.md (session 25), fixed before run P+ had a number. The file keeps the source's training record, adds
what was blended, and drops its measured metrics, which belong to the unblended model.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from MedSynthLogic.errors import UsageError
    from MedSynthLogic.model_file import load_model, save_model
    from MedSynthLogic.models import scale_refinement

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--weight", type=float, default=0.5, help="share of the refiner's correction kept (0.5: the mean)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)

    loaded = load_model(args.model, stages=None)
    if loaded.config.prior is None or loaded.stages != 1:
        raise UsageError(f"{args.model} is not one stage on top of a prior model; only such a refiner is blended.")
    scale_refinement(loaded.chain.stages[0], args.weight)
    training = dict(loaded.header.get("training", {}))
    training["blend_with_prior"] = {
        "weight": args.weight, "from": args.model,
        "rule": "output = prior synthesis + weight x the refiner's correction (its output head scaled)",
    }
    out = save_model(args.out, loaded.chain, loaded.config, training=training, overwrite=args.overwrite)
    print(f"wrote {out}: prior + {args.weight} x the correction of {args.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
