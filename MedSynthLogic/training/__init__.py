"""``medsynth train``: the adversarial training loop of Nie et al. with auto-context (ACM) stages.

One module a job: ``plan`` (the data folder checked against the configs), ``context`` (the auto-context input),
``resume`` (where a run starts), ``state`` (checkpoint state in and out), ``session`` (the run folder,
events, checkpoints), ``monitor`` (losses, NaN guard, stop), ``validation``, ``loop`` (``train``), ``export``
(model files), ``rebase`` (model files moved onto another normalisation, prior or stages for fine-tuning) and
``command`` (options, signals, ``python -m MedSynthLogic.training``). ``VAL_PATCHES`` is read from this package at
each validation, so lowering it here takes effect.
"""

from .command import configs_from_args, install_signal_handlers, main, train_from_args
from .context import build_context
from .export import average_model_files, blend_model_file, export_checkpoint
from .loop import train
from .plan import TrainingPlan, plan_training
from .rebase import extended_model_file, rebased_refiner_file, renormalised_model_file
from .validation import VAL_PATCHES

__all__ = [
    "TrainingPlan",
    "VAL_PATCHES",
    "average_model_files",
    "blend_model_file",
    "build_context",
    "configs_from_args",
    "export_checkpoint",
    "extended_model_file",
    "install_signal_handlers",
    "main",
    "plan_training",
    "rebased_refiner_file",
    "renormalised_model_file",
    "train",
    "train_from_args",
]
