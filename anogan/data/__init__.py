"""Layer 4, data: image sources and one-class DataModules (their paths are stable: checkpoints store
their ``_target_``), the patch library (``patches``) apart from its command (``python -m
anogan.data.prepare``), scans cut into patches and their maps stitched back (``scans``, ``stitch``), and
the numpy-only reading of image files (``pixels``).
Imports nets, metrics and runtime; never models, callbacks or the engine.

The names below are imported from ``anogan.data.datamodule`` when first used, so that importing
``anogan.data.pixels`` does not import torch (``python -m anogan.score_onnx`` runs without it)."""

from __future__ import annotations

__all__ = ["SPLITS", "DigitsDataModule", "HDF5DataModule", "IDXDataModule", "OneClassDataModule"]


def __getattr__(name: str):
    if name in __all__:
        from anogan.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
