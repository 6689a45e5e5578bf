"""A model file's header told in a few lines: what ``medsynth info`` prints (``--json`` prints the header itself).

A user choosing a model wants the mapping, the architecture, the stages, the training data, the validation figures
and the date, not 200 lines of JSON. Only what the header states is shown; a missing part is said to be missing.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

__all__ = ["summarize_header", "held_out_figures", "case_count", "listed_training_cases", "prior_training_cases",
           "earlier_training_cases", "all_training_cases", "unrecorded_training_cases", "mask_file_note"]


#: The training-record key of a blended model file (``training.blend_model_file`` writes it; the summary reads it).
BLEND_KEY = "blend_with_prior"
#: The training-record key of a weight-averaged model file (``training.average_model_files``).
AVERAGE_KEY = "weight_average_of"

def summarize_header(header: Mapping[str, Any], name: str) -> str:
    """Plain-text summary of a model header (from :func:`model_file.read_header`); ``name`` labels the file."""
    config: Mapping[str, Any] = header.get("model_config") or {}
    training: Mapping[str, Any] = header.get("training") or {}
    parts: List[Tuple[str, Callable[[], str]]] = [
        ("mapping", lambda: _mapping(config)),
        ("architecture", lambda: _architecture(config)),
        ("stages", lambda: _stages(header, config)),
        ("training data", lambda: _data(training.get("data"), (config.get("generator") or {}).get("kind"))),
        ("training", lambda: _schedule(training, config.get("loss") or {}, header.get("stages", config.get("stages")))),
        ("validation", lambda: _metrics(header.get("metrics") or {})),
        ("uncertainty", lambda: _uncertainty(header.get("error_map"), _has_stage_part(header, config))),
        ("created", lambda: _created(header)),
    ]
    rows = [(label, _safely(describe)) for label, describe in parts]
    width = max(len(label) for label, _ in rows)
    lines = [f"MedSynth model {name}"]
    lines += [f"  {label:<{width}}  {text}" for label, text in rows]
    lines.append("The full header: medsynth info --json")
    return "\n".join(lines)


def _safely(describe: Callable[[], str]) -> str:
    """Headers differ across versions and tools; a part in an unexpected shape is named, never a crash."""
    try:
        return describe()
    except (AttributeError, KeyError, TypeError, ValueError):
        return "in a form this version does not summarize (see --json)"


def _has_stage_part(header: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    """Whether a synthesis has a stage before its last (an earlier stage, or a prior model) to disagree with."""
    return int(header.get("stages", config.get("stages", 1)) or 1) > 1 or bool(config.get("prior"))


def _uncertainty(error_map: Any, stage_part: bool = True) -> str:
    """What ``--uncertainty`` gives with this file: its learned error map, or the disagreement of passes."""
    if not error_map:
        stages = " and of the last stage against the synthesis before it" if stage_part else ""
        return f"disagreement of flipped passes{stages} (no learned error map)"
    fitted_on = error_map.get("fitted_on") or {}
    cases = fitted_on.get("cases") or []
    fitted = f" on {case_count(cases)} case{'' if case_count(cases) == 1 else 's'}" if cases else ""
    validation = fitted_on.get("validation_cases") or []
    fitted += f" ({len(validation)} of them its validation cases)" if validation else ""
    shifted = sorted({name for drawn in (fitted_on.get("variants") or {}).values() for name in drawn})
    fitted += f" and their shifted sources ({', '.join(shifted)})" if shifted else ""
    whole = error_map.get("image_features") or []
    fitted += f"; it also reads the whole source ({', '.join(whole)})" if whole else ""
    return f"learned error map (expected |error| per voxel), fitted{fitted}"


def _mapping(config: Mapping[str, Any]) -> str:
    source, target = config.get("source_name", "?"), config.get("target_name", "?")
    norm: Mapping[str, Any] = config.get("normalisation") or {}
    unit = _output_unit(norm.get("target") or {}, float(norm.get("output_scale", 1000)))
    return f"{source} -> {target} ({_source_units(source, norm.get('source') or {})}; {unit})"


def _output_unit(cfg: Mapping[str, Any], scale: float) -> str:
    """What a synthetic voxel's value means, read from the target's own normalisation: the unit a user compares
    with their scanner's T2 (or HU) differs between a percentile and a median target."""
    mode = cfg.get("mode")
    if mode == "window":
        return "output in the window's unit (Hounsfield units for CT)"
    if mode == "percentile":
        return f"output x{scale:g}: {scale:g} = the target's {cfg.get('percentile', 99.5):g}th percentile in the brain"
    if mode == "median":
        return f"output x{scale:g}: {float(cfg.get('median_value', 0.5)) * scale:g} = the target's median in the brain"
    return "output unit not stated"


