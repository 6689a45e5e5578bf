"""A learned error map: the synthesis's expected absolute error per voxel, predicted from what inference already has.

The disagreement map of :mod:`.uncertainty` (flip and stage parts) rises where the error rises but explains little
of it (Pearson r 0.22 on the validation cases) and flags the worst tenth of the brain no better than "near the
brain's edge" (docs/evaluation/UNCERTAINTY.md): the model's largest errors are systematic (oedema too dark in every
pass), so its passes agree there. A small regression fitted to the model's own absolute error on its training cases
sees those patterns in the source and the synthesis. Per voxel of the brain it reads :data:`FEATURES`:

- the synthesis and the source (the source over its brain median), and their local standard deviations (5³);
- the two disagreement parts (``log1p(50·part)``: most voxels are near 0, a few far out);
- the distance to the brain mask's edge in voxels, capped at :data:`EDGE_CAP`;
- optionally (:data:`IMAGE_FEATURES`), values of the whole source, the same for every voxel: the enhancement note's
  thin-bright and bright-tail statistics, which tell a T1 from a T1ce where no voxel's neighbourhood can.

Each is standardised by the training voxels' mean and standard deviation, then an MLP (7 or 9 → 64 → 64 → 1, ReLU)
predicts |error| in ``medsynth evaluate``'s unit (1 = the target's 99.5th percentile in the brain). It is stored in
the model file it was fitted for (tensors ``error_map.*``, header ``error_map``) and is only valid for that model:
another model's errors are other errors. :func:`fit_error_map` fits it (L2 on the voxels, Adam, a fixed number of
epochs, seeded); ``medsynth fit-error-map`` (:mod:`.error_map_fit`) collects the voxels and writes the model file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["FEATURES", "IMAGE_FEATURES", "FEATURE_SETS", "ErrorMap", "error_features", "fit_error_map", "TENSOR_PREFIX"]

FEATURES = ("synthesis", "source", "flip part", "stage part", "edge distance", "source local sd", "synthesis local sd")
#: Whole-image features a map may read after :data:`FEATURES`, in this order (``fit-error-map --image-features``).
IMAGE_FEATURES = ("thin bright", "bright tail")
#: The feature lists a map can read.
FEATURE_SETS = (FEATURES, FEATURES + IMAGE_FEATURES)
TENSOR_PREFIX = "error_map."
EDGE_CAP = 30.0
LOCAL_SIZE = 5
HIDDEN = 64
#: Voxels per forward pass at prediction (bounded memory for a whole brain).
CHUNK = 1 << 18


def _local_sd(array: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    mean = ndimage.uniform_filter(array, LOCAL_SIZE)
    return np.sqrt(np.maximum(ndimage.uniform_filter(array * array, LOCAL_SIZE) - mean * mean, 0.0))


def error_features(synthesis: np.ndarray, source: np.ndarray, flip: np.ndarray, stages: Optional[np.ndarray],
                   mask: np.ndarray, scale: float, image: Sequence[float] = ()) -> np.ndarray:
    """The (brain voxels, 7 + len(image)) feature rows of :data:`FEATURES`, then ``image`` (the values of
    :data:`IMAGE_FEATURES` for this source, or none) repeated on every row, in the mask's C order.

    ``synthesis``, ``flip`` and ``stages`` are in the output's unit (divided here by ``scale``, the model's output
    scale); ``stages`` None (a one-stage model without a prior) counts as 0 everywhere; ``source`` is the raw source.
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    s = np.asarray(synthesis, dtype=np.float32) / np.float32(scale)
    x = np.asarray(source, dtype=np.float32)
    median = float(np.median(x[mask])) if mask.any() else 1.0
    x = x / np.float32(median if median > 0 else 1.0)
    stage_part = np.zeros_like(s) if stages is None else np.asarray(stages, dtype=np.float32) / np.float32(scale)
    edge = np.minimum(ndimage.distance_transform_edt(mask), EDGE_CAP).astype(np.float32)
    columns = (s, x, np.log1p(50.0 * np.asarray(flip, dtype=np.float32) / np.float32(scale)), np.log1p(50.0 * stage_part),
               edge / np.float32(EDGE_CAP), _local_sd(x), _local_sd(s))
    rows = np.stack([c[mask] for c in columns], axis=1).astype(np.float32)
    if len(image):
        whole = np.broadcast_to(np.asarray(image, dtype=np.float32), (len(rows), len(image)))
        rows = np.concatenate([rows, whole], axis=1)
    return rows


def _mlp(n_features: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(n_features, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, HIDDEN),
                               torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 1))


