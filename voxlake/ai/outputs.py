"""A segmentation run's outputs, back into the lake: the DICOM SEG (ingested, so it is a row of
``instances`` in the source study), surface meshes, the NIfTI label map on request, and the rows of
``meshes`` and ``segment_stats`` (tables documented in :mod:`voxlake.ai.tables`).

Where things go in a local lake::

    <lake>/dicom/derived/<Study>/<SEG Series>/<SEG SOP>.dcm        the SEG (fsynced, then ingested)
    <lake>/derived/<Study>/<Series>/<model>/<version>/<run_id>/     meshes (<label>.stl), labels.nii.gz

The SEG is landed with :class:`voxlake.net.store.LandingArea` and ingested under the landing area's
lock (``<lake>/dicom/.landing.lock``), as STOW-RS and C-STORE do, so a server's committer never
indexes it twice. Every output is computed, and its files written, before the first commit; then
``instances`` (the SEG), ``meshes``, ``segment_stats`` last: a ``segment_stats`` row means the series
is done by that model version. A failure before the commits leaves nothing in the tables; a crash
between them leaves at most a SEG and meshes that a rerun supersedes.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.uid import generate_uid

from voxlake.ai import tables
from voxlake.ai.meshes import surface_mesh, write_stl
from voxlake.ai.seg import check_label_map, present_labels, segmentation_file
from voxlake.ai.stats import LabelSums, segment_stats
from voxlake.errors import InvalidArgumentError, VoxlakeError

if TYPE_CHECKING:
    from voxlake.ai.volume import Volume

__all__ = ["Prepared", "RecordResult", "commit", "label_meshes", "prepare", "record", "record_error", "write_nifti"]

DERIVED_DICOM = ("dicom", "derived")
DERIVED_FILES = "derived"


@dataclass
class RecordResult:
    """What :func:`record` wrote: the SEG (file and UIDs), the rows appended, optional files, and
    seconds per step (``seg``, ``meshes``, ``nifti``, ``stats``, ``ingest``, ``tables``; ``stats``
    runs in a thread beside ``seg``)."""

    run_id: str
    seg_path: Path
    SOPInstanceUID: str
    SeriesInstanceUID: str
    stats: list[dict[str, Any]]
    meshes: list[dict[str, Any]] = field(default_factory=list)
    nifti_path: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)


def write_nifti(volume: Volume, label_map: np.ndarray, path: str | Path) -> Path:
    """Write ``label_map`` as NIfTI-1 (uint8 or uint16) with the volume's geometry in RAS, as NIfTI
    tools expect: axes (column i, row j, slice k), affine = diag(-1, -1, 1) · LPS affine."""
    try:
        import nibabel as nib
    except ImportError as exc:
        from voxlake.errors import MissingExtraError

        raise MissingExtraError("NIfTI output needs nibabel: pip install 'voxlake[ai]'") from exc
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine = lps_to_ras @ np.asarray(volume.affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    dtype = np.uint8 if label_map.max(initial=0) < 256 else np.uint16
    image = nib.Nifti1Image(np.ascontiguousarray(label_map.transpose(2, 1, 0)).astype(dtype), affine)
    image.header.set_xyzt_units("mm")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    image.header["descrip"] = f"voxlake labels {volume.SeriesInstanceUID}"[:79].encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def label_meshes(volume: Volume, label_map: np.ndarray, labels: dict[int, str], folder: str | Path, *,
                 step: int = 1) -> list[dict[str, Any]]:
    """One binary STL per label present, ``<folder>/<label>.stl``; returns the ``meshes`` columns
    that come from the mesh (``uri``, ``format``, ``label``, ``label_value``, counts, area, volume,
    bounding box, ``step``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for value in present_labels(label_map, labels):
        mesh = surface_mesh(label_map == value, volume.affine, step=step)
        path = write_stl(mesh, folder / f"{_safe(labels[value])}.stl",
                         header=f"voxlake {labels[value]} {volume.SeriesInstanceUID} LPS mm")
        lo, hi = mesh.bbox_mm
        rows.append({"label": labels[value], "label_value": int(value), "uri": str(path.resolve()),
                     "format": "stl", "vertices": len(mesh.vertices), "faces": len(mesh.faces),
                     "surface_mm2": mesh.surface_mm2, "volume_ml": mesh.volume_ml, "bbox_min_mm": lo,
                     "bbox_max_mm": hi, "step": step})
    return rows


@dataclass
class Prepared:
    """A run's outputs computed and their files written, nothing committed yet: what
    :func:`prepare` hands to :func:`commit` (picklable, so a Spark executor computes it and the
    driver commits it)."""

    run_id: str
    seg_bytes: bytes
    seg_uids: tuple[str, str, str]  # Study, Series, SOP Instance UIDs of the SEG
    stats: list[dict[str, Any]]
    meshes: list[dict[str, Any]]
    nifti_path: Path | None
    timings: dict[str, float]


def prepare(lake_root: str | Path, volume: Volume, label_map: np.ndarray, labels: dict[int, str], *,
            model_name: str, model_version: str, nifti: bool = False, meshes: bool = True, mesh_step: int = 2,
            transfer_syntax: str | None = None, present: list[int] | None = None) -> Prepared:
    """Compute every output of a run (the SEG as bytes, the statistics and mesh rows) and write its
    files (meshes, NIfTI) under ``<lake_root>/derived``; commit nothing. Raises the SEG's errors
    (:class:`~voxlake.ai.seg.EmptySegmentationError`, :class:`InvalidArgumentError`) before writing.
    ``present``: the label values that occur in ``label_map``, when the caller has counted them."""
    from voxlake.ingest.run import new_run_id

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    run_id = new_run_id()
    options = {} if transfer_syntax is None else {"transfer_syntax": transfer_syntax}
    check_label_map(volume, label_map, labels)  # a clear error before any counting
    if present is None:
        present = present_labels(label_map, labels)
    numbers = {v: n for n, v in enumerate(sorted(v for v in present if v > 0 and v in labels), start=1)}
    series_uid, sop_uid = generate_uid(), generate_uid()

    # The statistics' sums (numpy, which releases the GIL) in a thread beside the SEG (mostly
    # Python); once the SEG is built this thread takes the slabs that are left as well.
    stats: list[dict[str, Any]] = []
    sums = LabelSums(label_map, volume.array, max(labels, default=0)) if numbers else None
    with ThreadPoolExecutor(1, thread_name_prefix="voxlake-stats") as pool:
        future = pool.submit(sums.work) if sums is not None else None
        seg, data = segmentation_file(volume, label_map, labels, model_name=model_name, model_version=model_version,
                                      present=present, series_instance_uid=series_uid, sop_instance_uid=sop_uid,
                                      **options)
        timings["seg"] = time.perf_counter() - t0
        if sums is not None and future is not None:  # one is None when the other is
            sums.work()
            future.result()
            stats = segment_stats(volume, label_map, labels, model_name=model_name, model_version=model_version,
                                  seg_sop_instance_uid=sop_uid, seg_series_instance_uid=series_uid, run_id=run_id,
                                  segment_numbers=numbers, sums=sums)
            timings["stats"] = time.perf_counter() - t0

    lineage = {"SeriesInstanceUID": volume.SeriesInstanceUID, "StudyInstanceUID": volume.StudyInstanceUID,
               "model": model_name, "model_version": str(model_version),
               "SegmentationSOPInstanceUID": seg.SOPInstanceUID, "run_id": run_id,
               "created_at": datetime.now(UTC)}
    folder = Path(lake_root, DERIVED_FILES, volume.StudyInstanceUID, volume.SeriesInstanceUID, _safe(model_name),
                  _safe(str(model_version)), run_id)
    mesh_rows: list[dict[str, Any]] = []
    if meshes:
        t0 = time.perf_counter()
        mesh_rows = [lineage | row for row in label_meshes(volume, label_map, labels, folder, step=mesh_step)]
        timings["meshes"] = time.perf_counter() - t0
    nifti_path = None
    if nifti:
        t0 = time.perf_counter()
        nifti_path = write_nifti(volume, label_map, folder / "labels.nii.gz")
        timings["nifti"] = time.perf_counter() - t0
    return Prepared(run_id, data, (str(seg.StudyInstanceUID), str(seg.SeriesInstanceUID),
                                                str(seg.SOPInstanceUID)), stats, mesh_rows, nifti_path, timings)


def commit(lake: Any, prepared: Prepared) -> RecordResult:
    """Land and ingest the SEG, then append ``meshes`` and, last, ``segment_stats`` (the commit
    point: a row there means the series is done by that model version)."""
    timings = dict(prepared.timings)
    t0 = time.perf_counter()
    seg_path = _land_and_ingest(lake, prepared.seg_bytes, *prepared.seg_uids)
    timings["ingest"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tables.append(lake.uri, "meshes", prepared.meshes)
    tables.append(lake.uri, "segment_stats", prepared.stats)  # the commit point: last
    timings["tables"] = time.perf_counter() - t0
    return RecordResult(prepared.run_id, seg_path, prepared.seg_uids[2], prepared.seg_uids[1], prepared.stats,
                        prepared.meshes, prepared.nifti_path, timings)


def record(lake: Any, volume: Volume, label_map: np.ndarray, labels: dict[int, str], *, model_name: str,
           model_version: str, nifti: bool = False, meshes: bool = True, mesh_step: int = 2,
           transfer_syntax: str | None = None) -> RecordResult:
    """Write a run's outputs for one series into ``lake`` (a local :class:`voxlake.Lake`): the SEG,
    ingested into ``instances``; meshes and ``meshes`` rows (``meshes=True``); ``labels.nii.gz``
    (``nifti=True``); ``segment_stats`` rows last (:func:`prepare`, then :func:`commit`).
    ``mesh_step=2`` by default: a body mask of a 512x512x134 CT gives 0.5 M faces (27 MB of STL)
    instead of 2.2 M, at the same enclosed volume (within 0.5 %). Raises the SEG's errors
    (:class:`~voxlake.ai.seg.EmptySegmentationError`, :class:`InvalidArgumentError`) before
    writing anything, and :class:`VoxlakeError` when the SEG cannot be ingested (its file removed).

    >>> result = record(lake, volume, model.predict(volume), model.labels,  # doctest: +SKIP
    ...                 model_name=model.name, model_version=model.version)
    >>> lake.sql(f"SELECT label, volume_ml FROM segment_stats WHERE run_id = '{result.run_id}'")  # doctest: +SKIP
    """
    local_root(lake)
    return commit(lake, prepare(lake.uri, volume, label_map, labels, model_name=model_name,
                                model_version=model_version, nifti=nifti, meshes=meshes, mesh_step=mesh_step,
                                transfer_syntax=transfer_syntax))


def local_root(lake: Any) -> Path:
    """The lake's folder; outputs need a local lake (their files are fsynced, the SEG landed)."""
    from voxlake.lake import storage

    if not storage.is_local(lake.uri):
        raise InvalidArgumentError(f"{lake.uri}: segmentation outputs need a local lake (files are fsynced)")
    return Path(lake.uri)


def record_error(lake: Any, series_uid: str, model_name: str, model_version: str, error_class: str,
                 message: str, *, run_id: str | None = None) -> None:
    """Append one ``segment_errors`` row: ``model_name`` ``model_version`` failed on ``series_uid``.
    ``error_class`` is the exception's class name; ``message`` is kept to its first line."""
    first_line = (message.strip().splitlines() or [""])[0]
    tables.append(lake.uri, "segment_errors", [{
        "SeriesInstanceUID": series_uid, "model": model_name, "model_version": str(model_version),
        "error_class": error_class, "message": first_line, "run_id": run_id, "time": datetime.now(UTC)}])


def _land_and_ingest(lake: Any, data: bytes, study: str, series: str, sop: str) -> Path:
    """Land the SEG durably under ``dicom/derived`` and ingest it, holding the landing lock (shared
    with STOW-RS and the DIMSE committer); a SEG that is not indexed is removed and reported."""
    from voxlake.ingest.run import ingest_units
    from voxlake.ingest.sources import list_units
    from voxlake.net.store import LandingArea

    root = Path(lake.uri, *DERIVED_DICOM)
    with LandingArea(Path(lake.uri, DERIVED_DICOM[0])).lock():
        path, new = LandingArea(root).store(data, study, series, sop)
        try:
            # a file new under its name cannot be in the lake: no reading of every ingest_files row
            summary = ingest_units(lake, str(path), list(list_units(str(path))), workers=0,
                                   mode="full" if new else "incremental")
        except Exception:
            if new:
                path.unlink(missing_ok=True)
            raise
        if summary.errors or (new and not summary.indexed):
            if new:
                path.unlink(missing_ok=True)
            raise VoxlakeError(f"SEG {sop} of series {series}: {path} was not "
                               f"indexed (run {summary.run_id}: {summary.errors} errors); see ingest_errors")
    return path


def _safe(name: str) -> str:
    """A file name from a label or model name: letters, digits, ``._-``; nothing else escapes."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "_"
