"""Write the uniform weight average of model files trained from one start (a "model soup").

usage: python Testing/Training/average_models.py MODEL MODEL [MODEL ...] --out OUT [--overwrite]

The "soup" candidate of UNET_RECIPE.md (session 26): runs P+ and Q, two seeds of one refiner started from run P's
end, averaged before either had a validation number. See ``MedSynthLogic.training.average_model_files``.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from MedSynthLogic.training import average_model_files

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    out = average_model_files(args.models, args.out, overwrite=args.overwrite)
    print(f"wrote {out}: the mean of the weights of {', '.join(args.models)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
