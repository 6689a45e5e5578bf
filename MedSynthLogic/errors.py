"""Errors a user can cause, each with its own exit code, so the CLI and Slicer can report them without a traceback."""

from __future__ import annotations

#: The situations a front end may word its own advice for (see ``MedSynthError.reason``).
REASONS = frozenset({
    "output_exists",  # the output file or folder exists and --overwrite was not given
    "model_written",  # --resume of a run that already wrote its model
    "run_folder_in_use",  # a new run in a folder that holds another run's checkpoints
    "schedule_changed",  # --resume with another schedule than the stopped run's
    "model_config_changed",  # --resume with another model config than the stopped run's
    "evaluation_changed",  # evaluate --resume with another predictor, options, cases or files than the stopped one's
    "data_changed",  # --resume on a data folder prepared again since the run stopped
    "stopped",  # training stopped on request, with a checkpoint to resume from
    "data_for_another_model",  # prepared data that do not fit the model config
    "device_unavailable",  # the requested device does not exist here
    "out_of_memory",
})


class MedSynthError(Exception):
    """Base of every error that is the user's to fix; ``exit_code`` is what the CLI exits with.

    ``hint`` says what to do in the CLI's words (its options). ``reason``, when set, names the situation (one of
    :data:`REASONS`) so a front end with buttons instead of options, the Slicer panel, can give its own advice;
    the CLI's error event carries it."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "", reason: str = "") -> None:
        super().__init__(message)
        if reason and reason not in REASONS:
            raise ValueError(f"unknown error reason {reason!r}")
        self.message = message
        self.hint = hint
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()

    def in_case(self, case_id: str) -> "MedSynthError":
        """The same error, its message prefixed by the case, so a failure in case 37 of 200 is findable."""
        already = self.message.startswith(f"Case {case_id}:")
        return type(self)(self.message if already else f"Case {case_id}: {self.message}", self.hint, reason=self.reason)


class UsageError(MedSynthError):
    """Wrong arguments or options."""

    exit_code = 2


class InputImageError(MedSynthError):
    """An input volume is missing, unreadable, or not a usable 3D scalar image."""

    exit_code = 3


class GeometryError(MedSynthError):
    """A source/target pair does not share a grid and may not be resampled."""

    exit_code = 4


class DataError(MedSynthError):
    """A data folder, HDF5 patch file or manifest is empty, partial or inconsistent."""

    exit_code = 5


class ModelFileError(MedSynthError):
    """A model or checkpoint file is missing, corrupt, tampered with, or made for another architecture."""

    exit_code = 6


class OutputError(MedSynthError):
    """An output path exists, equals an input, or cannot be written (permissions, disk full)."""

    exit_code = 7


class ResourceError(MedSynthError):
    """Not enough memory (host or GPU) or a requested device is absent."""

    exit_code = 8


class TrainingDiverged(MedSynthError):
    """A training loss became NaN or infinite: the weights are lost from that step on, so training stops."""

    exit_code = 9


class Cancelled(MedSynthError):
    """The user cancelled the work (Cancel button, SIGINT, SIGTERM)."""

    exit_code = 130
