"""Synthesis from the panel: the ``medsynth synthesize`` arguments, the input check before launching, the result.

The input check (``MedSynthLogic.input_checks.check_source``) runs in Slicer's process before the child starts,
so a T2 or a label map picked as the T1ce is refused, or with Force only warned about, before any compute. A FLAIR
is refused only when its oedema shows (7 of the 14 BraTS FLAIRs); one with little oedema passes as T1-weighted, with
a note at most (docs/evaluation/INPUT_CHECKS.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

from .i18n import tr as _

#: Node attribute of a synthetic volume, the mark that MedSynth made it: the ID of the input it was synthesized from
#: (a record; IDs are not remapped when a saved scene is added to another, so the link is ``SYNTHETIC_OF_ROLE``).
SYNTHETIC_OF = "MedSynth.SyntheticOf"
#: Node reference role from a synthetic volume to its input: MRML remaps it when a scene is imported.
SYNTHETIC_OF_ROLE = "MedSynthSyntheticOf"
#: The model list's last entry: the file named in the path field under it.
OTHER_MODEL = "Other model file"
#: ``check_source(volume, model_config, mask=None) -> list of findings`` (each with ``.code`` and ``.message``).
InputChecker = Callable[..., Sequence[Any]]


@dataclass(frozen=True)
class SynthesisRequest:
    """What the user chose for one synthesis; ``stages`` None runs every stage of the model."""

    model_path: Optional[Path] = None
    stages: Optional[int] = None
    device: str = "auto"
    flip_tta: bool = False
    force: bool = False
    uncertainty: bool = False

    @classmethod
    def from_settings(cls, settings: Any) -> "SynthesisRequest":
        """The request of the panel's settings (the parameter node or any object with its fields). A model file
        typed as a relative path is refused: the panel would read it from Slicer's folder, the child from its own."""
        from .training_jobs import full_path

        chosen = chosen_model_path(settings.model, settings.modelPath)
        return cls(model_path=None if chosen is None else full_path(chosen, _("the model file")),
                   stages=settings.stages or None,
                   device=settings.device, flip_tta=settings.flipTTA, force=settings.force,
                   uncertainty=settings.uncertainty)


def model_choices() -> List[str]:
    """The panel's model list: the shipped models' file names (the default first), then :data:`OTHER_MODEL`."""
    from MedSynthLogic.bundled_models import bundled_model_files

    return [p.name for p in bundled_model_files()] + [OTHER_MODEL]


def chosen_model_path(choice: str, other: "Optional[str | os.PathLike]") -> Optional[Path]:
    """The model file of a list entry: another shipped one by name, or ``other``; None means the default model
    (``bundled_model_path``, which ``$MEDSYNTH_MODEL`` overrides), also for an empty ``other`` (the parameter node
    wrapper's empty path reads ".")."""
    from MedSynthLogic.bundled_models import DEFAULT_NAME, models_dir

    if choice == OTHER_MODEL:
        return Path(other) if other and str(other) not in ("", ".") else None
    return models_dir() / choice if choice and choice != DEFAULT_NAME else None


def model_path(request: SynthesisRequest) -> Path:
    """The chosen model file, or the bundled one."""
    from MedSynthLogic.model_header import bundled_model_path

    return Path(request.model_path) if request.model_path else bundled_model_path()


def shape_seen(dimensions: Sequence[int], spacing: Sequence[float], header: Mapping[str, Any]) -> Tuple[int, ...]:
    """The (z, y, x) size the networks will see for a node of ``dimensions`` and ``spacing`` (x, y, z): its own, or,
    for a voxel size the synthesis resamples (``MedSynthLogic.voxel_size``), the resampled one. Only for a model
    (its ``header``) trained on isotropic voxels, whose size does not depend on the node's axis order; what the
    estimate counts and the rate book records."""
    from MedSynthLogic.voxel_size import size_seen

    trained = ((header.get("model_config") or {}).get("input") or {}).get("spacing_mm")
    if trained and len(set(trained)) == 1:
        return size_seen(dimensions, spacing, trained)[::-1]
    return tuple(int(n) for n in dimensions)[::-1]


def stages_to_run(request: SynthesisRequest, header: Mapping[str, Any]) -> int:
    """How many generator stages the synthesis runs: the chosen count (else all of the model's, its ``header``'s
    ``stages``) plus every stage of a prior model it refines, which always runs first. The time estimate counts them
    alike: a U-Net stage costs about what an FCN stage does (Testing/Benchmarks/results/inference_cpu_bf16.txt)."""
    prior = (header.get("model_config") or {}).get("prior") or {}
    return int(request.stages or header.get("stages") or 1) + int(prior.get("stages") or 0)


