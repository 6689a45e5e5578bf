"""Optional: Slicer's slice views render the demo result offscreen (``Testing/render_side_by_side.py``).

Needs ``trame-slicer[standalone]`` (a Qt-free Slicer app on PyPI's ``slicer-core``) and an EGL driver; it pins
``slicer-core``/``vtk`` versions that clash with the main environment, so it lives in a separate venv (see the
script's docstring) and this test skips everywhere else, CI included. With torch installed as well it renders the
real ``medsynth demo`` output; without torch it renders the phantom's T1ce and T2 (same files, same code path,
only the right-hand volume is not synthetic).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "Testing" / "render_side_by_side.py"
SIZE = 256

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("trame_slicer") is None,
    reason="trame_slicer is not installed (optional offscreen Slicer rendering; it needs its own venv: "
    "see Testing/render_side_by_side.py)",
)


@pytest.fixture(scope="module")
def demo_volumes(tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("render_demo")
    if importlib.util.find_spec("torch") is not None:
        from MedSynthLogic.demo import run_demo

        paths = run_demo(out, device="cpu")
        return paths["t1ce"], paths["synthetic_t2"]
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import write_volume

    phantom = make_phantom(shape=(48, 56, 48), seed=0)
    write_volume(phantom.t1ce, out / "phantom_t1ce.nii.gz")
    write_volume(phantom.t2, out / "phantom_t2.nii.gz")
    return out / "phantom_t1ce.nii.gz", out / "phantom_t2.nii.gz"


def _read_png(path: Path) -> np.ndarray:
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOImage import vtkPNGReader

    reader = vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    w, h, _ = image.GetDimensions()
    components = image.GetPointData().GetScalars().GetNumberOfComponents()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, components)[::-1]  # top row first


@pytest.mark.slow
def test_render_side_by_side_offscreen(demo_volumes, tmp_path):
    source, synthetic = demo_volumes
    out = tmp_path / "side by side.png"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(source), str(synthetic), str(out), "--size", str(SIZE), "--no-annotations"],
        capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "'Red': 'Axial', 'Yellow': 'Axial'" in result.stdout, result.stdout
    assert out.is_file()

    image = _read_png(out)
    assert image.shape[:2] == (SIZE, 2 * SIZE + 4)
    left, right = image[:, :SIZE, :3], image[:, SIZE + 4:, :3]
    for name, half in (("left (T1ce)", left), ("right (synthetic T2)", right)):
        grey = half.astype(float).mean(axis=2)
        brain = grey > 10
        assert 0.15 < brain.mean() < 0.9, f"{name} half: {brain.mean():.1%} of pixels lit, expected a head in the view"
        assert grey[brain].std() > 10, f"{name} half is a flat colour, not an image"
        assert not brain[0].any() and not brain[-1].any(), f"{name} half: the head touches the top/bottom edge"
        assert np.allclose(half[..., 0], half[..., 1]) and np.allclose(half[..., 1], half[..., 2]), (
            f"{name} half is not grey (the Grey colour table was not used)"
        )
    # Both views show the same slice of the same grid: the heads cover nearly the same pixels.
    overlap = ((left.mean(axis=2) > 10) & (right.mean(axis=2) > 10)).sum()
    union = ((left.mean(axis=2) > 10) | (right.mean(axis=2) > 10)).sum()
    assert overlap / union > 0.8, f"the two views are not aligned (head overlap {overlap / union:.2f})"
    assert not np.array_equal(left, right)