def _source_units(source: str, cfg: Mapping[str, Any]) -> str:
    """How the source reaches the network: two models of one architecture differ in this alone (e.g. a median-
    normalised fine-tuning), and it decides which inputs shift the synthesis."""
    mode = cfg.get("mode")
    if mode == "median":
        return f"{source} / its median in the brain x {cfg.get('median_value', 0.5):g}"
    if mode == "percentile":
        return f"{source} / its {cfg.get('percentile', 99.5):g}th percentile in the brain"
    if mode == "window":
        return f"{source} window {cfg.get('window_min', -1000):g} to {cfg.get('window_max', 2000):g}"
    return f"{source} normalisation not stated"


def _architecture(config: Mapping[str, Any]) -> str:
    gen: Mapping[str, Any] = config.get("generator") or {}
    if not gen:
        return "not stated"
    kind = gen.get("kind", "nie2018")
    if kind == "unet3d":
        channels = gen.get("unet_channels") or []
        layers = (f"residual 3D U-Net, {len(channels)} levels (channels {_joined(channels)}), "
                  f"{gen.get('norm', 'instance')} norm")
        if gen.get("unet_upsample", "transpose") != "transpose":
            layers += f", {gen['unet_upsample']} upsampling"
    else:
        layers = (f"3D FCN, {len(gen.get('filters') or [])} conv layers (filters {_joined(gen.get('filters'))}, "
                  f"kernels {_joined(gen.get('kernels'))})")
    added = "its context" if gen.get("residual_from") == "context" else "its source"
    residual = f"long-term residual (adds {added})" if gen.get("residual", True) else "no long-term residual"
    patch = config.get("source_patch")
    sample = "training crops" if kind == "unet3d" else "source patches"
    return f"{layers}, {residual}" + (f"; {patch}^3 {sample}" if patch else "")