def passes_to_run(request: SynthesisRequest, stages: int) -> float:
    """Whole-chain passes a synthesis costs: 1, or 2 with flip averaging; the uncertainty map adds the mirrored
    pass, a plain one under flip averaging, and the chain without its last stage ((stages − 1) / stages of a pass),
    as ``MedSynthLogic.uncertainty`` runs them."""
    passes = 2.0 if request.flip_tta else 1.0
    if request.uncertainty:
        passes += 1.0 + (1.0 if request.flip_tta else 0.0) + (stages - 1) / max(1, stages)
    return passes


def synthesize_arguments(source: "str | os.PathLike", output: "str | os.PathLike", request: SynthesisRequest,
                         uncertainty: "Optional[str | os.PathLike]" = None) -> List[str]:
    """``medsynth synthesize`` arguments (an argument list, never a shell string) with JSON progress; with
    ``request.uncertainty`` the uncertainty map is written to ``uncertainty``."""
    args = ["synthesize", os.fspath(source), os.fspath(output), "--device", request.device, "--progress", "json"]
    if request.model_path:
        args += ["--model", os.fspath(request.model_path)]
    if request.stages:
        args += ["--stages", str(int(request.stages))]
    if request.flip_tta:
        args.append("--flip-tta")
    if request.force:
        args.append("--force")
    if request.uncertainty and uncertainty is not None:
        args += ["--uncertainty", os.fspath(uncertainty)]
    return args


def default_input_checker() -> Optional[InputChecker]:
    """``check_source`` of the core, or None in an installation that predates it (the child then checks alone)."""
    try:
        from MedSynthLogic.input_checks import check_source
    except ImportError:
        return None
    return check_source


def check_input(volume: Any, header: dict, checker: Optional[InputChecker]) -> List[Any]:
    """Findings of the input check for ``volume`` against the model whose header is given (empty: looks fine)."""
    if checker is None:
        return []
    return list(checker(volume, _model_config(header)))


def check_size(volume: Any, header: dict) -> None:
    """Refuse, before launching, a volume the networks cannot see whole (one slice, a thumbnail) or an empty one
    (every voxel 0): the child refused them only after the launch, the first naming the temporary file it had been
    given instead of the volume."""
    from MedSynthLogic.source_requirements import check_not_empty, check_receptive_field

    check_receptive_field(_model_config(header), volume)
    check_not_empty(volume)


def check_coverage(volume: Any, header: dict) -> List[str]:
    """Whether the field of view cuts the brain (``MedSynthLogic.brain_coverage``): a note that never blocks; empty in
    an installation that predates the check."""
    try:
        from MedSynthLogic.brain_coverage import coverage_notes
    except ImportError:
        return []
    return coverage_notes(volume, _model_config(header))


def check_transform(input_node: Any) -> List[str]:
    """A note when the input lies under a non-linear transform: the synthesis reads the image as stored (a linear
    transform is applied to its geometry, ``mrml.volume_from_node``), and the result is put under the same
    transform."""
    from MedSynthLogic import mrml

    if mrml.node_ijk_to_world(input_node) is not None:
        return []
    return [_("'{name}' lies under a non-linear transform, which the synthesis does not apply: it reads the image as "
              "stored and puts the result under the same transform. If that transform corrects the image's orientation "
              "or shape, harden it first (Data module: Harden transform).").format(name=input_node.GetName())]


def check_name(name: str, header: dict) -> List[str]:
    """What the input's node name says against the model's source (``MedSynthLogic.source_names``): notes that
    never block, e.g. a T1 named where the model expects the T1ce; empty in an installation that predates them."""
    try:
        from MedSynthLogic.source_names import name_notes
    except ImportError:
        return []
    return name_notes(name, _model_config(header))


def check_enhancement(volume: Any, header: dict, findings: Sequence[Any] = ()) -> List[str]:
    """Whether an input meant as the T1ce shows any sign of contrast agent (``MedSynthLogic.enhancement``): a
    note that never blocks; empty when it does, when ``findings`` already say it is no T1-weighted brain, and in an
    installation that predates the check."""
    try:
        from MedSynthLogic.enhancement import enhancement_notes
    except ImportError:
        return []
    return enhancement_notes(volume, _model_config(header), findings=findings)


