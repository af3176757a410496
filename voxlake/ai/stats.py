"""Per-label statistics of a label map over its volume: the rows of the ``segment_stats`` table
(columns in :mod:`voxlake.ai.tables`)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from voxlake.ai.seg import check_label_map

if TYPE_CHECKING:
    from voxlake.ai.volume import Volume

__all__ = ["LabelSums", "segment_stats"]


def segment_stats(volume: Volume, label_map: np.ndarray, labels: dict[int, str], *, model_name: str,
                  model_version: str, seg_sop_instance_uid: str | None = None,
                  seg_series_instance_uid: str | None = None, run_id: str | None = None,
                  segment_numbers: dict[int, int] | None = None, sums: LabelSums | None = None) -> list[dict[str, Any]]:
    """One row per label present in ``label_map``, in label order.

    ``mean_hu`` / ``std_hu`` are of ``volume.array`` (HU for CT; population standard deviation)
    inside the label. Bounding boxes are inclusive voxel indices (k, j, i) and the LPS mm extent of
    those voxels' centres (the box's 8 corners through the affine, so oblique volumes are right);
    ``centroid_mm`` is the mean voxel centre. ``segment_numbers`` maps a label value to its SEG
    segment number (default: 1, 2, … in label order, as :func:`voxlake.ai.seg.segmentation` numbers).
    ``sums``: a :class:`LabelSums` of this label map and volume whose work is done.
    """
    check_label_map(volume, label_map, labels)
    if sums is None:
        sums = LabelSums(label_map, volume.array, max(labels, default=0))
        sums.work()
    per_slice, per_row, per_column, hu_sums, squares = sums.result()
    size = len(hu_sums)
    counts = per_slice.sum(axis=0)
    slice_sums = (per_slice * np.arange(per_slice.shape[0])[:, None]).sum(axis=0)
    row_sums = (per_row * np.arange(per_row.shape[0])[:, None]).sum(axis=0)
    column_sums = (per_column * np.arange(per_column.shape[0])[:, None]).sum(axis=0)
    present = [v for v in sorted(labels) if 0 < v < size and counts[v] > 0]
    numbers = segment_numbers or {v: n for n, v in enumerate(present, start=1)}
    affine = np.asarray(volume.affine, dtype=np.float64)
    now = datetime.now(UTC)
    rows = []
    for value in present:
        n = int(counts[value])
        mean = hu_sums[value] / n
        var = max(squares[value] / n - mean * mean, 0.0)
        extents = [_extent(per_axis[:, value]) for per_axis in (per_slice, per_row, per_column)]
        lo = [first for first, _ in extents]
        hi = [last for _, last in extents]
        centroid = [slice_sums[value] / n, row_sums[value] / n, column_sums[value] / n]
        corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                            for c in (lo[2], hi[2])]) @ affine.T
        rows.append({
            "SeriesInstanceUID": volume.SeriesInstanceUID,
            "StudyInstanceUID": volume.StudyInstanceUID,
            "model": model_name,
            "model_version": str(model_version),
            "label": labels[value],
            "label_value": int(value),
            "SegmentNumber": int(numbers[value]),
            "voxels": n,
            "volume_ml": n * volume.voxel_ml,
            "mean_hu": float(mean),
            "std_hu": float(np.sqrt(var)),
            "bbox_min_index": lo,
            "bbox_max_index": hi,
            "bbox_min_mm": corners[:, :3].min(axis=0).tolist(),
            "bbox_max_mm": corners[:, :3].max(axis=0).tolist(),
            "centroid_mm": (affine @ np.array([*centroid, 1.0]))[:3].tolist(),
            "SegmentationSOPInstanceUID": seg_sop_instance_uid,
            "SegmentationSeriesInstanceUID": seg_series_instance_uid,
            "run_id": run_id,
            "created_at": now,
        })
    return rows


#: Voxels per slab of :class:`LabelSums`: a few slices at a time, so the temporaries (the indices of
#: the labelled voxels and their HU in float64) stay in cache instead of spanning the whole volume.
SLAB_VOXELS = 1 << 20


class LabelSums:
    """Per label value (0 .. the largest of ``top`` and the map's values) of ``label_map``: voxel
    counts per slice, per row and per column (shapes (slices, size), (rows, size), (columns, size)),
    and the float64 sums of ``array`` and of its square. Background (0) is left out of all of them
    (its entries stay 0).

    Computed a slab of a few slices at a time by :meth:`work`, which any number of threads may call
    at once: each takes the next slab until none is left. numpy releases the GIL, so a thread that
    has finished other work (the SEG) helps with the slabs that are left instead of waiting."""

    def __init__(self, label_map: np.ndarray, array: np.ndarray, top: int) -> None:
        self.label_map, self.array = label_map, array
        self.size = max(top, int(label_map.max(initial=0))) + 1
        _, n_rows, n_columns = label_map.shape
        self.step = max(1, min(SLAB_VOXELS // max(n_rows * n_columns, 1), SLAB_VOXELS // max(n_rows * self.size, 1)))
        self._slabs = itertools.count()  # next() is atomic: each slab is taken once
        self._parts: list[tuple[np.ndarray, ...]] = []
        self._lock = threading.Lock()

    def work(self) -> None:
        """Take slabs until none is left; add their sums to the result."""
        part = _label_sums(self.label_map, self.array, self.size, self.step, self._slabs)
        with self._lock:
            self._parts.append(part)

    def result(self) -> tuple[np.ndarray, ...]:
        """(per_slice, per_row, per_column, sums, squares), once every :meth:`work` has returned."""
        with self._lock:
            if not self._parts:
                raise RuntimeError("LabelSums.result() before any work()")
            first, *rest = self._parts
            return tuple(sum((part[i] for part in rest), start=first[i]) for i in range(len(first)))


def _label_sums(label_map: np.ndarray, array: np.ndarray, size: int, step: int,
                slabs: Iterator[int]) -> tuple[np.ndarray, ...]:
    """The sums of :class:`LabelSums` over the slabs (``step`` slices from ``step`` times a number
    taken from ``slabs``) this call takes.

    In each slab, only the labelled voxels: their flat indices give slice, row and column, and two
    integer histograms of ``label + size * position`` count them per (slice, row) and per column:
    exact integers, from which the centroid sums and the bounding boxes follow."""
    n_slices, n_rows, n_columns = label_map.shape
    per_slice = np.zeros((n_slices, size), np.int64)
    per_row = np.zeros((n_rows, size), np.int64)
    per_column = np.zeros((n_columns, size), np.int64)
    sums, squares = np.zeros(size), np.zeros(size)
    shift = n_columns.bit_length() - 1 if n_columns & (n_columns - 1) == 0 else None
    while (k0 := next(slabs) * step) < n_slices:
        k1 = min(n_slices, k0 + step)
        flat = label_map[k0:k1].reshape(-1)
        where = np.flatnonzero(flat != 0)
        if not where.size:
            continue
        values = flat[where].astype(np.intp)
        hu = array[k0:k1].reshape(-1)[where].astype(np.float64)
        if shift is not None:  # a power of two (512): a shift and a mask instead of a division
            line = where >> shift  # (k - k0) * n_rows + j
            column = where  # reused in place: i
            column &= n_columns - 1
        else:
            line = where // n_columns
            column = where
            column -= line * n_columns
        line *= size
        line += values
        by_line = np.bincount(line, minlength=(k1 - k0) * n_rows * size).reshape(k1 - k0, n_rows, size)
        per_slice[k0:k1] = by_line.sum(axis=1)
        per_row += by_line.sum(axis=0)
        column *= size
        column += values
        per_column += np.bincount(column, minlength=n_columns * size).reshape(n_columns, size)
        sums += np.bincount(values, weights=hu, minlength=size)
        hu *= hu
        squares += np.bincount(values, weights=hu, minlength=size)
    return per_slice, per_row, per_column, sums, squares


def _extent(counts: np.ndarray) -> tuple[int, int]:
    """The first and last index where ``counts`` is positive (it is somewhere)."""
    where = np.flatnonzero(counts)
    return int(where[0]), int(where[-1])
