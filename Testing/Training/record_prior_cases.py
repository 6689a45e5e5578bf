"""Write a copy of a refiner model file whose prior record names the prior's training cases.

usage: python Testing/Training/record_prior_cases.py REFINER PRIOR OUT [--overwrite]

Refiner files written before session 42 record their prior model without its training cases, so ``medsynth evaluate``
cannot tell whether a scored case was seen by the prior's synthesis. PRIOR must be the file the refiner holds (the
same tensors); its header gives the cases. See ``MedSynthLogic.training.prior.with_prior_cases``.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from MedSynthLogic.training.prior import with_prior_cases

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("refiner")
    p.add_argument("prior")
    p.add_argument("out")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    out = with_prior_cases(args.refiner, args.prior, args.out, overwrite=args.overwrite)
    print(f"wrote {out}: {args.refiner} with the training cases of its prior {args.prior}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
