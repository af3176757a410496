"""Labels from the viewer: every DICOM SEG of the lake as rows of the ``labels`` table
(documented in :mod:`voxlake.ai.tables`).

A model's run writes a SEG (:mod:`voxlake.ai.outputs`): its SOP Instance UID is in
``segment_stats``, so it is an ``original``. A reader corrects it in OHIF's segmentation mode and
saves; OHIF stores a new SEG through STOW-RS, which lands in ``instances`` like any SEG: a
``final``, which corrects the latest original of the same source series indexed before it. For
each segment, :func:`sync_labels` writes the voxel count and, for a final, the Dice coefficient
against the original's segment of the same label, both on the source series' grid.

Decoding a SEG onto the source grid (the :class:`~voxlake.ai.volume.Volume` of
:func:`~voxlake.ai.volume.load_series`, axes (k, j, i)) goes by the SEG's own references first:
highdicom's ``get_pixels_by_source_instance`` (``get_pixels_by_source_frame`` for one enhanced
multi-frame source), asked for the volume's slices in order. That is an exact match of UIDs, with
no tolerance on positions, and highdicom handles BINARY bit packing, FRACTIONAL and LABELMAP, and
frames left out because they are empty (``assert_missing_frames_are_empty``). Spatial locations
are taken as preserved when the SEG does not say (``ignore_spatial_locations``: highdicom refuses
by default when SpatialLocationsPreserved is absent, and writers often leave it out); instead,
the frame size must equal the source's. A SEG without per-frame source references is placed by
ImagePositionPatient: each frame must lie on a slice of the volume (within 5 % of a voxel), in
its orientation. ``get_volume`` is not used: it returns the SEG on its own grid (spanning only
the frames it holds), which would then have to be matched to the source's grid anyway.

The sync writes all its rows in one commit, so a crash leaves nothing half-written; a SEG that
cannot be read or matched is reported with a one-line reason and not written, and the next sync
tries it again. So is a SEG made by voxlake (Manufacturer ``voxlake``) that ``segment_stats`` does
not name yet: :func:`~voxlake.ai.outputs.commit` ingests the SEG before it appends the statistics,
and between the two the SEG must not be taken for a reader's correction. Syncs of a local lake are
serialised by ``<lake>/.labels.lock``, a file of its own: a sync never takes the landing area's
lock, so a STOW-RS handler calls it after its commit without blocking other stores for the
seconds a sync takes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voxlake.ai import tables
from voxlake.ai.seg import MANUFACTURER
from voxlake.errors import VoxlakeError

if TYPE_CHECKING:
    from voxlake.ai.volume import Volume
    from voxlake.lake.lake import Lake

__all__ = ["LabelError", "LabelSync", "decode_masks", "final_labels", "sync_labels"]

TABLE = "labels"
ORIGINAL, FINAL = "original", "final"
LOCK_NAME = ".labels.lock"
#: A frame placed by position must lie within this fraction of a voxel of a slice of the volume.
POSITION_TOLERANCE = 0.05


class LabelError(VoxlakeError):
    """A SEG that cannot be read, or matched to a source series of the lake."""


@dataclass
class LabelSync:
    """What :func:`sync_labels` did: the rows appended (``rows``), the SEGs they came from
    (``synced``), the SEGs not written (``errors``: ``{"SOPInstanceUID", "reason"}``, reason one
    line), the new table version (None when nothing was written) and the seconds taken."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    synced: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    table_version: int | None = None
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (for the CLI and the server): counts, SEGs, errors."""
        return {"synced": len(self.synced), "rows": len(self.rows), "errors": len(self.errors),
                "segmentations": self.synced, "failed": self.errors, "table_version": self.table_version,
                "seconds": round(self.seconds, 3)}


@dataclass
class _Seg:
    """A SEG instance of the lake, as ``instances`` lists it."""

    sop: str
    series: str
    uri: str
    indexed_at: datetime


def sync_labels(lake: Lake) -> LabelSync:
    """Add the SEGs of ``instances`` (``Modality = 'SEG'``) that ``labels`` lacks to ``labels``,
    in one commit; returns a :class:`LabelSync`. Idempotent: a second sync appends nothing.

    >>> result = sync_labels(lake)  # doctest: +SKIP
    >>> result.summary()["errors"], lake.sql("SELECT status, label, dice FROM labels").fetchall()  # doctest: +SKIP
    """
    start = time.perf_counter()
    with _sync_lock(lake):
        result = _sync(lake)
    result.seconds = time.perf_counter() - start
    return result


def final_labels(lake: Lake) -> list[dict[str, Any]]:
    """The rows of the latest ``final`` SEG of each source series (highest ``label_version``):
    what training uses. Empty when there is no ``labels`` table or no final yet."""
    if not _has_table(lake, TABLE):
        return []
    result = lake.sql(
        "WITH latest AS (SELECT SeriesInstanceUID, max(label_version) AS v FROM labels WHERE status = 'final' "
        "GROUP BY SeriesInstanceUID) "
        "SELECT l.* FROM labels l JOIN latest ON l.SeriesInstanceUID = latest.SeriesInstanceUID "
        "AND l.label_version = latest.v AND l.status = 'final' ORDER BY l.SeriesInstanceUID, l.SegmentNumber")
    return result.arrow().to_pylist()


# -- the sync ---------------------------------------------------------------------------------------------


def _sync(lake: Lake) -> LabelSync:
    result = LabelSync()
    segs = [_Seg(*row) for row in lake.sql(
        "SELECT SOPInstanceUID, SeriesInstanceUID, uri, indexed_at FROM instances WHERE Modality = 'SEG' "
        "AND SOPInstanceUID IS NOT NULL ORDER BY indexed_at, SOPInstanceUID").fetchall()]
    done: set[str] = set()
    versions: dict[str, int] = {}
    if _has_table(lake, TABLE):
        done = {r[0] for r in lake.sql("SELECT DISTINCT SegmentationSOPInstanceUID FROM labels").fetchall()}
        versions = dict(lake.sql("SELECT SeriesInstanceUID, max(label_version) FROM labels "
                                 "GROUP BY SeriesInstanceUID").fetchall())
    todo = [s for s in segs if s.sop not in done]
    if not todo:
        return result
    # model outputs: SOP → (source series, model, version)
    outputs: dict[str, tuple[str, str, str]] = {}
    if _has_table(lake, "segment_stats"):
        outputs = {r[0]: (r[1], r[2], r[3]) for r in lake.sql(
            "SELECT DISTINCT SegmentationSOPInstanceUID, SeriesInstanceUID, model, model_version "
            "FROM segment_stats WHERE SegmentationSOPInstanceUID IS NOT NULL").fetchall()}
    by_sop = {s.sop: s for s in segs}
    now = datetime.now(UTC)

    def report(seg: _Seg, exc: Exception) -> None:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        result.errors.append({"SOPInstanceUID": seg.sop, "reason": f"SEG {seg.sop}: {reason}"})

    # first the headers: which series each SEG segments; then one series at a time, so that only
    # its volume and its SEGs' masks are in memory (a backlog of many series stays small)
    groups: dict[str, list[_Seg]] = {}
    for seg in todo:
        try:
            groups.setdefault(_source_series(lake, _read(seg, pixels=False)), []).append(seg)
        except Exception as exc:  # one SEG never stops the sync: it is reported and tried again next time
            report(seg, exc)
    for source, group in groups.items():
        volume = _load(lake, source)
        masks: dict[str, tuple[Any, dict[int, np.ndarray]]] = {}  # SOP → (dataset, segment masks)

        def decoded(seg: _Seg, volume: Volume | LabelError = volume,
                    masks: dict[str, tuple[Any, dict[int, np.ndarray]]] = masks) -> tuple[Any, dict[int, np.ndarray]]:
            if seg.sop not in masks:
                if isinstance(volume, LabelError):
                    raise volume
                ds = _read(seg)
                masks[seg.sop] = (ds, decode_masks(ds, volume))
            return masks[seg.sop]

        for seg in group:
            try:
                ds, found = decoded(seg)
                if seg.sop not in outputs and str(ds.get("Manufacturer", "")) == MANUFACTURER:
                    raise LabelError("a voxlake model output without segment_stats rows (its run has not "
                                     "committed them yet); tried again by the next sync")
                if seg.sop in outputs and outputs[seg.sop][0] != source:
                    raise LabelError(f"segments series {source}, but segment_stats says {outputs[seg.sop][0]}")
                rows = _rows(ds, seg, source, found, outputs, by_sop, decoded)
            except Exception as exc:  # one SEG never stops the sync: it is reported and tried again next time
                report(seg, exc)
                masks.pop(seg.sop, None)
                continue
            versions[source] = versions.get(source, 0) + 1
            for row in rows:
                row.update(label_version=versions[source], indexed_at=seg.indexed_at, created_at=now)
            result.rows.extend(rows)
            result.synced.append(seg.sop)
        del volume, masks
    order = {seg.sop: n for n, seg in enumerate(segs)}
    result.synced.sort(key=order.__getitem__)
    result.errors.sort(key=lambda e: order[e["SOPInstanceUID"]])
    result.table_version = tables.append(lake.uri, TABLE, result.rows)
    return result


def _rows(ds: Any, seg: _Seg, source: str, found: dict[int, np.ndarray], outputs: dict[str, tuple[str, str, str]],
          by_sop: dict[str, _Seg], decoded: Any) -> list[dict[str, Any]]:
    common = {"SeriesInstanceUID": source, "StudyInstanceUID": str(ds.get("StudyInstanceUID", "")) or None,
              "SegmentationSOPInstanceUID": seg.sop, "SegmentationSeriesInstanceUID": seg.series,
              "author": _author(ds), "time": _content_time(ds) or seg.indexed_at}
    original: dict[str, np.ndarray] | None = None
    if seg.sop in outputs:
        _, model, version = outputs[seg.sop]
        common |= {"status": ORIGINAL, "model": model, "model_version": version, "corrects_sop_instance_uid": None}
    else:
        # the latest original of the same source series indexed before this SEG
        key = (seg.indexed_at, seg.sop)
        candidates = [by_sop[sop] for sop, (series, _, _) in outputs.items()
                      if series == source and sop in by_sop and (by_sop[sop].indexed_at, sop) < key]
        corrected = max(candidates, key=lambda s: (s.indexed_at, s.sop), default=None)
        common |= {"status": FINAL, "model": None, "model_version": None, "corrects_sop_instance_uid": None}
        if corrected is not None:
            _, model, version = outputs[corrected.sop]
            common |= {"model": model, "model_version": version, "corrects_sop_instance_uid": corrected.sop}
            try:
                original_ds, original_masks = decoded(corrected)
            except Exception as exc:
                raise LabelError(f"its original {corrected.sop} cannot be decoded: {exc}") from exc
            original = {_key(_segment_label(original_ds, n)): m for n, m in original_masks.items()}
    rows = []
    for number, mask in sorted(found.items()):
        label = _segment_label(ds, number)
        dice = None
        if original is not None and _key(label) in original:
            dice = _dice(mask, original[_key(label)])
        rows.append(common | {"label": label, "SegmentNumber": number, "voxels": int(np.count_nonzero(mask)),
                              "dice": dice})
    return rows


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / total


def _key(label: str) -> str:
    return label.strip().casefold()


def _segment_label(ds: Any, number: int) -> str:
    for item in ds.get("SegmentSequence", []):
        if int(item.get("SegmentNumber", -1)) == number:
            return str(item.get("SegmentLabel", "") or f"segment {number}")
    return f"segment {number}"


def _author(ds: Any) -> str | None:
    for keyword in ("ContentCreatorName", "OperatorsName", "Manufacturer"):
        value = ds.get(keyword)
        if value:
            return str(value)
    return None


def _content_time(ds: Any) -> datetime | None:
    """ContentDate + ContentTime as UTC: shifted by TimezoneOffsetFromUTC when given, else taken
    as UTC (DICOM times are local, and a SEG rarely says which zone)."""
    date, clock = str(ds.get("ContentDate", "") or "").strip(), str(ds.get("ContentTime", "") or "").strip()
    if len(date) != 8 or not date.isdigit():
        return None
    try:
        digits, _, fraction = clock.replace(":", "").partition(".")
        digits = (digits + "000000")[:6] if digits.isdigit() else "000000"
        micros = int((fraction + "000000")[:6]) if fraction.isdigit() else 0
        value = datetime.strptime(date + digits, "%Y%m%d%H%M%S").replace(microsecond=micros)
        zone = UTC
        offset = str(ds.get("TimezoneOffsetFromUTC", "") or "").strip()
        if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
            delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:]))
            zone = timezone(-delta if offset[0] == "-" else delta)
        return value.replace(tzinfo=zone).astimezone(UTC)
    except ValueError:
        return None


# -- reading a SEG and its source -------------------------------------------------------------------------


def _read(seg: _Seg, *, pixels: bool = True) -> Any:
    import pydicom

    from voxlake.dicom.frames import open_uri

    try:
        with open_uri(seg.uri) as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=not pixels)
    except Exception as exc:
        raise LabelError(f"cannot read {seg.uri}: {exc}") from exc
    if "SegmentSequence" not in ds:
        raise LabelError(f"{seg.uri} is not a Segmentation (no SegmentSequence)")
    if pixels and "PixelData" not in ds:
        raise LabelError(f"{seg.uri} is not a Segmentation with Pixel Data")
    return ds


def _source_series(lake: Lake, ds: Any) -> str:
    """The one image series of the lake that ``ds`` segments: from ReferencedSeriesSequence, else
    from the SOP instances its frames reference, mapped through ``instances``."""
    referenced = [str(item.get("SeriesInstanceUID")) for item in ds.get("ReferencedSeriesSequence", [])
                  if item.get("SeriesInstanceUID")]
    found = _in_lake(lake, "SeriesInstanceUID", referenced)
    if not found:
        sops = sorted(_referenced_sops(ds))
        found = sorted({s for s, in _query(lake, "SELECT DISTINCT SeriesInstanceUID FROM instances WHERE "
                                           "Modality <> 'SEG' AND SOPInstanceUID IN ", sops)})
    if len(found) > 1:
        raise LabelError(f"references {len(found)} series of the lake ({', '.join(found)}); one is expected")
    if not found:
        shown = ", ".join(referenced) or "none"
        raise LabelError(f"its source is not in the lake (referenced series: {shown})")
    return found[0]


def _in_lake(lake: Lake, column: str, values: list[str]) -> list[str]:
    rows = _query(lake, f"SELECT DISTINCT {column} FROM instances WHERE Modality <> 'SEG' AND {column} IN ", values)
    return sorted(r[0] for r in rows)


def _query(lake: Lake, prefix: str, values: list[str]) -> list[tuple[Any, ...]]:
    if not values:
        return []
    con = lake.connect()
    return con.execute(prefix + "(" + ", ".join("?" for _ in values) + ")", values).fetchall()


def _referenced_sops(ds: Any) -> set[str]:
    sops: set[str] = set()
    for series in ds.get("ReferencedSeriesSequence", []):
        sops.update(str(i.ReferencedSOPInstanceUID) for i in series.get("ReferencedInstanceSequence", [])
                    if "ReferencedSOPInstanceUID" in i)
    for frame in ds.get("PerFrameFunctionalGroupsSequence", []):
        for derivation in frame.get("DerivationImageSequence", []):
            sops.update(str(i.ReferencedSOPInstanceUID) for i in derivation.get("SourceImageSequence", [])
                        if "ReferencedSOPInstanceUID" in i)
    return sops


def _load(lake: Lake, series: str) -> Volume | LabelError:
    from voxlake.ai.volume import load_series

    try:
        return load_series(lake, series)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return LabelError(f"its source series {series} cannot be loaded as a volume: {first}")


def decode_masks(ds: Any, volume: Volume) -> dict[int, np.ndarray]:
    """Segment number → boolean mask (``volume.shape``, axes (k, j, i)) of the SEG ``ds`` on the
    grid of ``volume``, its source series: by the frames' source references, else by their
    positions (see the module docstring). Raises :class:`LabelError` when it does not fit."""
    import highdicom as hd

    rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if (rows, columns) != volume.shape[1:]:
        raise LabelError(f"frames of {rows}x{columns} do not fit series {volume.SeriesInstanceUID} "
                         f"of {volume.shape[1]}x{volume.shape[2]}")
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    except Exception as exc:
        # OHIF 3.13's Label Map SEG has no FrameContentSequence, which highdicom needs for its
        # dimension index; each frame still names its source image and its position.
        # (a Label Map SEG may describe its background as segment 0: not a label)
        numbers = [n for item in ds.get("SegmentSequence") or [] if (n := int(item.SegmentNumber)) > 0]
        if not numbers:
            raise LabelError(f"highdicom cannot read it ({exc}) and it has no segments") from exc
        try:
            return _by_frames(ds, volume, numbers)
        except LabelError as fallback:
            raise LabelError(f"highdicom cannot read it ({exc}); frame by frame: {fallback}") from exc
    numbers = [int(n) for n in seg.segment_numbers if int(n) > 0]
    if not numbers:
        raise LabelError("it has no segments")
    if getattr(seg, "_has_frame_references", False):
        return _by_reference(seg, volume, numbers)
    return _by_frames(ds, volume, numbers)


def _by_reference(seg: Any, volume: Volume, numbers: list[int]) -> dict[int, np.ndarray]:
    """By the SEG's frame references (DerivationImageSequence / SourceImageSequence)."""
    sops = [sop for sop, _ in volume.sources]
    referenced = {str(uid) for _, _, uid in seg.get_source_image_uids()}
    if not referenced & set(sops):
        raise LabelError(f"its frames reference none of the instances of series {volume.SeriesInstanceUID}")
    options = {"ignore_spatial_locations": True, "assert_missing_frames_are_empty": True,
               "skip_overlap_checks": True}
    single = len(set(sops)) == len(sops)
    if not single and len(set(sops)) > 1:
        raise LabelError(f"series {volume.SeriesInstanceUID} mixes multi-frame instances; a SEG is placed on "
                         "single-frame slices or on the frames of one instance")
    out = {}
    for number in numbers:
        try:
            if single:
                pixels = seg.get_pixels_by_source_instance(sops, segment_numbers=[number], **options)
            else:  # one enhanced multi-frame source: by its frame numbers
                pixels = seg.get_pixels_by_source_frame(sops[0], [frame for _, frame in volume.sources],
                                                        segment_numbers=[number], **options)
        except Exception as exc:  # highdicom's ValueError, KeyError, RuntimeError
            raise LabelError(f"segment {number} cannot be placed on series {volume.SeriesInstanceUID}: "
                             f"{exc}") from exc
        out[number] = np.asarray(pixels)[..., 0] >= 0.5
    return out


