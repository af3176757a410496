"""The lake tables of segmentation outputs: Delta tables beside ``instances``, appended by
:func:`voxlake.ai.outputs.record` and :func:`voxlake.ai.outputs.record_error`.

Every row names its source series (``SeriesInstanceUID``) and the model version (lineage).

**`segment_stats`** — one row per label present, per series, per run. Appended last by a run: a row
here is the commit point that says "this series is done by this model version".

| column | type | notes |
|---|---|---|
| `SeriesInstanceUID`, `StudyInstanceUID` | string | the source series (CT) and its study |
| `model`, `model_version` | string | e.g. `ct-tissue`, `1` |
| `label`, `label_value`, `SegmentNumber` | string, int32, int32 | the model's label name and value; the segment in the SEG |
| `voxels`, `volume_ml` | int64, double | voxel count and count × voxel volume |
| `mean_hu`, `std_hu` | double | of the volume (HU for CT) inside the label; population SD |
| `bbox_min_index`, `bbox_max_index` | list<int32> | inclusive voxel indices (k, j, i): slice along the normal, row, column |
| `bbox_min_mm`, `bbox_max_mm`, `centroid_mm` | list<double> | patient LPS mm (x, y, z) of voxel centres |
| `SegmentationSOPInstanceUID`, `SegmentationSeriesInstanceUID` | string | the SEG written by the run (in `instances`) |
| `run_id`, `created_at` | string, timestamp UTC | the run; shared with its `meshes` rows |

**`meshes`** — one row per label surface per run.

| column | type | notes |
|---|---|---|
| `SeriesInstanceUID`, `StudyInstanceUID`, `model`, `model_version`, `label`, `label_value` | | as in `segment_stats` |
| `uri`, `format` | string | the file (`<lake>/derived/<Study>/<Series>/<model>/<version>/<run_id>/<label>.stl`), `stl` |
| `vertices`, `faces` | int64 | of the mesh as computed (STL itself repeats vertices per face) |
| `surface_mm2`, `volume_ml` | double | area, and volume enclosed (divergence theorem) |
| `bbox_min_mm`, `bbox_max_mm` | list<double> | LPS mm of the vertices |
| `step` | int32 | marching cubes step (1 full resolution, 2 every second voxel) |
| `SegmentationSOPInstanceUID`, `run_id`, `created_at` | | as in `segment_stats` |

**`segment_errors`** — one row per series a model failed on: `SeriesInstanceUID`, `model`,
`model_version`, `error_class` (the exception's class name), `message` (one line), `run_id`,
`time` (timestamp UTC).

**`labels`** — one row per segment of each DICOM SEG of the lake (the model's own and the ones a
viewer such as OHIF stored through STOW-RS), appended by :func:`voxlake.ai.labels.sync_labels`.
Several annotators and versions per series are kept; the latest `final` wins for training
(:func:`voxlake.ai.labels.final_labels`).

| column | type | notes |
|---|---|---|
| `SeriesInstanceUID`, `StudyInstanceUID` | string | the source series the SEG segments, and its study |
| `SegmentationSOPInstanceUID`, `SegmentationSeriesInstanceUID` | string | the SEG (a row of `instances`) |
| `label_version` | int32 | 1, 2, … per source series, in the order its SEGs were indexed (then synced) |
| `author` | string | the SEG's ContentCreatorName, else OperatorsName, else Manufacturer (DICOM PN form, `Dr^Reader`) |
| `time` | timestamp UTC | the SEG's ContentDate + ContentTime (shifted by TimezoneOffsetFromUTC when given, else read as UTC); its `indexed_at` when absent |
| `status` | string | `original`: a model output (its SOP Instance UID is in `segment_stats`); `final`: a human correction |
| `model`, `model_version` | string | an original's own; for a final, those of the original it corrected; null when none |
| `corrects_sop_instance_uid` | string | a final's original: the latest original of the same series indexed before it; null for originals |
| `label`, `SegmentNumber` | string, int32 | the segment's SegmentLabel and number in the SEG |
| `voxels` | int64 | voxels of the segment on the source grid |
| `dice` | double | a final's segment against the original's segment of the same label (case-insensitive) on the source grid, 2 × overlap / (sum of both voxel counts), 1.0 when both are empty; null for originals and for labels the original lacks |
| `indexed_at`, `created_at` | timestamp UTC | when the SEG was indexed into `instances`; when the row was written |

**`al_served`** — one row per answer of :func:`voxlake.ai.active.next_case`: `SeriesInstanceUID`,
`StudyInstanceUID`, `strategy`, `score` (uncertainty only), `model`, `model_version`, `time` (UTC).
The `random` strategy weighs candidates by how long ago they were served.

**`al_scores`** — the `uncertainty` score of a series under a model version (mean flip entropy,
nats), computed once: `SeriesInstanceUID`, `model`, `model_version`, `score` (NaN when the series
could not be scored), `error` (why), `time`.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

__all__ = ["AL_SCORES", "AL_SERVED", "LABELS", "MESHES", "SEGMENT_ERRORS", "SEGMENT_STATS", "TABLES", "append"]

_TS = pa.timestamp("us", tz="UTC")
_IDS = [
    ("SeriesInstanceUID", pa.string()), ("StudyInstanceUID", pa.string()), ("model", pa.string()),
    ("model_version", pa.string()), ("label", pa.string()), ("label_value", pa.int32()),
]

SEGMENT_STATS = pa.schema([
    *_IDS, ("SegmentNumber", pa.int32()), ("voxels", pa.int64()), ("volume_ml", pa.float64()),
    ("mean_hu", pa.float64()), ("std_hu", pa.float64()),
    ("bbox_min_index", pa.list_(pa.int32())), ("bbox_max_index", pa.list_(pa.int32())),
    ("bbox_min_mm", pa.list_(pa.float64())), ("bbox_max_mm", pa.list_(pa.float64())),
    ("centroid_mm", pa.list_(pa.float64())),
    ("SegmentationSOPInstanceUID", pa.string()), ("SegmentationSeriesInstanceUID", pa.string()),
    ("run_id", pa.string()), ("created_at", _TS),
])

MESHES = pa.schema([
    *_IDS, ("uri", pa.string()), ("format", pa.string()), ("vertices", pa.int64()), ("faces", pa.int64()),
    ("surface_mm2", pa.float64()), ("volume_ml", pa.float64()),
    ("bbox_min_mm", pa.list_(pa.float64())), ("bbox_max_mm", pa.list_(pa.float64())), ("step", pa.int32()),
    ("SegmentationSOPInstanceUID", pa.string()), ("run_id", pa.string()), ("created_at", _TS),
])

SEGMENT_ERRORS = pa.schema([
    ("SeriesInstanceUID", pa.string()), ("model", pa.string()), ("model_version", pa.string()),
    ("error_class", pa.string()), ("message", pa.string()), ("run_id", pa.string()), ("time", _TS),
])

LABELS = pa.schema([
    ("SeriesInstanceUID", pa.string()), ("StudyInstanceUID", pa.string()),
    ("SegmentationSOPInstanceUID", pa.string()), ("SegmentationSeriesInstanceUID", pa.string()),
    ("label_version", pa.int32()), ("author", pa.string()), ("time", _TS), ("status", pa.string()),
    ("model", pa.string()), ("model_version", pa.string()), ("corrects_sop_instance_uid", pa.string()),
    ("label", pa.string()), ("SegmentNumber", pa.int32()), ("voxels", pa.int64()), ("dice", pa.float64()),
    ("indexed_at", _TS), ("created_at", _TS),
])

AL_SERVED = pa.schema([
    ("SeriesInstanceUID", pa.string()), ("StudyInstanceUID", pa.string()), ("strategy", pa.string()),
    ("score", pa.float64()), ("model", pa.string()), ("model_version", pa.string()), ("time", _TS),
])

AL_SCORES = pa.schema([
    ("SeriesInstanceUID", pa.string()), ("model", pa.string()), ("model_version", pa.string()),
    ("score", pa.float64()), ("error", pa.string()), ("time", _TS),
])

#: Table name → schema, for :mod:`voxlake.lake.sql` to expose (empty when the table is absent).
TABLES: dict[str, pa.Schema] = {
    "segment_stats": SEGMENT_STATS, "meshes": MESHES, "segment_errors": SEGMENT_ERRORS, "labels": LABELS,
    "al_served": AL_SERVED, "al_scores": AL_SCORES,
}


def append(lake_uri: str, table: str, rows: list[dict[str, Any]]) -> int | None:
    """Append ``rows`` to the Delta table ``table`` of the lake in one commit (created on first
    use); returns the new table version, or None when there was nothing to write."""
    from deltalake import DeltaTable, write_deltalake

    from voxlake.lake import storage

    if not rows:
        return None
    schema = TABLES[table]
    data = pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)
    uri = storage.join(lake_uri, table)
    options = storage.delta_storage_options(lake_uri)
    write_deltalake(uri, data, mode="append", schema_mode="merge", storage_options=options)
    return DeltaTable(uri, storage_options=options).version()
