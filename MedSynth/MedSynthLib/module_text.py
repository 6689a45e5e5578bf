"""The module's help and acknowledgement texts (what Slicer shows in the module's Help & Acknowledgement section).

Kept out of ``MedSynth.py``, which stays a thin GUI; written as ``_()`` literals so Slicer's translation tooling
extracts them with this file as their context.
"""

from __future__ import annotations

from .i18n import tr as _


def help_text() -> str:
    """What the module does, what input it expects, and that the image is not for diagnosis."""
    return _("""
Synthesizes a T2-weighted brain MRI from a contrast-enhanced T1 (T1ce) volume (the default model: the paper's 3-stage
auto-context FCN refined by a 3D U-Net), and trains and evaluates new models from paired data. Inputs should be
skull-stripped and roughly 1 mm isotropic like BraTS; other inputs are refused unless Force is ticked. Pick the
post-contrast series: a volume named as a T1 without "post", "Gd", "+C" or "ce", or one without any sign of contrast
enhancement, gets a warning first. The synthetic image is <b>not</b> for diagnosis. See the <a href="https://github.com/medsynth/SlicerMedSynth">documentation</a>.
""")


def acknowledgement_text() -> str:
    """The method's paper and the data the bundled model was trained on."""
    return _("""
Method: D. Nie, R. Trullo, J. Lian, L. Wang, C. Petitjean, S. Ruan, Q. Wang, D. Shen, "Medical Image Synthesis with
Deep Convolutional Adversarial Networks", IEEE Transactions on Biomedical Engineering 65(12), 2018. The bundled model
was trained on the BraTS data (B. H. Menze et al., IEEE TMI 2015; S. Bakas et al., Scientific Data 2017 and arXiv:1811.02629).
""")
