"""Per-label statistics of a label map over its volume: the rows of the ``segment_stats`` table
(columns in :mod:`voxlake.ai.tables`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from voxlake.ai.seg import check_label_map

if TYPE_CHECKING:
    from voxlake.ai.volume import Volume

__all__ = ["segment_stats"]


def segment_stats(volume: Volume, label_map: np.ndarray, labels: dict[int, str], *, model_name: str,
                  model_version: str, seg_sop_instance_uid: str | None = None,
                  seg_series_instance_uid: str | None = None, run_id: str | None = None,
                  segment_numbers: dict[int, int] | None = None) -> list[dict[str, Any]]:
    """One row per label present in ``label_map``, in label order.

    ``mean_hu`` / ``std_hu`` are of ``volume.array`` (HU for CT; population standard deviation)
    inside the label. Bounding boxes are inclusive voxel indices (k, j, i) and the LPS mm extent of
    those voxels' centres (the box's 8 corners through the affine, so oblique volumes are right);
    ``centroid_mm`` is the mean voxel centre. ``segment_numbers`` maps a label value to its SEG
    segment number (default: 1, 2, … in label order, as :func:`voxlake.ai.seg.segmentation` numbers).
    """
    check_label_map(volume, label_map, labels)
    from scipy import ndimage

    size = max(max(labels, default=0), int(label_map.max(initial=0))) + 1
    n_slices, n_rows, n_columns = label_map.shape
    # One pass over the slices, every label at once: voxel counts per slice, and sums of HU, HU²,
    # row and column index per label (for mean, SD and centroid), each slice in float64 on its own,
    # never the whole volume at once.
    rows_grid = np.repeat(np.arange(n_rows, dtype=np.float64), n_columns)
    columns_grid = np.tile(np.arange(n_columns, dtype=np.float64), n_rows)
    per_slice = np.zeros((n_slices, size), np.int64)
    sums, squares, row_sums, column_sums = (np.zeros(size) for _ in range(4))
    for k in range(n_slices):
        flat = label_map[k].ravel()
        values = volume.array[k].ravel().astype(np.float64)
        per_slice[k] = np.bincount(flat, minlength=size)
        sums += np.bincount(flat, weights=values, minlength=size)
        squares += np.bincount(flat, weights=values * values, minlength=size)
        row_sums += np.bincount(flat, weights=rows_grid, minlength=size)
        column_sums += np.bincount(flat, weights=columns_grid, minlength=size)
    counts = per_slice.sum(axis=0)
    slice_sums = (per_slice * np.arange(n_slices)[:, None]).sum(axis=0)
    boxes = ndimage.find_objects(label_map, max_label=size - 1)  # bounding boxes, one C pass
    present = [v for v in sorted(labels) if 0 < v < size and counts[v] > 0]
    numbers = segment_numbers or {v: n for n, v in enumerate(present, start=1)}
    affine = np.asarray(volume.affine, dtype=np.float64)
    now = datetime.now(UTC)
    rows = []
    for value in present:
        n = int(counts[value])
        mean = sums[value] / n
        var = max(squares[value] / n - mean * mean, 0.0)
        box = boxes[value - 1]
        lo = [int(b.start) for b in box]
        hi = [int(b.stop) - 1 for b in box]
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