def _by_frames(ds: Any, volume: Volume, numbers: list[int]) -> dict[int, np.ndarray]:
    """Frame by frame, for a SEG highdicom does not place: on the slice of the source image (and
    frame) the frame's DerivationImageSequence names, else by its ImagePositionPatient."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    slices = {(sop, int(frame)): index for index, (sop, frame) in enumerate(volume.sources)}

    def source_slice(item: Any) -> int | None:
        for derivation in item.get("DerivationImageSequence") or []:
            for source in derivation.get("SourceImageSequence") or []:
                frame = source.get("ReferencedFrameNumber")
                key = (str(source.get("ReferencedSOPInstanceUID", "")), int(frame) if frame else 1)
                if key in slices:
                    return slices[key]
        return None

    def find(item: Any, sequence: str, keyword: str) -> Any:
        for group in (item, shared):
            if group is not None and group.get(sequence) and group[sequence][0].get(keyword) is not None:
                return group[sequence][0].get(keyword)
        return None

    if not per_frame:
        raise LabelError("it has neither frame references nor Per-Frame Functional Groups")
    row, column = volume.affine[:3, 2], volume.affine[:3, 1]  # along a row (i), down a column (j)
    want = np.concatenate([row / np.linalg.norm(row), column / np.linalg.norm(column)])
    inverse = np.linalg.inv(np.asarray(volume.affine, dtype=np.float64))
    kind = str(ds.get("SegmentationType", "BINARY")).upper()
    pixels = ds.pixel_array
    pixels = pixels.reshape((-1, *volume.shape[1:]))
    threshold = float(ds.get("MaximumFractionalValue", 1) or 1) / 2 if kind == "FRACTIONAL" else 0.5
    out = {n: np.zeros(volume.shape, bool) for n in numbers}
    if len(pixels) != len(per_frame):
        raise LabelError(f"it has {len(pixels)} frames of pixels for {len(per_frame)} Per-Frame Functional Groups")
    for index, item in enumerate(per_frame):
        slice_index = source_slice(item)
        if slice_index is None:
            slice_index = _slice_at(find(item, "PlaneOrientationSequence", "ImageOrientationPatient"),
                                    find(item, "PlanePositionSequence", "ImagePositionPatient"),
                                    want, inverse, volume, index)
        frame = pixels[index]
        if kind == "LABELMAP":
            for n in numbers:
                out[n][slice_index] |= frame == n
            continue
        number = find(item, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        if number is None or int(number) not in out:
            raise LabelError(f"frame {index + 1} names no segment of the SEG")
        out[int(number)][slice_index] |= frame >= threshold
    return out


def _slice_at(orientation: Any, position: Any, want: np.ndarray, inverse: np.ndarray, volume: Volume,
              index: int) -> int:
    """The volume's slice a frame lies on by its plane position (within 5 % of a voxel)."""
    if orientation is None or position is None or len(position) != 3:
        raise LabelError(f"frame {index + 1} has no frame reference and no plane position")
    if not np.allclose([float(v) for v in orientation], want, atol=1e-3):
        raise LabelError(f"frame {index + 1} is not in the orientation of series {volume.SeriesInstanceUID}")
    k, j, i = (inverse @ np.array([*map(float, position), 1.0]))[:3]
    slice_index = round(float(k))
    if (abs(j) > POSITION_TOLERANCE or abs(i) > POSITION_TOLERANCE
            or abs(k - slice_index) > POSITION_TOLERANCE or not 0 <= slice_index < volume.shape[0]):
        raise LabelError(f"frame {index + 1} at {list(map(float, position))} mm lies on no slice of series "
                         f"{volume.SeriesInstanceUID}")
    return slice_index


# -- lake helpers -----------------------------------------------------------------------------------------


def _has_table(lake: Lake, name: str) -> bool:
    from voxlake.lake.sql import extra_tables

    return name in extra_tables(lake.uri)


@contextlib.contextmanager
def _sync_lock(lake: Lake) -> Iterator[None]:
    """One sync at a time per local lake (``flock`` on ``<lake>/.labels.lock``), so two syncs
    never write the same SEG twice or give two SEGs one label_version. Remote lakes: no lock."""
    from voxlake.lake import storage

    if not storage.is_local(lake.uri):
        yield
        return
    root = Path(storage.normalize(lake.uri))
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
