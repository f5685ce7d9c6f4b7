"""Fixtures for the converter tests: tiny NIfTI files and synthetic DICOM series written here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


def _affine(spacing=(1.5, 1.5, 4.0), origin=(-10.0, 20.0, 5.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    affine[:3, 3] = origin
    return affine


@pytest.fixture
def write_nifti() -> Callable[..., Path]:
    """``write_nifti(path, array, affine=None, dtype=None)`` writes a NIfTI file and returns its path."""

    def write(path: Path, array: np.ndarray, affine: np.ndarray | None = None, dtype=None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = np.asarray(array if dtype is None else np.asarray(array).astype(dtype))
        nib.save(nib.Nifti1Image(data, _affine() if affine is None else affine), str(path))
        return path

    return write


@pytest.fixture
def affine() -> Callable[..., np.ndarray]:
    return _affine


@pytest.fixture
def write_series() -> Callable[..., list[Path]]:
    """Write a synthetic single-frame DICOM series.

    ``write_series(folder, positions, orientation=(1,0,0,0,1,0), rows=6, cols=8,
    spacing=(0.8, 0.6), slope=2.0, intercept=-1024.0, names=None, instances=None,
    series_uid=None, modality="CT", values=None)``

    Slice ``n`` (in the order of ``positions``) gets pixel value ``n*1000 + r*20 + c`` at
    (row r, column c) unless ``values`` gives the stored arrays; files are written in reverse
    order under ``names`` (default ``slice_{n}.dcm``). Returns the paths, in ``positions`` order.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def write(
        folder: Path,
        positions: Sequence[Sequence[float]],
        *,
        orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
        rows: int = 6,
        cols: int = 8,
        spacing: Sequence[float] = (0.8, 0.6),
        slope: float = 2.0,
        intercept: float = -1024.0,
        names: Sequence[str] | None = None,
        instances: Sequence[int] | None = None,
        series_uid: str | Sequence[str] | None = None,
        modality: str = "CT",
        values: Sequence[np.ndarray] | None = None,
    ) -> list[Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        uid = series_uid if series_uid is not None else generate_uid()
        paths = [folder / (names[n] if names is not None else f"slice_{n}.dcm") for n in range(len(positions))]
        # Written in reverse so that neither creation order nor names follow the slice order.
        for n in reversed(range(len(positions))):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.Modality = modality
            ds.SeriesInstanceUID = uid if isinstance(uid, str) else uid[n]
            ds.SeriesDescription = "synthetic"
            ds.InstanceNumber = int(instances[n]) if instances is not None else len(positions) - n
            ds.ImagePositionPatient = [float(v) for v in positions[n]]
            ds.ImageOrientationPatient = [float(v) for v in orientation]
            ds.PixelSpacing = [float(v) for v in spacing]
            ds.Rows, ds.Columns = rows, cols
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
            if values is not None:
                pixels = np.asarray(values[n], dtype=np.uint16)
            else:
                r, c = np.mgrid[0:rows, 0:cols]
                pixels = (n * 1000 + r * 20 + c).astype(np.uint16)
            ds.PixelData = pixels.tobytes()
            ds.save_as(paths[n], enforce_file_format=True)
        return paths

    return write


@pytest.fixture
def write_png() -> Callable[..., Path]:
    """``write_png(path, array)``: an 8-bit greyscale PNG."""
    from PIL import Image

    def write(path: Path, array: np.ndarray) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L").save(path)
        return path

    return write
