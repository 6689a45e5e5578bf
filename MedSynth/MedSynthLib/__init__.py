"""Helpers of the MedSynth Slicer module, beside ``MedSynth.py`` as SlicerNNUnet keeps ``SlicerNNUNetLib/``.

Everything here is free of Qt and of the module's widget, so it runs (and is tested) with PyPI's ``slicer-core``:
the dependency installer (``dependencies``), the background jobs and what their events mean for the panel
(``controller``, ``events``, ``synthesis``, ``training_jobs``), which buttons may be pressed (``panel_state``), the model description (``model_info``), the time
estimate (``estimate``) and the sample data (``sample_data``). Slicer and the core package ``MedSynthLogic`` are
imported where they are used, so importing this package is cheap.
"""
