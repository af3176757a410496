"""A series as a volume: the one structure every model, output and statistic of :mod:`voxlake.ai`
works on.

Axes are (slice k, row j, column i), slices ordered along the slice normal (increasing
``ImagePositionPatient · normal``), so ``array[k]`` is the k-th slice as a viewer shows it. The
affine maps a voxel index (k, j, i) to patient coordinates (LPS, mm), as DICOM defines them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Volume:
    """A CT (or any single-frame or enhanced multi-frame) series as a 3-D array.

    * ``array``: float32, shape (slices, rows, columns), rescale applied (Hounsfield units for CT).
    * ``spacing``: (between slice centres, between rows, between columns) in mm.
    * ``affine``: 4x4, voxel (k, j, i, 1) → patient LPS mm.
    * ``sources``: per slice, (SOPInstanceUID, frame number, 1-based; 1 for single-frame instances),
      in ``array`` order: what a DICOM SEG references.
    * ``headers``: the source instances' headers without Pixel Data (pydicom Datasets), in the
      order of the distinct SOPInstanceUIDs of ``sources``; highdicom builds a SEG from them.
    * ``warnings``: what was corrected or is unusual (uneven spacing within tolerance, ...), one
      line each, for the caller to report.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    sources: list[tuple[str, int]]
    headers: list[Any]
    StudyInstanceUID: str
    SeriesInstanceUID: str
    Modality: str
    warnings: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def voxel_ml(self) -> float:
        """The volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0