def _stages(header: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    text = f"{header.get('stages', config.get('stages', '?'))} auto-context stage(s)"
    prior = config.get("prior")
    if prior:
        text += (f" on top of a frozen prior model ({_architecture(prior)}; {prior.get('stages', '?')} stage(s)), "
                 "whose synthesis stage 1 refines")
    training = header.get("training") or {}
    blend = training.get(BLEND_KEY)
    if blend:
        text += f"; its correction scaled by {blend.get('weight')} (0.5: the mean of the prior's synthesis and the refiner's)"
    averaged = training.get(AVERAGE_KEY)
    if averaged:
        text += f"; weights averaged over {len(averaged.get('from') or [])} model files"
    return text


def _data(data: Any, kind: Any = None) -> str:
    """The training data in a line; a U-Net trains on crops of the stored volumes, so its patch count says nothing."""
    if not data:
        return "not stated"
    if isinstance(data, str):
        return data
    parts = [str(data.get("dataset") or data.get("data_dir") or "paired cases")]
    for key, label in (("train_cases", "training case"), ("val_cases", "validation case")):
        if data.get(key):
            count = case_count(data[key])
            parts.append(f"{count} {label}{'' if count == 1 else 's'}")
    if data.get("patches_per_case") and kind != "unet3d":
        count = data["patches_per_case"]
        parts.append(f"{count} patch{'' if count == 1 else 'es'} per case")
    if data.get("train_patches") and kind != "unet3d":
        parts.append(f"{data['train_patches']} training patches")
    if data.get("source") and data.get("target"):
        parts.append(f"files {data['source']} -> {data['target']}")
    return "; ".join(parts)


def _schedule(training: Mapping[str, Any], loss: Mapping[str, Any], stages_held: Any = None) -> str:
    parts: List[str] = []
    trained = training.get("stages_trained")
    for entry in trained if isinstance(trained, list) else []:
        if isinstance(entry, Mapping):
            stages = entry.get("stages") or []
            amount = entry.get("iterations_trained") or entry.get("iterations_per_stage")
            if stages and amount:
                parts.append(f"stage(s) {_joined(stages)}: {amount} iterations")
    if not parts and training.get("iterations_per_stage"):
        stages = f" x {trained} stage{'' if trained == 1 else 's'}" if isinstance(trained, int) else ""
        parts.append(f"{training['iterations_per_stage']} iterations per stage{stages}")
    taken = int(training.get("stages_from_file") or 0)
    if taken:  # --init-model with --start-stage: those stages were trained by the run that wrote that file
        which = "stage 1" if taken == 1 else f"stages 1–{taken}"
        source = training.get("stages_from_path") or training.get("resumed_from") or "another model file"
        parts.append(f"{which} taken from {source}")
    schedule = training.get("train_config") or {}
    if training.get("checkpoint_stage_done") is False:  # `medsynth export` of a stage still in training
        of = f" of {schedule['iterations']}" if isinstance(schedule, Mapping) and schedule.get("iterations") else ""
        in_training = int(training.get("checkpoint_stage", 0)) + 1
        at = f"stage {in_training} at iteration {training.get('checkpoint_iteration')}{of}"
        if isinstance(stages_held, int) and stages_held < in_training:  # export without --stages: the finished ones
            parts.append(f"exported while {at}, which this file leaves out")
        else:
            parts.append(f"exported mid-stage: {at}")
    adversarial = schedule.get("adversarial")
    if adversarial is not None:
        ran, warm = int(schedule.get("iterations") or 0), int(schedule.get("warmup_iterations") or 0)
        never = bool(adversarial) and 0 < ran <= warm  # the term waits for a warm-up the run never finished
        terms = _loss_terms(loss, bool(adversarial) and not never)
        parts.append(terms + (f" (its adversarial term waits for {warm} warm-up iterations; {ran} ran)" if never else ""))
    if training.get("wall_time_s") is not None:
        parts.append(f"{float(training['wall_time_s']) / 60:.0f} min")
    if training.get("device"):
        parts.append(str(training["device"]))
    return "; ".join(parts) if parts else "not stated"


def _loss_terms(loss: Mapping[str, Any], adversarial: bool) -> str:
    """The generator's loss as trained: only the terms with a non-zero weight (a header without a loss section
    was written with the defaults, which weigh all three)."""
    pixel = str(loss.get("pixel", "l2")).upper()
    terms = [name for name, key in ((pixel, "lambda_l2"), ("GDL", "lambda_gdl")) if float(loss.get(key, 1.0)) > 0]
    pixel_terms = " + ".join(terms) or "no pixel loss"
    if adversarial and float(loss.get("lambda_adv", 1.0)) > 0:
        return f"adversarial (GAN) + {pixel_terms}"
    return f"{pixel_terms} only, no adversarial term"


def held_out_figures(metrics: Mapping[str, Any]) -> Optional[Tuple[Any, str]]:
    """(number of cases, "PSNR m ± s dB, SSIM …, MAE …") of the held-out evaluation in a header's ``metrics``, or
    None without one: the CLI summary and Slicer's model description round the card's numbers the same way."""
    evaluation: Mapping[str, Any] = metrics.get("evaluation") or {}
    summary: Dict[str, Any] = dict(evaluation.get("summary") or {})
    if "psnr" not in summary:
        return None
    cases = len(evaluation.get("cases") or []) or summary["psnr"].get("n", "?")
    figures = [f"PSNR {_mean_std(summary['psnr'], 2)} dB"]
    figures += [f"{label} {_mean_std(summary[key], 3)}" for key, label in (("ssim", "SSIM"), ("mae", "MAE"))
                if key in summary]
    return cases, ", ".join(figures)


def _metrics(metrics: Mapping[str, Any]) -> str:
    texts: List[str] = []
    held_out = held_out_figures(metrics)
    if held_out is not None:
        texts.append(f"held-out, {held_out[0]} cases, inside the brain: {held_out[1]}")
    if metrics.get("psnr") is not None:
        during = f"PSNR {float(metrics['psnr']):.2f} dB"
        if metrics.get("ssim") is not None:
            during += f", SSIM {float(metrics['ssim']):.3f}"
        texts.append(f"during training (last stage): {during}")
    return "; ".join(texts) if texts else "none in the model file"


def _created(header: Mapping[str, Any]) -> str:
    created = str(header.get("created") or "not stated")
    version = header.get("medsynth_version")
    modified = header.get("modified")
    return (created.replace("T", " ")[:19] + (f" (medsynth {version})" if version else "")
            + (f"; header or error map changed {str(modified).replace('T', ' ')[:19]}" if modified else ""))


def _mean_std(stat: Mapping[str, Any], digits: int) -> str:
    text = f"{float(stat['mean']):.{digits}f}"
    return text + (f" ± {float(stat['std']):.{digits}f}" if stat.get("std") is not None else "")


def case_count(value: Any) -> Any:
    """A case list's length; newer headers store the count itself."""
    return len(value) if isinstance(value, (list, tuple)) else value


def _joined(values: Any) -> str:
    return "-".join(str(v) for v in values) if values else "?"


def prior_training_cases(header: Mapping[str, Any]) -> List[str]:
    """The cases a refiner's prior model was trained on, as the refiner's file records them (files since session 42;
    an empty list where it does not): a synthesis built on the prior has seen them too."""
    prior = (header.get("training") or {}).get("prior_model") or {}
    cases = prior.get("train_cases") if isinstance(prior, Mapping) else None
    return [str(case) for case in cases] if isinstance(cases, list) else []


def earlier_training_cases(header: Mapping[str, Any]) -> List[str]:
    """The cases the weights a model was built on were trained on: its prior model's (:func:`prior_training_cases`)
    and those of the files it took weights from (``inherited_train_cases``, files since session 43: an
    ``--init-model`` file, a donor's stages, the other files of a weight average), sorted."""
    inherited = (header.get("training") or {}).get("inherited_train_cases")
    return sorted(set(prior_training_cases(header)) | {str(c) for c in (inherited if isinstance(inherited, list) else [])})


def all_training_cases(header: Mapping[str, Any]) -> Optional[List[str]]:
    """Every case a model's synthesis has learned from, as far as its record names them: its own
    (:func:`listed_training_cases`) and the earlier ones (:func:`earlier_training_cases`); None when it does not list
    its own. :func:`unrecorded_training_cases` says whose cases it does not name."""
    own = listed_training_cases(header)
    return None if own is None else sorted(set(own) | set(earlier_training_cases(header)))


def unrecorded_training_cases(header: Mapping[str, Any]) -> List[str]:
    """Whose training cases a model learned from without its record naming them: its prior model's (a refiner file
    from before session 42, or an export of its checkpoint from before session 43) and the files it took weights
    from whose own records did not name theirs (``inherited_cases_unknown``)."""
    training = header.get("training") or {}
    config = header.get("model_config") or {}
    prior = training.get("prior_model") if isinstance(training, Mapping) else None
    out = []
    if isinstance(config, Mapping) and config.get("prior") is not None and not (
            isinstance(prior, Mapping) and isinstance(prior.get("train_cases"), list)):
        out.append("its prior model")
    unknown = training.get("inherited_cases_unknown") if isinstance(training, Mapping) else None
    out += [str(name) for name in (unknown if isinstance(unknown, list) else [])]
    return out


def mask_file_note(header: Mapping[str, Any]) -> Optional[str]:
    """What to say to a synthesis without a mask by a model trained inside mask files (files since session 43 count
    them), or None: its mask is then the source above the threshold, which such a model never saw (an MR→CT model
    trained on head masks gave CTs up to 2307 HU apart)."""
    data = (header.get("training") or {}).get("data") or {}
    masked = data.get("mask_files") if isinstance(data, Mapping) else None
    if not isinstance(masked, int) or masked < 1:
        return None
    return (f"the model was trained inside mask files ({masked} of its {case_count(data.get('train_cases'))} training "
            "cases had one) and this synthesis has none, so its mask is the source above the model's threshold, "
            "which the model was not trained on: give the case's mask (--mask, or <case>_mask beside a folder's source)")


def listed_training_cases(header: Mapping[str, Any]) -> Optional[List[str]]:
    """The ids of the cases a model was trained on, when its header lists them (``train_case_ids`` from
    ``medsynth train`` since session 38, or the shipped files' ``train_cases`` list); None when it gives a count only."""
    data = (header.get("training") or {}).get("data") or {}
    if not isinstance(data, Mapping):
        return None
    for key in ("train_case_ids", "train_cases"):
        if isinstance(data.get(key), list) and data[key]:
            return [str(case) for case in data[key]]
    return None
