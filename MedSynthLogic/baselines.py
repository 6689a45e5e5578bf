"""The trivial baseline: the best 1-D intensity lookup T1ce → T2 fitted on training cases.

A per-voxel lookup that ignores context is what any learned model must beat; the conditional mean of the
normalised target in each source-intensity bin is the lookup with the least squared error on the fitting data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np

from .atomic import atomic_write_text
from .config import NormalisationConfig
from .errors import DataError, UsageError


@dataclass
class IntensityLookup:
    """Bin edges over normalised source units and the mean normalised target in each bin; ``names``: the pair
    (source, target) it maps, so an evaluation of it reads that pair's files."""

    edges: np.ndarray
    values: np.ndarray
    normalisation: NormalisationConfig
    names: Tuple[str, str] = ("T1ce", "T2")
    fitted_on: Optional[Tuple[str, ...]] = None  # the case ids it was fitted on (None: a file from before they were kept)

    def apply(self, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Normalise ``source`` as in training, look each voxel up, return target units (as the models do)."""
        from .normalisation import denormalise_output, normalise_source

        norm, _ = normalise_source(source, mask, self.normalisation)
        idx = np.clip(np.searchsorted(self.edges, norm, side="right") - 1, 0, len(self.values) - 1)
        out = self.values[idx].astype(np.float32) * mask
        return denormalise_output(out, self.normalisation)

    def save(self, path: str | Path) -> None:
        from .config import to_dict

        atomic_write_text(path, json.dumps({"kind": "intensity-lookup", "edges": self.edges.tolist(),
                                            "values": self.values.tolist(), "normalisation": to_dict(self.normalisation),
                                            "source_name": self.names[0], "target_name": self.names[1],
                                            **({"fitted_on": list(self.fitted_on)} if self.fitted_on is not None else {})}))

    @classmethod
    def load(cls, path: str | Path) -> "IntensityLookup":
        from .config import from_dict

        hint = "Pass the JSON file that `medsynth fit-lookup` wrote."
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise DataError(f"Cannot read the lookup file {path}: {exc.strerror or exc}.", hint) from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path} is not an intensity lookup file (not JSON).", hint) from exc
        if not isinstance(data, dict) or data.get("kind") != "intensity-lookup":
            raise DataError(f"{path} is not an intensity lookup file.", hint)
        try:
            return cls(np.asarray(data["edges"], dtype=np.float64), np.asarray(data["values"], dtype=np.float64),
                       from_dict(NormalisationConfig, data["normalisation"]),
                       (str(data.get("source_name", "T1ce")), str(data.get("target_name", "T2"))),
                       tuple(str(c) for c in data["fitted_on"]) if isinstance(data.get("fitted_on"), list) else None)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path} is an incomplete intensity lookup file ({exc}).", hint) from exc


def fit_intensity_lookup(
    pairs: Iterable[Tuple[np.ndarray, ...]], normalisation: NormalisationConfig, bins: int = 256,
    names: Tuple[str, str] = ("T1ce", "T2"), fitted_on: Optional[Sequence[str]] = None,
) -> IntensityLookup:
    """Fit the lookup on (source, target, mask) arrays, all normalised as the models normalise them; ``names``: the
    pair's (source, target), and ``fitted_on``: the case ids of ``pairs``, recorded in the file so that
    ``evaluate`` can say when it scores the lookup's own cases (None: not known).

    A fourth array, where given, is where the target has data (``case_reading.CaseOnSourceGrid.scored``): the source
    is normalised over the whole mask, as the lookup is applied, but the target and the fit read only those voxels
    (a target of a smaller field of view was fitted as black beyond it)."""
    from .normalisation import normalise_source, normalise_target

    if bins < 2:
        raise UsageError(f"A lookup needs at least 2 intensity bins, not {bins}.", "Pass --bins 2 or more (default 256).")
    edges = np.linspace(normalisation.source.clip_min, normalisation.source.clip_max, bins + 1)
    sums = np.zeros(bins)
    counts = np.zeros(bins)
    for source, target, mask, *data in pairs:
        region = mask & data[0] if data else mask
        s, _ = normalise_source(source, mask, normalisation)
        t, _ = normalise_target(target, region, normalisation)
        idx = np.clip(np.searchsorted(edges, s[region], side="right") - 1, 0, bins - 1)
        sums += np.bincount(idx, weights=t[region], minlength=bins)
        counts += np.bincount(idx, minlength=bins)
    if counts.sum() == 0:
        raise DataError("No brain voxels to fit the intensity lookup on.")
    values = np.divide(sums, counts, out=np.zeros(bins), where=counts > 0)
    filled = counts > 0
    values = np.interp(np.arange(bins), np.flatnonzero(filled), values[filled])
    return IntensityLookup(edges, values, normalisation, (str(names[0]), str(names[1])),
                           None if fitted_on is None else tuple(str(c) for c in fitted_on))
