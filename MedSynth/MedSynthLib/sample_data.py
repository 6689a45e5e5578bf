"""One-click sample data: the MedSynth phantom (T1ce and its T2) in Slicer's Sample Data module and in the panel.

The phantom is not downloaded: ``MedSynthLogic.phantom.make_phantom`` generates it (deterministic, seed 0) into a
source folder of MedSynth's own (in Slicer's temporary folder) the first time, and later clicks load those files. It
is registered as MONAIAuto3DSeg and TotalSegmentator register theirs, with
``SampleData.SampleDataLogic.registerCustomSampleDataSource``, its URIs naming the source folder's files: Sample Data
copies them into its download cache and loads them from there, as any other sample's, and a cache cleared during the
session is filled again from the source folder (the URIs named the cache's own files before, which a cleared cache
no longer had). Its ``customDownloader`` (the Sample Data button) generates the files first if they are missing.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

CATEGORY = "MedSynth"
SAMPLE_NAME = "MedSynthPhantom"


def generator_tag() -> str:
    """8 hex digits of the phantom generator's source: cached files are named with it, so a MedSynth whose
    phantom changed generates new ones instead of loading the old (the self-test's PSNR threshold is for this one)."""
    origin = importlib.util.find_spec("MedSynthLogic.phantom").origin
    return hashlib.sha256(Path(origin).read_bytes()).hexdigest()[:8]


#: node name → file name, in the order the sample loads them (the T1ce first: it is the input).
FILES: Dict[str, str] = {f"MedSynthPhantom_{kind}": f"MedSynthPhantom_{generator_tag()}_{kind}.nii.gz" for kind in ("t1ce", "t2")}


def write_phantom_pair(folder: "str | Path") -> List[Path]:
    """The phantom's T1ce and T2 files in ``folder``, generated when one is missing; returns their paths."""
    from MedSynthLogic.volume_io import write_volume

    folder = Path(folder)
    paths = [folder / name for name in FILES.values()]
    if all(path.is_file() and path.stat().st_size > 0 for path in paths):
        return paths
    from MedSynthLogic.phantom import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    phantom = make_phantom(seed=0)
    for volume, path in zip((phantom.t1ce, phantom.t2), paths):
        write_volume(volume, path, overwrite=True)
    return paths


def load_phantom_pair(scene: Any, folder: "str | Path") -> List[Any]:
    """Generate (if needed) and load the phantom pair into ``scene``; returns the T1ce and T2 nodes."""
    from MedSynthLogic import mrml

    nodes = []
    for node_name, path in zip(FILES, write_phantom_pair(folder)):
        node = mrml.load_volume_file(scene, path, name=node_name)
        mrml.set_window_level(node)
        nodes.append(node)
    return nodes


def phantom_psnr(synthetic_node: Any, t2_node: Any) -> float:
    """PSNR (dB) inside the phantom's brain of a synthesis of its T1ce against its T2, as ``evaluate`` scores (the
    prediction on the reference's scale, both normalised): the module's self-test asks it of the bundled model."""
    from MedSynthLogic import mrml
    from MedSynthLogic.metrics import normalise_for_metrics, psnr, scale_prediction

    predicted, reference = (mrml.volume_from_node(n).array.astype(np.float64) for n in (synthetic_node, t2_node))
    brain = reference > 0
    return float(psnr(scale_prediction(predicted, brain, 1000.0), normalise_for_metrics(reference, brain), brain))


def sample_source_arguments(source_folder: "str | Path", thumbnail: Optional[str], sample_data_logic: Any) -> Dict[str, Any]:
    """The keyword arguments of ``registerCustomSampleDataSource`` for the phantom generated into ``source_folder``."""
    paths = [Path(source_folder) / name for name in FILES.values()]
    return {
        "category": CATEGORY,
        "sampleName": SAMPLE_NAME,
        "uris": [path.resolve().as_uri() for path in paths],
        "fileNames": list(FILES.values()),
        "nodeNames": list(FILES),
        "thumbnailFileName": thumbnail,
        "customDownloader": functools.partial(download_phantom, source_folder=source_folder,
                                              sample_data_logic=sample_data_logic),
    }


def register_phantom_sample(sample_data_logic: Any, source_folder: "str | Path", thumbnail: Optional[str] = None) -> None:
    """Register the phantom with the Sample Data module (``sample_data_logic`` is ``SampleData.SampleDataLogic``).

    The files are generated into ``source_folder`` first (about 1 s, once per folder), since
    ``SampleData.downloadSample`` copies a source from its URIs without calling its ``customDownloader``: from a
    script, there was nothing to copy otherwise. A folder that cannot be written only costs the scripted path; the
    button still generates them."""
    from MedSynthLogic.errors import MedSynthError

    try:
        write_phantom_pair(source_folder)
    except (MedSynthError, OSError) as exc:
        logging.warning("MedSynth: could not write the phantom sample into %s (%s)", source_folder, exc)
    if SAMPLE_NAME in registered_names(sample_data_logic):  # a reloaded module (Reload and Test) would list it twice
        return
    sample_data_logic.registerCustomSampleDataSource(**sample_source_arguments(source_folder, thumbnail, sample_data_logic))


def registered_names(sample_data_logic: Any) -> List[str]:
    """The sample names Sample Data lists under MedSynth's category (none where it cannot say)."""
    by_category = getattr(sample_data_logic, "sampleDataSourcesByCategory", None)
    return [source.sampleName for source in by_category(CATEGORY)] if by_category is not None else []


def download_phantom(source: Any, source_folder: "str | Path", sample_data_logic: Any) -> List[Any]:
    """The sample's ``customDownloader``: generate the files if they are missing, then let Sample Data copy them
    into its cache and load them."""
    write_phantom_pair(source_folder)
    return sample_data_logic().downloadFromSource(source)


def sample_source_folder() -> Path:
    """Where the phantom is generated in a running Slicer: a folder of Slicer's temporary folder, which clearing
    Slicer's download cache leaves alone."""
    import slicer

    return Path(slicer.app.temporaryPath) / "MedSynthSample"


def case_source_arguments(case_dir: "str | Path", thumbnail: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """``registerCustomSampleDataSource`` arguments for a user's own case folder (``<case>_t1ce`` and ``_t2`` files,
    BraTS naming), or None when the folder holds no T1ce. Sample Data copies the files into its cache and loads them."""
    folder = Path(case_dir)
    files = [next(iter(sorted(folder.glob(f"*_{suffix}.nii*"))), None) for suffix in ("t1ce", "t2")]
    files = [path for path in files if path is not None]
    if not files or not files[0].name.split(".")[0].endswith("_t1ce"):
        return None
    return {
        "category": CATEGORY,
        "sampleName": folder.name,
        "uris": [path.resolve().as_uri() for path in files],
        "fileNames": [path.name for path in files],
        "nodeNames": [path.name.split(".")[0] for path in files],
        "thumbnailFileName": thumbnail,
    }


def register_in_slicer(thumbnail: Optional[str] = None, environ: Optional[Dict[str, str]] = None) -> None:
    """Register the phantom, and the case folder named by ``$MEDSYNTH_SAMPLE_CASE`` if any, with the running
    Slicer's Sample Data module (called once Slicer has started)."""
    import os

    import SampleData

    register_phantom_sample(SampleData.SampleDataLogic, sample_source_folder(), thumbnail)
    case = (os.environ if environ is None else environ).get("MEDSYNTH_SAMPLE_CASE")
    arguments = case_source_arguments(case, thumbnail) if case else None
    if arguments is not None:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(**arguments)
