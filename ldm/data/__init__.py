"""Datasets and the Lightning data module.

Examples follow the CompVis batch format: one dict per sample with ``image`` as HWC float32 in
[-1, 1] plus task keys (``class_label``, ``caption``, ``bboxes``, ``segmentation``, ...).
Submodules are imported where used (``ldm.data.base``, ``ldm.data.folder``,
``ldm.data.synthetic``, ``ldm.data.image_io``) so importing this package stays cheap. Shared
pieces: ``skipping`` (bad items are skipped, never fatal), ``variants`` (the named train/validation
classes of the configs), ``paths`` (default roots and missing-data errors).
"""
