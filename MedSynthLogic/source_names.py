"""What a source's name says about its sequence: one of two hints for a T1 picked instead of the T1ce.

The sequence rule of :mod:`.input_checks` cannot tell a T1 from a T1ce (their histograms overlap on the 14 BraTS
cases), and a non-contrast T1 synthesized as if it were the T1ce costs the default model 1.5 dB and the enhancing
rim (``docs/evaluation/input_shift``). The other hint is the intensities' lack of contrast agent
(:mod:`.enhancement`), which noise can hide. Names often say which is which: BraTS files end in ``_t1`` /
``_t1ce`` (2023: ``-t1n`` / ``-t1c``), DICOM series descriptions (Slicer's node names) read "AX T1 POST GD",
"T1 +C" or "Sag T1 pre". A name can be wrong or silent, so what it says is a note for the user, never a refusal;
a name that names no sequence ("MRHead", "image") gives no note.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, List, Optional, Tuple

from .errors import UsageError
from .dataset_cases import image_stem

if TYPE_CHECKING:
    from .config import ModelConfig

__all__ = ["NamedSequence", "named_sequence", "expected_sequence", "name_notes", "display_name", "check_pair_suffixes",
           "file_suffixes",
           "T1CE", "T1", "T2", "FLAIR"]

T1CE, T1, T2, FLAIR = "T1ce", "T1", "T2", "FLAIR"
#: Words (whole tokens) that name a T1-weighted acquisition without a "t1" in them.
T1_WORDS = frozenset({"mprage", "mp2rage", "spgr", "fspgr", "bravo"})
#: Token endings after "t1" and whole tokens that say the contrast agent was given.
CONTRAST_SUFFIXES = frozenset({"ce", "c", "gd", "cgd", "post", "km"})
CONTRAST_WORDS = frozenset({"ce", "gd", "gad", "gado", "gadolinium", "post", "postcontrast", "postgad", "contrast",
                            "enhanced", "km"})
#: Token endings after "t1"/"t2" and whole tokens that name a quantitative map (T1 in ms, T2*, T1ρ), not a weighted
#: image: an MP2RAGE "T1map" is bright in CSF, and a 3T→7T model of T1 maps refused its own inputs as T2-weighted.
QUANTITATIVE_SUFFIXES = frozenset({"map", "maps", "mapping", "rho", "star", "relax", "relaxometry", "value", "values"})
QUANTITATIVE_WORDS = frozenset({"map", "maps", "mapping", "qt1", "qt2", "qmri", "quantitative", "relaxometry", "rho",
                                "star", "r2star"})
#: Token endings after "t1" and whole tokens that say it was not.
NATIVE_SUFFIXES = frozenset({"n", "pre", "native", "nc"})
NATIVE_WORDS = frozenset({"pre", "precontrast", "native", "nativ", "nc", "noncontrast", "nocontrast", "plain",
                          "without"})


@dataclass(frozen=True)
class NamedSequence:
    """The sequence a name names (``T1ce``, ``T1``, ``T2``, ``FLAIR``); ``explicit``: for a T1, whether the name
    says "without contrast" (pre, native, t1n) rather than just not saying "with"."""

    kind: str
    explicit: bool = True


def display_name(path_or_name: str) -> str:
    """An image file's name without its folder and ending (``/x/Brats18_1_t1.nii.gz`` → ``Brats18_1_t1``); any
    other name whole, since a series description may hold a slash ("T1 SE AX +C/FS")."""
    text = str(path_or_name)
    base = PurePath(text).name
    stem = image_stem(base)
    return stem if stem != base else text


def _tokens(name: str) -> List[str]:
    text = name.lower().replace("c+", " post ").replace("+c", " post ")
    return [t for t in re.split(r"[^a-z0-9]+", text) if t]


def _family(token: str) -> Optional[str]:
    """The sequence family of one token: "t1…" (not "t10"), "t2…", a FLAIR word, a T1 acquisition word."""
    if "flair" in token and not token.startswith("t1"):
        return FLAIR
    if token == "t2f":
        return FLAIR
    for prefix, kind in (("t1", T1), ("t2", T2)):
        if token.startswith(prefix) and (len(token) == 2 or token[2].isalpha()):
            return kind
    return T1 if token in T1_WORDS else None


def named_sequence(name: str) -> Optional[NamedSequence]:
    """The sequence ``name`` names, or None when it names none or several (``"t1_t2"``, "pre and post") or a
    quantitative map (``"T1map"``, ``"MP2RAGE T1 map"``, ``"T2star"``), which is no weighted image."""
    tokens = _tokens(name)
    if any(t in QUANTITATIVE_WORDS or (t[:2] in ("t1", "t2") and t[2:] in QUANTITATIVE_SUFFIXES) for t in tokens):
        return None
    families = {f for f in map(_family, tokens) if f is not None}
    if FLAIR in families and len(families) == 2:  # "T1 FLAIR" is T1-weighted, "T2 FLAIR" is a FLAIR
        families = {T1} if T1 in families else ({FLAIR} if T2 in families else families)
    if len(families) != 1:
        return None
    (family,) = families
    if family != T1:
        return NamedSequence(family)
    suffixes = {t[2:] for t in tokens if t.startswith("t1") and _family(t) == T1}
    words = set(tokens)
    native = bool(suffixes & NATIVE_SUFFIXES or words & NATIVE_WORDS)
    contrast = bool(suffixes & CONTRAST_SUFFIXES or words & (CONTRAST_WORDS - {"contrast"}))
    if contrast and native:
        return None
    if contrast or ("contrast" in words and not native):  # "without contrast" is native
        return NamedSequence(T1CE)
    return NamedSequence(T1, explicit=native)


def expected_sequence(model_config: "ModelConfig") -> Optional[NamedSequence]:
    """What the model's source is, when its ``input.sequence`` and ``source_name`` name the same sequence."""
    by_input = named_sequence(model_config.input.sequence)
    by_source = named_sequence(model_config.source_name)
    if by_input is None or by_source is None or by_input.kind != by_source.kind:
        return None
    return by_input


