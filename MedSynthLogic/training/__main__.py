"""``python -m MedSynthLogic.training``: what torchrun launches on every rank."""

import sys

from .command import main

sys.exit(main())