def _model_config(header: dict) -> Any:
    """The ``ModelConfig`` a model header states (its defaults for what an older header lacks)."""
    from MedSynthLogic.config import ModelConfig, from_dict

    return from_dict(ModelConfig, header.get("model_config") or {})


def pair_names(header: dict) -> "tuple[str, str]":
    """The model's source and target names (T1ce, T2 for the bundled model): what the panel's messages and the
    result's node name say, so a T1→FLAIR model's result is not called a T2."""
    config = _model_config(header)
    return config.source_name, config.target_name


def synthetic_node_name(input_name: str, target_name: str = "T2") -> str:
    """The name of a new result node: "<input> synthetic <target>"."""
    return f"{input_name} synthetic {target_name}"


def notes_message(notes: Sequence[str], ask: bool = True, source_name: str = "T1ce", other: Sequence[str] = ()) -> str:
    """What the panel says (and, with ``ask``, asks before starting) when the input's name names another sequence
    than the model's, or its intensities show no contrast agent where the model expects a T1ce (``notes``), and about
    what is not the sequence (``other``: a cut field of view, a non-linear transform), under a heading of its own (a
    review found those filed under the sequence heading, with the advice to pick another volume)."""
    lines = [_("The input may not be the sequence the model expects:"), *[f"- {note}" for note in notes]] if notes else []
    if other:
        lines += [_("Before it is synthesized, note:"), *[f"- {note}" for note in other]]
    if ask and notes:
        lines.append(_("Synthesize it anyway? (Cancel, then pick the {source} volume, if it is the wrong one.)").format(
            source=source_name))
    elif ask:
        lines.append(_("Synthesize it anyway?"))
    return "\n".join(lines)


def findings_message(findings: Sequence[Any], force: bool, source_name: str = "T1ce") -> str:
    """What the panel says about failed input checks, before synthesis starts: with each refusal, what to do about
    it (``MedSynthLogic.input_checks.hints_for``, as the command line says it; a review found the panel said only
    "pick the T1ce" to a T1ce of the wrong voxel size)."""
    lines = [f"- {finding.message}" for finding in findings]
    if force:
        head = _("The input does not look like what the model was trained on (Force is on):")
        return "\n".join([head, *lines, _("Synthesize it anyway? The result is unreliable.")])
    head = _("The input does not look like what the model was trained on, so synthesis was not started:")
    tail = _("If it is not the {source} volume, pick that one; or tick 'Force (skip input checks)' to synthesize "
             "anyway.").format(source=source_name)
    return "\n".join([head, *lines, *_hints(findings), tail])


def _hints(findings: Sequence[Any]) -> List[str]:
    """What to do about ``findings`` (the panel's wording); none in an installation that predates the hints."""
    try:
        from MedSynthLogic.input_checks import hints_for
    except ImportError:
        return []
    return hints_for((getattr(finding, "code", "") for finding in findings), panel=True)


def check_output_node(input_node: Any, output_node: Any) -> None:
    """Refuse an output volume whose image the synthesis would destroy: the input itself, or any image that
    MedSynth did not make: one loaded from a file (an acquired T2, say: File › Save would then write over its
    file) or one made in this session (a registration's result, a script's). An empty volume is fine."""
    if output_node is None:
        return
    if input_node is not None and output_node.GetID() == input_node.GetID():
        raise ValueError(_("The output volume is the input volume: synthesizing would replace the input image. "
                           "Pick another output volume, or none (a new volume is made)."))
    if output_node.GetImageData() is None or output_node.GetAttribute(SYNTHETIC_OF) is not None:
        return
    storage = output_node.GetStorageNode()
    if storage is not None and storage.GetFileName():
        raise ValueError(_("The output volume '{name}' holds an image loaded from {file}; synthesizing into it would "
                           "replace that image. Pick a synthetic volume, or none (a new volume is made).").format(
                               name=output_node.GetName(), file=storage.GetFileName()))
    raise ValueError(_("The output volume '{name}' holds an image that MedSynth did not make; synthesizing into it "
                       "would replace that image. Pick a synthetic volume, or none (a new volume is made).").format(
                           name=output_node.GetName()))


