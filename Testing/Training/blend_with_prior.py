"""Write a refiner model (one stage on top of a prior model) whose correction is scaled by WEIGHT.

usage: python Testing/Training/blend_with_prior.py MODEL OUT [--weight 0.5] [--overwrite]

With 0.5 the new file synthesises the mean of the prior's synthesis and the refiner's: the "P+ blend" candidate of
UNET_RECIPE.md (session 25), fixed before run P+ had a number. See ``MedSynthLogic.training.blend_model_file``.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from MedSynthLogic.training import blend_model_file

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--weight", type=float, default=0.5, help="share of the refiner's correction kept (0.5: the mean)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    out = blend_model_file(args.model, args.out, args.weight, overwrite=args.overwrite)
    print(f"wrote {out}: the prior's synthesis + {args.weight} x the correction of {args.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
