"""Layer 4, data: image sources and one-class DataModules (their paths are stable: checkpoints store
their ``_target_``), the patch library (``patches``) apart from its command (``python -m
anogan.data.prepare``), scans cut into patches and their maps stitched back (``scans``, ``stitch``).
Imports nets, metrics and runtime; never models, callbacks or the engine."""

from anogan.data.datamodule import (
    SPLITS,
    DigitsDataModule,
    HDF5DataModule,
    IDXDataModule,
    OneClassDataModule,
)

__all__ = ["SPLITS", "DigitsDataModule", "HDF5DataModule", "IDXDataModule", "OneClassDataModule"]
