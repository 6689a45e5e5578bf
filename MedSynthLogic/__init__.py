"""MedSynthLogic: the Qt-free core of MedSynth.

Everything the method needs (I/O, normalisation, models, losses, HDF5 data, training, tiled inference,
metrics, model files, CLI) lives here so it runs with plain Python, in CI, on a cluster and inside 3D Slicer.
Submodules import heavy dependencies (torch, SimpleITK, h5py) themselves, so importing the package is cheap.
"""

__version__ = "0.1.0"
