"""A deterministic synthetic brain with a glioma, imaged as T1ce and T2 through MR signal equations.

Tests, the demo and benchmarks need paired data that is free to ship, fast to make and hard enough that a model
must use spatial context: the T1ce → T2 relation here is not a function of intensity alone (CSF is dark in T1ce
and bright in T2 while white matter is the reverse; oedema looks almost like white matter in T1ce but is three
times brighter in T2; necrosis and CSF overlap in T1ce but differ in T2).

Signal models (relaxation times in ms, roughly 3 T literature values):
  T1ce, 3D spoiled gradient echo:  S = PD·sin α·(1 − E1)/(1 − cos α·E1)·E2*, E1 = e^(−TR/T1), E2* = e^(−TE/T2*),
         with gadolinium shortening T1 in the enhancing rim: 1/T1 = 1/T1₀ + r1·C.
  T2, spin echo:  S = PD·(1 − e^(−TR/T1))·e^(−TE/T2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np

from .volume_io import Volume

# tissue classes (index into the parameter table) and the BraTS label each one carries
BACKGROUND, CSF, GM, WM, DEEP_GM, OEDEMA, ENHANCING, NECROSIS = range(8)
TISSUE_NAMES = ("background", "CSF", "grey matter", "white matter", "deep grey matter", "oedema", "enhancing tumour", "necrosis")
BRATS_LABEL = np.array([0, 0, 0, 0, 0, 2, 4, 1], dtype=np.uint8)

#               T1     T2    T2*   PD
_TISSUE = np.array(
    [
        [1.0, 1.0, 1.0, 0.0],  # background (PD 0: no signal)
        [4000.0, 2000.0, 1000.0, 1.00],  # CSF
        [1400.0, 95.0, 60.0, 0.80],  # cortical grey matter
        [850.0, 75.0, 50.0, 0.70],  # white matter
        [1200.0, 85.0, 45.0, 0.78],  # deep grey matter (thalamus, basal ganglia)
        [1150.0, 250.0, 150.0, 0.72],  # vasogenic oedema: T1 barely longer than WM, T2 three times longer
        [1500.0, 120.0, 70.0, 0.85],  # enhancing tumour (native T1 before contrast)
        [2500.0, 400.0, 250.0, 0.90],  # necrosis: fluid-like but not CSF
    ],
    dtype=np.float64,
)
R1_GD = 4.0e-3  # gadolinium relaxivity at 3 T, 1/(ms·mM)
GD_ENHANCING = 0.6  # mM in the enhancing rim (blood-brain barrier broken)
GD_ELSEWHERE = 0.02  # mM in intact brain (blood volume only)

T1CE_SEQ = {"tr": 20.0, "te": 4.0, "flip_deg": 25.0}
T2_SEQ = {"tr": 4000.0, "te": 100.0}


@dataclass(frozen=True)
class Phantom:
    """Paired T1ce/T2 volumes (float32, ≥ 0, 0 outside the brain), brain mask, BraTS labels and tissue classes."""

    t1ce: Volume
    t2: Volume
    mask: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray


def spoiled_gradient_echo(pd: np.ndarray, t1: np.ndarray, t2s: np.ndarray, tr: float, te: float, flip_deg: float) -> np.ndarray:
    """Steady-state spoiled GRE signal (T1-weighted for short TR and moderate flip angle)."""
    a = np.deg2rad(flip_deg)
    e1 = np.exp(-tr / t1)
    return pd * np.sin(a) * (1.0 - e1) / (1.0 - np.cos(a) * e1) * np.exp(-te / t2s)


def spin_echo(pd: np.ndarray, t1: np.ndarray, t2: np.ndarray, tr: float, te: float) -> np.ndarray:
    """Spin-echo signal (T2-weighted for long TR and long TE)."""
    return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)


def _coords(shape: Sequence[int]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable normalised coordinates in [-1, 1] along z, y, x."""
    z, y, x = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape)
    return z[:, None, None], y[None, :, None], x[None, None, :]


