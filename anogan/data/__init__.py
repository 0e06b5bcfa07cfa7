"""Datasets and one-class DataModules."""

from anogan.data.datamodule import (
    SPLITS,
    DigitsDataModule,
    HDF5DataModule,
    IDXDataModule,
    OneClassDataModule,
)

__all__ = ["SPLITS", "DigitsDataModule", "HDF5DataModule", "IDXDataModule", "OneClassDataModule"]
