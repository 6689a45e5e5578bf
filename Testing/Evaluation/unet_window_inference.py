"""Does a U-Net synthesize better over windows the size of its training crops than over the whole brain frame?

usage: python Testing/Evaluation/unet_window_inference.py CASES_DIR MODEL OUT.md --cases A,B,C [--stages N]
       [--window 96] [--overlap 0.5] [--precision fp32]

``unet3d`` trains on 96³ crops and synthesizes the brain's whole frame in one forward (``unet_inference``). Its
receptive field spans the frame, so what it learned about the crop's edges (zero padding at a fixed distance) may
not hold over a larger frame: ``Testing/Benchmarks/unet_frame_margin.py`` showed the output depends on the frame's
margin everywhere in the brain. This synthesizes each case both ways, stage by stage as ``synthesize_unet`` builds
its context, the windowed way with MONAI's ``sliding_window_inference`` (Gaussian-weighted overlap) over the same
frame, and scores both with ``medsynth evaluate``'s protocol (brain-mask PSNR and SSIM of the 99.5th-percentile
normalised reference, the prediction clipped to [0, 1]). MONAI is not a MedSynth dependency: ``pip install --no-deps
monai`` (it would otherwise resolve its own torch).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from MedSynthLogic.dataset_prep import find_cases, select_cases
from MedSynthLogic.devices import synthesis_dtype
from MedSynthLogic.model_file import load_model
from MedSynthLogic.normalisation import normalise_source
from MedSynthLogic.patches import cut_window
from MedSynthLogic.tiled_synthesis import mask_bbox, synthesize_array
from MedSynthLogic.unet_inference import MARGIN, frame_of

from case_table import markdown, read_scored_case, score  # beside this script


def windowed(chain: torch.nn.Module, src: np.ndarray, mask: np.ndarray, stages: int, window: int, overlap: float,
             precision: str) -> np.ndarray:
    """``stages`` stages over the brain frame, each as Gaussian-blended ``window``³ forwards; 0 outside ``mask``."""
    cfg = chain.config.generator
    frame = frame_of(mask_bbox(mask), src.shape, cfg.size_multiple, MARGIN)
    src_f = cut_window(src, frame).astype(np.float32)
    mask_f = cut_window(mask.astype(np.float32), frame, mode="constant")
    dtype = synthesis_dtype(torch.device("cpu"), precision)
    prev = None
    with torch.inference_mode():
        for k in range(stages):
            gen = chain.stages[k].eval()
            x = torch.from_numpy(np.stack([src_f] if prev is None else [src_f, prev])[None])
            ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
            with ctx:
                out = sliding_window_inference(x, (window,) * 3, 1, lambda t: gen(t).float(), overlap=overlap,
                                               mode="gaussian", padding_mode="replicate")
            prev = out[0, 0].float().numpy() * mask_f
    result = np.zeros(src.shape, dtype=np.float32)
    inside = tuple(slice(max(a, 0), min(b, n)) for (a, b), n in zip(frame, src.shape))
    offset = tuple(slice(s.start - a, s.stop - a) for s, (a, _) in zip(inside, frame))
    result[inside] = prev[offset]
    return result * mask


def compare(cases_dir: Path, model_path: str, cases: List[str], stages: int, window: int, overlap: float,
            precision: str) -> Dict[str, Dict[str, Tuple[float, float]]]:
    """case → way → (PSNR, SSIM)."""
    model = load_model(model_path, stages=stages)
    norm = model.config.normalisation
    files = {c.case_id: c for c in select_cases(find_cases(cases_dir), cases, f"Case in {cases_dir}")}
    out: Dict[str, Dict[str, Tuple[float, float]]] = {}
    for case in cases:
        source, mask, ref = read_scored_case(files[case], norm.mask_threshold)
        src = normalise_source(source.array, mask, norm)[0]
        t0 = time.perf_counter()
        whole = np.clip(synthesize_array(model.chain, src, mask, stages=stages, precision=precision), 0.0, 1.0)
        t1 = time.perf_counter()
        win = np.clip(windowed(model.chain, src, mask, stages, window, overlap, precision), 0.0, 1.0)
        t2 = time.perf_counter()
        out[case] = score(case, {"whole frame": whole, f"{window}³ windows": win}, ref, mask)
        print(f"  ({t1 - t0:.0f} s / {t2 - t1:.0f} s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases_dir", type=Path)
    ap.add_argument("model")
    ap.add_argument("out", type=Path)
    ap.add_argument("--cases", required=True)
    ap.add_argument("--stages", type=int, default=1)
    ap.add_argument("--window", type=int, default=96)
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--precision", default="fp32")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = compare(args.cases_dir, args.model, args.cases.split(","), args.stages, args.window, args.overlap, args.precision)
    intro = (f"# Whole frame or {args.window}³ windows: `{Path(args.model).name}`, {args.stages} stage(s)\n\n"
             f"`python Testing/Evaluation/unet_window_inference.py` (overlap {args.overlap}, Gaussian weights,"
             f" {args.precision}) on {len(results)} cases; see its docstring.\n\n")
    args.out.write_text(intro + markdown(results), encoding="utf-8")


if __name__ == "__main__":
    main()