def _smooth_field(coords, rng: np.random.Generator, terms: int, freq: Tuple[float, float]) -> np.ndarray:
    """A smooth random field (sum of plane waves with random direction, frequency and phase), roughly in [-1, 1]."""
    z, y, x = coords
    out = np.zeros(np.broadcast_shapes(z.shape, y.shape, x.shape), dtype=np.float32)
    dirs = rng.normal(size=(terms, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    freqs = rng.uniform(*freq, size=terms) * np.pi
    phases = rng.uniform(0, 2 * np.pi, size=terms)
    for (kz, ky, kx), f, ph in zip(dirs, freqs, phases):
        out += np.cos(np.float32(f * kz) * z + np.float32(f * ky) * y + np.float32(f * kx) * x + np.float32(ph))
    return out * np.float32(np.sqrt(2.0 / terms))


def _ellipsoid(coords, centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Normalised ellipsoidal distance (< 1 inside)."""
    z, y, x = coords
    return np.sqrt(((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((x - centre[2]) / radii[2]) ** 2)


def _tissue_map(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    coords = _coords(shape)
    z, y, x = coords
    outline = _smooth_field(coords, rng, 8, (0.5, 1.5))
    folds = _smooth_field(coords, rng, 24, (4.0, 7.0))
    d = _ellipsoid(coords, (0.0, 0.0, 0.0), (0.82, 0.88, 0.8)) + np.float32(0.04) * outline

    tissue = np.zeros(shape, dtype=np.uint8)
    brain = d < 1.0
    tissue[brain] = WM
    tissue[brain & (d > 0.83 + 0.08 * folds)] = GM  # folded cortical ribbon
    tissue[brain & (d > 0.88) & (folds < -0.7)] = CSF  # sulci
    for side in (-1.0, 1.0):
        tissue[_ellipsoid(coords, (-0.05, 0.08, 0.17 * side), (0.17, 0.2, 0.12)) < 1.0] = DEEP_GM
        ventricle = _ellipsoid(coords, (0.12, -0.02 - 0.1 * y, 0.1 * side), (0.2, 0.38, 0.065))
        tissue[ventricle < 1.0] = CSF

    side = rng.choice([-1.0, 1.0])
    centre = (rng.uniform(-0.1, 0.35), rng.uniform(-0.35, 0.35), side * rng.uniform(0.25, 0.35))
    radius = rng.uniform(0.22, 0.28)
    lumps = _smooth_field(coords, rng, 10, (2.0, 4.0))
    dt = _ellipsoid(coords, centre, (radius, radius * 1.1, radius * 0.9)) + np.float32(0.12) * lumps
    in_tumour_zone = brain & (tissue != CSF)
    oedema_reach = np.where(tissue == WM, 1.9, 1.3)  # oedema spreads along white matter
    tissue[in_tumour_zone & (dt < oedema_reach)] = OEDEMA
    tissue[brain & (dt < 0.75)] = ENHANCING
    tissue[brain & (dt < 0.45)] = NECROSIS
    return tissue


def make_phantom(shape: Sequence[int] = (96, 112, 96), spacing: Sequence[float] = (1.0, 1.0, 1.0), seed: int = 0) -> Phantom:
    """Make a phantom; the same ``shape``/``seed`` always gives identical arrays.

    ``shape`` is (z, y, x) voxels, ``spacing`` (x, y, z) mm as in :class:`Volume`; the anatomy scales with the grid.
    Intensities are in arbitrary scanner units (brain values of a few hundred to a few thousand).
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"A phantom needs 3 axes of at least 8 voxels, got {shape}.")
    rng = np.random.default_rng(seed)
    tissue = _tissue_map(shape, rng)
    brain = tissue != BACKGROUND

    t1, t2, t2s, pd = (_TISSUE[:, k][tissue] for k in range(4))
    pd = pd * (1.0 + 0.03 * _smooth_field(_coords(shape), rng, 16, (3.0, 8.0)))  # within-tissue texture
    gd = np.where(tissue == ENHANCING, GD_ENHANCING, GD_ELSEWHERE)
    t1_post = 1.0 / (1.0 / t1 + R1_GD * gd)

    t1ce = spoiled_gradient_echo(pd, t1_post, t2s, T1CE_SEQ["tr"], T1CE_SEQ["te"], T1CE_SEQ["flip_deg"]) * 2.0e4
    t2w = spin_echo(pd, t1, t2, T2_SEQ["tr"], T2_SEQ["te"]) * 2.0e3

    out = []
    coords = _coords(shape)
    for signal in (t1ce, t2w):
        signal = _blur(signal.astype(np.float32))  # partial volume / point-spread function
        bias = np.exp(np.float32(0.05) * _smooth_field(coords, rng, 6, (0.3, 1.0)))
        signal = signal * bias
        sigma = np.float32(0.015 * np.percentile(signal[brain], 99))
        noisy = np.hypot(signal + sigma * rng.standard_normal(shape, dtype=np.float32), sigma * rng.standard_normal(shape, dtype=np.float32))
        out.append(np.where(brain, noisy, np.float32(0.0)).astype(np.float32))

    spacing_t = tuple(float(s) for s in spacing)
    origin = tuple(-(n - 1) / 2.0 * s for n, s in zip(shape[::-1], spacing_t))
    t1ce_vol = Volume(out[0], spacing=spacing_t, origin=origin)
    return Phantom(
        t1ce=t1ce_vol,
        t2=t1ce_vol.with_array(out[1]),
        mask=brain,
        labels=BRATS_LABEL[tissue],
        tissue=tissue,
    )


def _blur(arr: np.ndarray) -> np.ndarray:
    """A light separable [1, 2, 1]/4 blur along every axis (edges repeat), i.e. about half a voxel of PSF."""
    out = arr
    for axis in range(3):
        padded = np.pad(out, [(1, 1) if a == axis else (0, 0) for a in range(3)], mode="edge")
        lo = np.take(padded, np.arange(0, out.shape[axis]), axis=axis)
        mid = np.take(padded, np.arange(1, out.shape[axis] + 1), axis=axis)
        hi = np.take(padded, np.arange(2, out.shape[axis] + 2), axis=axis)
        out = (lo + 2 * mid + hi) * np.float32(0.25)
    return out


def tissue_summary(phantom: Phantom) -> Dict[str, Dict[str, float]]:
    """Median T1ce and T2 per tissue class: handy to check contrasts in tests and docs."""
    summary = {}
    for k, name in enumerate(TISSUE_NAMES[1:], start=1):
        sel = phantom.tissue == k
        if sel.any():
            summary[name] = {
                "voxels": float(sel.sum()),
                "t1ce": float(np.median(phantom.t1ce.array[sel])),
                "t2": float(np.median(phantom.t2.array[sel])),
            }
    return summary