def replacement_question(input_node: Any, output_node: Any) -> str:
    """The question to ask before a synthesis replaces an earlier one of the same input (the panel makes each result
    its output, so pressing Synthesize again, with other stages or flip averaging, replaced the first image and its
    uncertainty map without a word); empty when nothing would be replaced (``store_result`` makes a new node)."""
    if output_node is None or input_node is None or output_node.GetImageData() is None:
        return ""
    if output_node.GetAttribute(SYNTHETIC_OF) is None or output_node.GetNodeReferenceID(SYNTHETIC_OF_ROLE) != input_node.GetID():
        return ""
    question = _("The output volume '{name}' holds an earlier synthesis of '{input}': synthesizing again replaces it "
                 "and its uncertainty map.").format(name=output_node.GetName(), input=input_node.GetName())
    storage = output_node.GetStorageNode()
    if storage is not None and storage.GetFileName():
        question += " " + _("It was saved as {file}: saving the scene would write the new image there.").format(
            file=storage.GetFileName())
    return question + "\n\n" + _("OK replaces it. To keep both, press Cancel and choose 'Create new volume' as the "
                                   "output volume.")


def store_result(scene: Any, input_node: Any, output_node: Any, volume: Any, target_name: str = "T2") -> Any:
    """Put the synthetic volume on the input's exact grid, in ``output_node`` or a new "<input> synthetic <target>".

    A node deleted while the synthesis ran is replaced by a new one (the result is not lost). A node that holds the
    synthesis of another input is kept as it is and a new node is made: the panel keeps the
    last result as its output, and the previous patient's synthetic image must not be replaced by the next one's.
    A reused node loses the uncertainty maps loaded for it, since they no longer match."""
    from MedSynthLogic import mrml

    name = synthetic_node_name(input_node.GetName(), target_name)
    if output_node is not None and output_node.GetScene() is not scene:  # deleted while the synthesis ran
        output_node = None
    if output_node is not None and output_node.GetAttribute(SYNTHETIC_OF) is not None \
            and output_node.GetNodeReferenceID(SYNTHETIC_OF_ROLE) != input_node.GetID():
        output_node = None  # another input's synthesis (or one whose input is gone, or from a scene before the link)
    if output_node is None:
        output_node = mrml.node_from_volume(scene, volume, name, reference=input_node)
    else:
        mrml.remove_uncertainty_overlays(scene, output_node)
        mrml.update_node_from_volume(output_node, volume, reference=input_node)
        output_node.CreateDefaultDisplayNodes()
    output_node.SetAttribute(SYNTHETIC_OF, input_node.GetID())
    output_node.SetNodeReferenceID(SYNTHETIC_OF_ROLE, input_node.GetID())
    mrml.set_window_level(output_node)
    mrml.show_side_by_side(scene, input_node, output_node)
    return output_node


def uncertainty_title(request: SynthesisRequest, header: Mapping[str, Any]) -> str:
    """The legend's title: what the child's map holds for this model (its ``header``, empty when unreadable) and these
    stages (a learned error map is used only with all the model's stages, as ``MedSynthLogic.uncertainty`` does)."""
    whole_chain = not request.stages or int(request.stages) == int(header.get("stages", 0))
    if header:
        unit = _("in the synthetic {target}'s grey values").format(target=pair_names(header)[1])
    else:
        unit = _("in the synthetic image's grey values")
    if header.get("error_map") and whole_chain:
        return _("Expected |error| ({unit})").format(unit=unit)
    return _("Uncertainty: disagreement ({unit})").format(unit=unit)


def show_uncertainty(scene: Any, path: "str | os.PathLike", synthetic_node: Any, title: Optional[str] = None) -> Any:
    """Load the uncertainty map the child wrote and lay it over the synthetic image in colour, with a legend."""
    from MedSynthLogic import mrml

    options = {"title": title} if title else {}
    return mrml.load_uncertainty_overlay(scene, path, synthetic_node, **options)[0]


def synthesize_in_process(scene: Any, input_node: Any, request: SynthesisRequest, output_node: Any = None) -> Any:
    """Synthesize in this process (blocking): for scripts and the self-test; the panel runs a child process."""
    from MedSynthLogic import inference, mrml
    from MedSynthLogic.input_checks import check_source, refuse_or_warn
    from MedSynthLogic.model_file import load_model

    if input_node is None:
        raise ValueError(_("No input volume."))
    check_output_node(input_node, output_node)
    model = load_model(model_path(request))
    volume = mrml.volume_from_node(input_node)
    refuse_or_warn(check_source(volume, model.config), request.force, source=input_node.GetName())  # as the panel does
    result = inference.synthesize_volume(model, volume, stages=request.stages, device=request.device,
                                         flip_tta=request.flip_tta)
    return store_result(scene, input_node, output_node, result, model.config.target_name)