@dataclass
class ErrorMap:
    """The fitted predictor: feature standardisation, the MLP, what it was fitted on (kept in the header) and the
    features it reads (one of :data:`FEATURE_SETS`)."""

    mean: np.ndarray
    std: np.ndarray
    net: torch.nn.Sequential
    fitted_on: Dict[str, Any] = field(default_factory=dict)
    features: Tuple[str, ...] = FEATURES

    @property
    def image_features(self) -> Tuple[str, ...]:
        """The whole-image features it reads after :data:`FEATURES` (empty for the voxel-only form)."""
        return self.features[len(FEATURES):]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Expected |error| per feature row (≥ 0), in ``medsynth evaluate``'s unit."""
        out = np.empty(len(features), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(features), CHUNK):
                rows = (features[start:start + CHUNK] - self.mean) / self.std
                out[start:start + CHUNK] = self.net(torch.from_numpy(rows.astype(np.float32)))[:, 0].numpy()
        return np.maximum(out, 0.0)

    def tensors(self) -> Dict[str, torch.Tensor]:
        """The tensors stored in the model file, under :data:`TENSOR_PREFIX`."""
        out = {f"{TENSOR_PREFIX}net.{k}": v.detach().float().contiguous().clone() for k, v in self.net.state_dict().items()}
        out[f"{TENSOR_PREFIX}mean"] = torch.from_numpy(self.mean.astype(np.float32))
        out[f"{TENSOR_PREFIX}std"] = torch.from_numpy(self.std.astype(np.float32))
        return out

    def header(self) -> Dict[str, Any]:
        """The header entry: its features, in order (the whole-image ones also apart), and what it was fitted on."""
        out = {"features": list(self.features), "unit": "evaluate's (1 = the target's 99.5th percentile)",
               "fitted_on": dict(self.fitted_on)}
        if self.image_features:
            out["image_features"] = list(self.image_features)  # for readers of the header alone (medsynth info)
        return out

    @classmethod
    def from_tensors(cls, tensors: Dict[str, torch.Tensor], header: Dict[str, Any]) -> "ErrorMap":
        """Rebuild from a model file's ``error_map.*`` tensors and header entry (ValueError when they do not fit)."""
        names = tuple(header.get("features", ()))
        if names not in FEATURE_SETS:
            raise ValueError(f"its error map reads the features {list(names)}, this version one of "
                             f"{[list(s) for s in FEATURE_SETS]}")
        net = _mlp(len(names))
        prefix = f"{TENSOR_PREFIX}net."
        net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
        net.eval()
        return cls(tensors[f"{TENSOR_PREFIX}mean"].numpy().copy(), tensors[f"{TENSOR_PREFIX}std"].numpy().copy(), net,
                   dict(header.get("fitted_on", {})), names)


#: The smallest spread a feature is standardised by (its units are network units or fractions of the brain).
SPREAD_FLOOR = 1e-3


def fit_error_map(features: np.ndarray, errors: np.ndarray, epochs: int = 4, batch: int = 4096, lr: float = 1e-3,
                  seed: int = 0, fitted_on: Optional[Dict[str, Any]] = None,
                  names: Tuple[str, ...] = FEATURES) -> ErrorMap:
    """Fit the MLP to ``errors`` (|synthesis − target| per row, evaluate's unit) by L2, ``epochs`` passes of
    shuffled mini-batches with Adam; ``names``: the columns of ``features`` (one of :data:`FEATURE_SETS`). The same
    inputs and seed give the same map."""
    features = np.asarray(features, dtype=np.float32)
    errors = np.asarray(errors, dtype=np.float32)
    if tuple(names) not in FEATURE_SETS:
        raise ValueError(f"fit_error_map reads one of {[list(s) for s in FEATURE_SETS]}, not {list(names)}.")
    if features.ndim != 2 or features.shape[1] != len(names) or len(features) != len(errors) or not len(errors):
        raise ValueError(f"fit_error_map needs (N, {len(names)}) features and N errors, got {features.shape} "
                         f"and {errors.shape}.")
    # A feature constant in the fit (a mirror-symmetric model's flip part) must not turn rounding noise at
    # synthesis (fp16 on a GPU) into inputs a million spreads away.
    mean, std = features.mean(axis=0), np.maximum(features.std(axis=0), np.float32(SPREAD_FLOOR))
    torch.manual_seed(seed)
    net = _mlp(len(names))
    opt = torch.optim.Adam(net.parameters(), lr)
    rows = torch.from_numpy((features - mean) / std)
    target = torch.from_numpy(errors)[:, None]
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(rows), generator=order)
        for start in range(0, len(rows), batch):
            idx = perm[start:start + batch]
            loss = torch.nn.functional.mse_loss(net(rows[idx]), target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    info = dict(fitted_on or {})
    info.setdefault("voxels", int(len(errors)))
    return ErrorMap(mean, std, net, info, tuple(names))