def name_notes(name: Optional[str], model_config: "ModelConfig") -> List[str]:
    """Sentences for the user when ``name`` (a file path or a Slicer node name) names another sequence than the
    model's source; empty when it names the same, none, or the model's source is not an MR sequence named here."""
    if not name:
        return []
    shown = display_name(name)
    named, expected = named_sequence(shown), expected_sequence(model_config)
    if named is None or expected is None or named.kind == expected.kind:
        return []
    wanted = model_config.input.sequence
    if expected.kind == T1CE and named.kind == T1:
        said = "says a T1 without contrast" if named.explicit else "names a T1 without saying contrast-enhanced"
        return [f"its name '{shown}' {said}, and the model expects a {wanted}: the sequence check cannot tell a "
                "T1 from a T1ce, and a non-contrast T1 gives a synthesis without the enhancing rim and measurably "
                "worse (MODEL_CARD.md, Known failure modes)"]
    return [f"its name '{shown}' names a {named.kind}, and the model expects a {wanted}"]


def check_pair_suffixes(source_suffix: str, target_suffix: str, model_config: "ModelConfig") -> None:
    """Refuse file suffixes that name other sequences than the config's ``source_name`` / ``target_name``.

    The suffixes pick the files, the config names the model: a T1→FLAIR pair read with the default T1ce→T2
    config would make a model whose header, input checks and panel all say T1ce→T2. Names this module does not
    know (``seg``, ``ct``, ``t1c`` is known) are not judged.
    """
    for role, suffix, name in (("source", source_suffix, model_config.source_name),
                               ("target", target_suffix, model_config.target_name)):
        by_file, by_config = named_sequence(suffix), named_sequence(name)
        if by_file is not None and by_config is not None and by_file.kind != by_config.kind:
            raise UsageError(
                f"The {role} files (suffix '{suffix}') hold a {by_file.kind}, but the model config names its {role} "
                f"{name}.",
                f'Use a config whose "source_name" and "target_name" name this pair (e.g. "{by_file.kind}"): '
                "--config for prepare and fit-lookup; evaluate reads it from the --model or --lookup file. Or pass "
                f"the --{role}-suffix of a {name}.",
            )


def file_suffixes(model_config: "ModelConfig", source_suffix: Optional[str] = None,
                  target_suffix: Optional[str] = None) -> Tuple[str, str]:
    """The BraTS-style suffixes of a pair's files: those given, else the config's names in lower case (``t1ce``,
    ``t2`` for the bundled model, ``t1``, ``flair`` for a T1→FLAIR config), checked by :func:`check_pair_suffixes`."""
    source = source_suffix or model_config.source_name.lower()
    target = target_suffix or model_config.target_name.lower()
    check_pair_suffixes(source, target, model_config)
    return source, target
