"""MONAI Label's REST API, the part its clients use, served over the lake (the ``ai`` extra), so
3D Slicer's MONAI Label module and the MONAI Label OHIF plugin work against ``voxlake serve``.
See docs/monailabel.md for the table of endpoints, formats and what is not covered.

Ids: an *image* is a series of the lake, its id the SeriesInstanceUID (as MONAI Label's own
DICOMweb datastore names images); a *model* is a registry name (``ct-tissue``; ``name`` resolves
to the champion, else the latest version; ``name@alias`` and ``name:version`` work too).

* ``GET /info/``: the app: ``models`` (type segmentation, labels name → value, dimension 3),
  ``labels``, ``strategies`` (first, random, uncertainty), ``trainers`` (network models),
  ``train_stats`` and ``datastore`` (as ``GET /datastore/?output=stats``).
* ``POST /infer/{model}?image=<series>[&output=all|image|json|dicom_seg]``, form field ``params``
  (JSON): segments the series (:func:`voxlake.ai.segment.segment_series`; its DICOM SEG is written
  into the lake) and answers, by ``output``: ``all`` (the default) multipart/form-data with
  ``params`` (JSON) and the label map as a file (``params.result_extension`` ``.nrrd``, ``.nii.gz``
  (default) or ``.nii``); ``image`` the label map alone; ``json`` the params alone;
  ``dicom_seg`` the DICOM SEG written into the lake.
* ``POST /activelearning/{strategy}`` (JSON params): the next series to label
  (:func:`voxlake.ai.active.next_case`) as ``{"id": <series>, ...}``; ``{}`` when none is left.
* ``GET /datastore/?output=stats|all|train``: images (series) and their labels (table ``labels``).
* ``GET /datastore/image?image=<series>``: the series as a NIfTI volume (what Slicer loads).
* ``PUT /datastore/label?image=<series>[&tag=final]``, multipart with the ``label`` file and
  ``params`` (JSON: ``label_info`` ``[{"name", "idx"}]``): a DICOM SEG, or a label map (NRRD,
  NIfTI, or OHIF's raw ``.bin``) on the series' grid, which becomes a DICOM SEG; stored as STOW-RS
  stores (:func:`voxlake.server.stow_store.store_instances`) and synced into ``labels`` as a
  ``final`` (:func:`voxlake.ai.labels.sync_labels`).
* ``POST /train/{model}``, ``POST /train/`` (every trainer), ``GET /train/`` (status): fine-tuning
  on the final labels (``voxlake.ai.finetune.finetune_from_labels``) in a background thread.

Everything else of MONAI Label's API that a client may call answers 501 naming what is missing.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.

import datetime as dt
import gzip
import importlib
import io
import json
import re
import threading
import time
import uuid
from typing import Any

from voxlake.server import urls
from voxlake.server.ai import model_error
from voxlake.server.errors import DicomWebError, bad_request, not_found

#: Modalities of series that are not images (a label, a report, a presentation state...).
NON_IMAGE = ("SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "DOC", "FID", "PLAN")
STRATEGIES = {
    "first": "The first series without a final label, oldest indexed first",
    "random": "A random series without a final label, weighted toward those not served recently",
    "uncertainty": "The series a network model is least sure about (mean flip entropy); params.model names it",
}
OUTPUTS = ("all", "image", "json", "dicom_seg")
LABEL_EXTENSIONS = (".nrrd", ".nii.gz", ".nii")
#: Manufacturer of the SEGs made here from uploaded label maps (not voxlake's own: they are finals).
MANUFACTURER = "voxlake MONAI Label API"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def not_implemented(what: str) -> DicomWebError:
    return DicomWebError(501, f"{what} is not supported by voxlake's MONAI Label API (see docs/monailabel.md)")


# -- requests ------------------------------------------------------------------------------------------------


def parse_form(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name → (filename or None, bytes)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise bad_request("multipart/form-data without a boundary")
    delimiter = b"--" + match.group(1).encode("latin-1")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for piece in body.split(delimiter)[1:]:
        if piece.startswith(b"--"):
            break
        head, sep, data = piece.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise bad_request("broken multipart/form-data: a part without headers")
        data = data.removesuffix(b"\r\n")
        disposition = ""
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-disposition":
                disposition = value
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        if name:
            fields[name.group(1)] = (filename.group(1) if filename else None, data)
    return fields


async def read_request(request: Any) -> tuple[dict[str, Any], dict[str, tuple[str | None, bytes]]]:
    """(params, files) of a request: ``params`` from a form field (JSON text) or a JSON body."""
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    files: dict[str, tuple[str | None, bytes]] = {}
    params: Any = {}
    if content_type.startswith("multipart/form-data"):
        fields = parse_form(body, content_type)
        text = fields.pop("params", (None, b""))[1].decode("utf-8", "replace").strip()
        params = _json(text or "{}", "params")
        files = {k: v for k, v in fields.items() if v[0] is not None or k in ("label", "file")}
    elif body.strip():
        params = _json(body.decode("utf-8", "replace"), "the body")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise bad_request("params must be a JSON object")
    return params, files


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise bad_request(f"{what} is not JSON: {exc}") from exc


# -- the lake as a MONAI Label datastore ----------------------------------------------------------------------


def _not_images() -> str:
    return ", ".join(f"'{m}'" for m in NON_IMAGE)


def image_rows(state: Any, series: str | None = None) -> list[dict[str, Any]]:
    """The image series (one row each: UIDs, PatientID, Modality, StudyDate, StudyTime), or one."""
    where = "SeriesInstanceUID = ?" if series else "SeriesInstanceUID IS NOT NULL"
    rows = state.cursor().execute(
        "SELECT SeriesInstanceUID, any_value(StudyInstanceUID), any_value(PatientID), any_value(Modality), "
        "any_value(StudyDate), any_value(StudyTime), min(indexed_at) AS t, count(*) FROM instances "
        f"WHERE {where} AND coalesce(Modality, '') NOT IN ({_not_images()}) GROUP BY 1 ORDER BY t, 1",
        [series] if series else []).fetchall()
    return [{"SeriesInstanceUID": r[0], "StudyInstanceUID": r[1], "PatientID": r[2] or "", "Modality": r[3] or "",
             "StudyDate": r[4].strftime("%Y%m%d") if r[4] else "", "StudyTime": str(r[5] or ""),
             "instances": int(r[7])} for r in rows]


def image_info(request: Any, state: Any, row: dict[str, Any]) -> dict[str, Any]:
    """An image's info as MONAI Label's DICOMweb datastore gives it (plus ``name``, the file name
    Slicer saves the downloaded volume as)."""
    base = urls.dicomweb_base(request, state.settings.dicomweb_root)
    return {"SeriesInstanceUID": row["SeriesInstanceUID"], "StudyInstanceUID": row["StudyInstanceUID"],
            "PatientID": row["PatientID"], "Modality": row["Modality"], "StudyDate": row["StudyDate"],
            "StudyTime": row["StudyTime"],
            "RetrieveURL": base + urls.series_path(row["StudyInstanceUID"], row["SeriesInstanceUID"]),
            "name": f"{row['SeriesInstanceUID']}.nii.gz"}


def label_rows(lake: Any) -> list[dict[str, Any]]:
    """The rows of ``labels`` (none when the table does not exist yet)."""
    from voxlake.errors import QueryError

    try:
        return lake.sql("SELECT SeriesInstanceUID, SegmentationSOPInstanceUID, SegmentationSeriesInstanceUID, "
                        "label_version, author, time, status, model, model_version, label, SegmentNumber, "
                        "voxels, dice FROM labels ORDER BY SeriesInstanceUID, label_version, SegmentNumber"
                        ).arrow().to_pylist()
    except QueryError:
        return []


def latest_labels(lake: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """series → status (``final``, ``original``) → the latest SEG of that status (its segments)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in label_rows(lake):
        tags = out.setdefault(row["SeriesInstanceUID"], {})
        current = tags.get(row["status"])
        if current is None or current["label_version"] < row["label_version"]:
            current = tags[row["status"]] = {
                "SOPInstanceUID": row["SegmentationSOPInstanceUID"],
                "SeriesInstanceUID": row["SegmentationSeriesInstanceUID"], "label_version": row["label_version"],
                "author": row["author"], "time": row["time"].isoformat() if row["time"] else None,
                "model": row["model"], "model_version": row["model_version"], "segments": []}
        if current["SOPInstanceUID"] == row["SegmentationSOPInstanceUID"]:
            current["segments"].append({"label": row["label"], "SegmentNumber": row["SegmentNumber"],
                                        "voxels": row["voxels"], "dice": row["dice"]})
    return out


def datastore_stats(state: Any) -> dict[str, Any]:
    images = {r["SeriesInstanceUID"] for r in image_rows(state)}
    labels = {s: t for s, t in latest_labels(state.lake).items() if s in images}
    tags: dict[str, int] = {}
    for by_tag in labels.values():
        for tag in by_tag:
            tags[tag] = tags.get(tag, 0) + 1
    return {"total": len(images), "completed": sum(1 for t in labels.values() if "final" in t), "label_tags": tags}


# -- label maps: read, place on the series' grid, write ---------------------------------------------------------

_NRRD_TYPES = {
    "signed char": "i1", "int8": "i1", "int8_t": "i1", "uchar": "u1", "unsigned char": "u1", "uint8": "u1",
    "uint8_t": "u1", "short": "i2", "short int": "i2", "signed short": "i2", "signed short int": "i2",
    "int16": "i2", "int16_t": "i2", "ushort": "u2", "unsigned short": "u2", "unsigned short int": "u2",
    "uint16": "u2", "uint16_t": "u2", "int": "i4", "signed int": "i4", "int32": "i4", "int32_t": "i4",
    "uint": "u4", "unsigned int": "u4", "uint32": "u4", "uint32_t": "u4", "longlong": "i8", "long long": "i8",
    "int64": "i8", "int64_t": "i8", "ulonglong": "u8", "unsigned long long": "u8", "uint64": "u8",
    "uint64_t": "u8", "float": "f4", "double": "f8",
}


class LabelFileError(Exception):
    """An uploaded label the server cannot use: ``status`` 415 (format) or 422 (content)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def read_nrrd(data: bytes) -> tuple[Any, Any, dict[int, str]]:
    """(array, affine, names) of an attached-header NRRD: the array indexed (axis 2, axis 1, axis 0)
    (NRRD's first axis is the fastest), the affine from those indices to LPS mm, and the segment
    names a Slicer ``.seg.nrrd`` declares (label value → name)."""
    import numpy as np

    end = data.find(b"\n\n")
    crlf = data.find(b"\r\n\r\n")
    if crlf >= 0 and (end < 0 or crlf < end):
        head, raw = data[:crlf].decode("latin-1").replace("\r\n", "\n"), data[crlf + 4:]
    elif end >= 0:
        head, raw = data[:end].decode("latin-1"), data[end + 2:]
    else:
        raise LabelFileError(422, "NRRD: no end of header")
    fields: dict[str, str] = {}
    pairs: dict[str, str] = {}
    for line in head.split("\n")[1:]:
        if not line or line.startswith("#"):
            continue
        if ":=" in line:
            key, _, value = line.partition(":=")
            pairs[key.strip()] = value.strip()
        else:
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
    if "data file" in fields or "datafile" in fields:
        raise LabelFileError(415, "NRRD with a detached data file; send an attached .nrrd (or .seg.nrrd)")
    dimension = int(fields.get("dimension", "0"))
    if dimension != 3:
        raise LabelFileError(422, f"NRRD of dimension {dimension}: a label map must be 3-D (overlapping segment "
                             "layers are not supported; save without overlaps)")
    dtype = _NRRD_TYPES.get(fields.get("type", "").lower())
    if dtype is None:
        raise LabelFileError(415, f"NRRD type {fields.get('type')!r} is not supported")
    sizes = [int(s) for s in fields.get("sizes", "").split()]
    if len(sizes) != 3:
        raise LabelFileError(422, f"NRRD sizes {fields.get('sizes')!r}: three sizes expected")
    encoding = fields.get("encoding", "raw").lower()
    if encoding in ("gzip", "gz"):
        raw = gzip.decompress(raw)
    elif encoding in ("ascii", "text", "txt"):
        raw = np.array(raw.split(), dtype=dtype).tobytes()
    elif encoding != "raw":
        raise LabelFileError(415, f"NRRD encoding {encoding!r} is not supported (raw, gzip, ascii are)")
    big = fields.get("endian", "little").lower() == "big" and dtype[1] != "1"
    count = sizes[0] * sizes[1] * sizes[2]
    array = np.frombuffer(raw, dtype=(">" if big else "<") + dtype, count=count).reshape(sizes[::-1])
    space = fields.get("space", "").lower()
    directions = re.findall(r"\(([^)]*)\)", fields.get("space directions", ""))
    origin = re.findall(r"\(([^)]*)\)", fields.get("space origin", ""))
    if space not in ("left-posterior-superior", "lps", "right-anterior-superior", "ras") or len(directions) != 3:
        raise LabelFileError(422, "NRRD without a 3-D patient space (space: left-posterior-superior or "
                             "right-anterior-superior, and space directions): it cannot be placed on the series")
    vectors = [[float(v) for v in d.split(",")] for d in directions]
    affine = np.eye(4)
    for column, axis in enumerate((2, 1, 0)):
        affine[:3, column] = vectors[axis]
    affine[:3, 3] = [float(v) for v in origin[0].split(",")] if origin else 0.0
    if space in ("right-anterior-superior", "ras"):
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    names: dict[int, str] = {}
    for key, value in pairs.items():
        found = re.fullmatch(r"Segment(\d+)_Name", key)
        if found and pairs.get(f"Segment{found.group(1)}_LabelValue", "").strip().isdigit():
            names[int(pairs[f"Segment{found.group(1)}_LabelValue"])] = value
    return array, affine, names


def read_nifti(data: bytes) -> tuple[Any, Any]:
    """(array, affine) of a NIfTI-1/2 file: array indexed (i, j, k), affine from them to LPS mm."""
    import numpy as np

    try:
        import nibabel as nib
    except ImportError as exc:
        from voxlake.errors import MissingExtraError

        raise MissingExtraError("NIfTI labels need nibabel: pip install 'voxlake[ai]'") from exc
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    try:
        image = (nib.Nifti2Image if len(data) > 4 and int.from_bytes(data[:4], "little") == 540
                 else nib.Nifti1Image).from_bytes(data)
    except Exception as exc:
        raise LabelFileError(415, f"not a NIfTI file nibabel can read: {exc}") from exc
    array = np.asanyarray(image.dataobj)
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise LabelFileError(422, f"NIfTI of shape {array.shape}: a label map must be 3-D")
    return array, np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(image.affine, dtype=np.float64)


def onto_volume(volume: Any, array: Any, affine: Any) -> Any:
    """``array`` (any axis order, ``affine`` from its indices to LPS mm) on the volume's grid (k, j, i):
    the grids must be the same up to axis order and direction (a label exported on the image)."""
    import numpy as np

    m = np.linalg.inv(np.asarray(volume.affine, dtype=np.float64)) @ np.asarray(affine, dtype=np.float64)
    order, flips = [], []
    for v in range(3):
        row = np.abs(m[v, :3])
        s = int(np.argmax(row))
        n = array.shape[s]
        start = 0.0 if m[v, s] > 0 else n - 1.0
        if (abs(row[s] - 1) > 0.01 or np.sum(row > 0.01) != 1 or n != volume.shape[v]
                or abs(m[v, 3] - start) > 0.05):
            raise LabelFileError(422, f"the label map (shape {tuple(array.shape)}) does not lie on the grid of "
                                 f"series {volume.SeriesInstanceUID} (shape {tuple(volume.shape)}): export it "
                                 "on the image volume")
        order.append(s)
        flips.append(m[v, s] < 0)
    if sorted(order) != [0, 1, 2]:
        raise LabelFileError(422, "the label map's axes do not match the series' axes")
    out = np.transpose(array, order)
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
    return np.ascontiguousarray(out)


def label_map_of(volume: Any, filename: str, data: bytes) -> tuple[Any, dict[int, str]]:
    """The label map of an uploaded file on the volume's grid, and the names the file declares."""
    import numpy as np

    name = (filename or "").lower()
    names: dict[int, str] = {}
    if data[:4] == b"NRRD":
        array, affine, names = read_nrrd(data)
        labels = onto_volume(volume, array, affine)
    elif name.endswith(".bin"):
        voxels = int(np.prod(volume.shape))
        if len(data) not in (voxels, 2 * voxels):
            raise LabelFileError(422, f"raw label of {len(data)} bytes: series {volume.SeriesInstanceUID} has "
                                 f"{voxels} voxels (1 or 2 bytes each expected)")
        labels = np.frombuffer(data, np.uint8 if len(data) == voxels else np.uint16).reshape(volume.shape)
    elif name.endswith((".nii", ".nii.gz")) or data[:2] == b"\x1f\x8b" or data[344:348] in (b"n+1\x00", b"ni1\x00"):
        array, affine = read_nifti(data)
        labels = onto_volume(volume, array, affine)
    else:
        raise LabelFileError(415, f"label {filename!r}: send a DICOM SEG (.dcm), a NRRD (.nrrd, .seg.nrrd), a "
                             "NIfTI (.nii, .nii.gz) label map or OHIF's raw .bin")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise LabelFileError(422, "the label map holds non-integer values")
        labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise LabelFileError(422, "the label map holds negative values")
    return labels, names


def label_names(values: list[int], params: dict[str, Any], declared: dict[int, str],
                fallback: dict[int, str]) -> dict[int, str]:
    """A name for each label value present: the file's own (``.seg.nrrd``), else ``label_info``
    (``[{"name", "idx"}]``: by ``idx`` when those cover the values, else in order, as Slicer numbers
    exported segments 1, 2, ...), else ``label_names`` (``{name: value}``), else the model's."""
    info = [i for i in params.get("label_info") or [] if isinstance(i, dict) and i.get("name")
            and str(i.get("name")).lower() != "background"]
    by_idx = {int(i["idx"]): str(i["name"]) for i in info if str(i.get("idx", "")).lstrip("-").isdigit()}
    given = params.get("label_names") if isinstance(params.get("label_names"), dict) else {}
    by_name = {int(v): str(k) for k, v in given.items() if str(v).isdigit() and k != "background"}
    out = {}
    for n, value in enumerate(values, start=1):
        if value in declared:
            out[value] = declared[value]
        elif by_idx and set(values) <= set(by_idx):
            out[value] = by_idx[value]
        elif info and len(info) >= len(values):
            out[value] = str(sorted(info, key=lambda i: int(i.get("idx") or 0))[n - 1]["name"])
        elif value in by_name:
            out[value] = by_name[value]
        else:
            out[value] = fallback.get(value, f"Segment {value}")
    return out


def seg_from_label_map(volume: Any, label_map: Any, names: dict[int, str], author: str | None) -> bytes:
    """A reader's DICOM SEG (BINARY, MANUAL segments) of ``label_map`` on ``volume``, as a viewer writes one."""
    import highdicom as hd
    import numpy as np
    from pydicom.uid import generate_uid

    from voxlake.ai.seg import segment_code

    if len(volume.headers) != len(volume.sources):
        raise LabelFileError(422, f"series {volume.SeriesInstanceUID} is multi-frame: send a DICOM SEG for it")
    present = sorted(names)
    if not present:
        raise LabelFileError(422, "the label map is empty: there is no segment to store")
    lut = np.zeros(int(label_map.max()) + 1, np.uint8)
    lut[present] = np.arange(1, len(present) + 1, dtype=np.uint8)
    descriptions = []
    for number, value in enumerate(present, start=1):
        code = segment_code(names[value], number - 1)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=names[value][:64], segmented_property_category=code.category,
            segmented_property_type=code.property_type, algorithm_type="MANUAL", tracking_uid=generate_uid(),
            tracking_id=names[value][:64], display_color=hd.color.CIELabColor.from_rgb(*code.colour)))
    seg = hd.seg.Segmentation(
        source_images=list(volume.headers), pixel_array=lut[label_map], segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=1000,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name="MONAI Label client", software_versions=_version(), device_serial_number="0",
        content_creator_name=author or None, content_label="FINAL", content_description="MONAI Label label",
        series_description="SEG MONAI Label final")
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _version() -> str:
    from voxlake import __version__

    return f"voxlake {__version__}"


def write_nrrd(label_map: Any, affine: Any, *, dtype: Any, compress: bool) -> bytes:
    """A NRRD (attached header, LPS) of ``label_map`` indexed (k, j, i) with ``affine`` to LPS mm;
    its axes are (i, j, k), the first the fastest, as ITK, Slicer and the OHIF plugin read them."""
    import numpy as np

    data = np.ascontiguousarray(label_map, dtype=dtype).astype("<" + np.dtype(dtype).str[1:], copy=False).tobytes()
    if compress:
        data = gzip.compress(data, compresslevel=1)

    def vector(v: Any) -> str:
        return "(" + ",".join(f"{float(x):.10g}" for x in v) + ")"

    nrrd_type = {"u1": "uint8", "u2": "uint16", "i2": "int16", "u4": "uint32"}[np.dtype(dtype).str[1:]]
    k, j, i = label_map.shape
    header = (f"NRRD0004\n# voxlake labels\ntype: {nrrd_type}\ndimension: 3\nspace: left-posterior-superior\n"
              f"sizes: {i} {j} {k}\n"
              f"space directions: {vector(affine[:3, 2])} {vector(affine[:3, 1])} {vector(affine[:3, 0])}\n"
              f"kinds: domain domain domain\nendian: little\nencoding: {'gzip' if compress else 'raw'}\n"
              f"space origin: {vector(affine[:3, 3])}\n\n")
    return header.encode("ascii") + data


def write_nifti_bytes(array: Any, affine: Any, *, compress: bool) -> bytes:
    """A NIfTI-1 of ``array`` indexed (k, j, i) with ``affine`` (LPS, those indices), in RAS as NIfTI tools
    expect: axes (i, j, k), affine diag(-1, -1, 1) · LPS affine."""
    import nibabel as nib
    import numpy as np

    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    image = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), ras)
    image.header.set_xyzt_units("mm")
    image.header.set_qform(ras, code=1)
    image.header.set_sform(ras, code=1)
    data = image.to_bytes()
    return gzip.compress(data, compresslevel=1) if compress else data


def centroids(label_map: Any, names: dict[int, str]) -> dict[str, list[Any]]:
    """``{name: [value, i, j, k]}``, the centre of each label present in voxel indices, as MONAI
    Label's result params give them (the OHIF plugin reads them)."""
    import numpy as np
    from scipy import ndimage

    values = [v for v in sorted(names) if v > 0]
    if not values:
        return {}
    centres = ndimage.center_of_mass(np.ones(label_map.shape, np.uint8), label_map, values)
    out = {}
    for value, centre in zip(values, centres, strict=True):
        if not np.all(np.isfinite(centre)):
            continue
        k, j, i = (round(float(c)) for c in centre)
        out[names[value]] = [int(value), i, j, k]
    return out


def multipart_form(fields: list[tuple[str, str | None, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body (as MONAI Label answers ``output=all``) of (name, filename, type, bytes)."""
    boundary = uuid.uuid4().hex
    chunks = []
    for name, filename, media_type, data in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {media_type}\r\n\r\n"
                      .encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


# -- training ---------------------------------------------------------------------------------------------------


class Training:
    """Fine-tuning runs started through ``/train``, one at a time, as MONAI Label's task records."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tasks: list[dict[str, Any]] = []
        self.thread: threading.Thread | None = None

    def running(self) -> dict[str, Any] | None:
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                return self.tasks[-1]
            return None

    def start(self, lake: Any, registry: Any, finetune: Any, models: list[str], options: dict[str, Any],
              request: dict[str, Any]) -> dict[str, Any] | None:
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                return None
            task = {"id": str(uuid.uuid4()), "status": "RUNNING", "request": request, "start_ts": _ts(),
                    "end_ts": None, "details": [f"fine-tuning {', '.join(models)} on the final labels"],
                    "result": None}
            self.tasks.append(task)
            self.thread = threading.Thread(target=self._run, args=(task, lake, registry, finetune, models, options),
                                           name="voxlake-monailabel-train", daemon=True)
            self.thread.start()
            return task

    @staticmethod
    def _run(task: dict[str, Any], lake: Any, registry: Any, finetune: Any, models: list[str],
             options: dict[str, Any]) -> None:
        results = {}
        try:
            for model in models:
                result = finetune(lake, registry, model, **options)
                results[model] = result.to_dict() if hasattr(result, "to_dict") else result
                task["details"].append(f"{model}: version {getattr(result, 'version', '?')}, "
                                       f"promoted {getattr(result, 'promoted', '?')}")
            task["status"] = "DONE"
        except Exception as exc:  # reported in the task, as MONAI Label reports a failed run
            text = str(exc).strip()
            task["details"].append(f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}")
            task["status"] = "ERROR"
        task["result"] = json.loads(json.dumps(results, default=str))
        task["end_ts"] = _ts()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for task in self.tasks:
            for model in task["request"].get("models", []):
                out[model] = {"status": task["status"], "start_ts": task["start_ts"], "end_ts": task["end_ts"],
                              "result": (task["result"] or {}).get(model)}
        return out


def _ts() -> str:
    return dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


_TRAINING_LOCK = threading.Lock()


def training(app: Any) -> Training:
    with _TRAINING_LOCK:
        if getattr(app.state, "monailabel_training", None) is None:
            app.state.monailabel_training = Training()
        return app.state.monailabel_training


def load_finetune() -> Any:
    """``voxlake.ai.finetune.finetune_from_labels``, or a 501 naming what is missing."""
    try:
        return importlib.import_module("voxlake.ai.finetune").finetune_from_labels
    except (ImportError, AttributeError) as exc:
        raise DicomWebError(501, "training is not available in this voxlake: voxlake.ai.finetune."
                            f"finetune_from_labels cannot be imported ({exc})") from exc


# -- the router -------------------------------------------------------------------------------------------------


def model_rows(registry: Any) -> dict[str, Any]:
    """name → the version ``name`` resolves to (champion, else the latest), from one registry listing."""
    out: dict[str, Any] = {}
    for row in registry.list():
        best = out.get(row.name)
        if best is None or ("champion" in row.aliases) or (
                "champion" not in best.aliases and _int(row.version) > _int(best.version)):
            out[row.name] = row
    return out


def _int(text: str) -> int:
    return int(text) if str(text).isdigit() else 0


def router() -> Any:
    from fastapi import APIRouter, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    r = APIRouter(tags=["MONAI Label"])

    def service(request: Request) -> Any:
        return request.app.state.ai

    def check_image(state: Any, image: str) -> dict[str, Any]:
        if not image:
            raise bad_request("the query needs image (a SeriesInstanceUID of the lake)")
        urls.check_uid(image, "image")
        rows = image_rows(state, image)
        if not rows:
            raise not_found(f"no image series {image} in this lake")
        return rows[0]

    # -- /info/ ------------------------------------------------------------------------------------------------
    @r.get("/info/")
    def info(request: Request) -> Any:
        ai = service(request)
        models, trainers, names = {}, {}, ["background"]
        for name, row in model_rows(ai.pool.registry).items():
            labels = {str(v): int(k) for k, v in sorted(row.labels.items())}
            models[name] = {"type": "segmentation", "labels": labels, "dimension": 3,
                            "description": f"{name} version {row.version} ({row.kind})",
                            "version": str(row.version), "kind": str(row.kind), "config": {}}
            if str(row.kind) == "network":
                trainers[name] = {"description": f"fine-tune {name} on the lake's final labels", "config": {}}
            names += [n for n in labels if n not in names]
        import voxlake

        return {"name": "voxlake", "description": "A voxlake lake served through MONAI Label's API",
                "version": voxlake.__version__, "labels": names, "models": models, "trainers": trainers,
                "strategies": {k: {"description": v} for k, v in STRATEGIES.items()}, "scoring": {},
                "train_stats": training(request.app).stats(), "datastore": datastore_stats(ai.state)}

    # -- /infer/{model} ----------------------------------------------------------------------------------------
    @r.post("/infer/{model}")
    async def infer(request: Request, model: str, image: str = "", output: str | None = None,
                    session_id: str = "") -> Any:
        params, files = await read_request(request)
        if session_id:
            raise not_implemented("infer with session_id (sessions)")
        if "file" in files:
            raise not_implemented("infer on an uploaded image file (image must be a series of the lake)")
        if "label" in files:
            raise not_implemented("infer with a label input (scribbles)")
        output = output or "all"
        if output not in OUTPUTS:
            raise bad_request(f"output must be one of {', '.join(OUTPUTS)}; got {output!r}")
        extension = str(params.get("result_extension") or ".nii.gz").lower()
        if extension not in LABEL_EXTENSIONS:
            raise DicomWebError(415, f"result_extension must be one of {', '.join(LABEL_EXTENSIONS)}; got "
                                f"{extension!r}")
        return await run_in_threadpool(_infer, request, model, image, output, params, extension)

    def _infer(request: Any, model: str, image: str, output: str, params: dict[str, Any], extension: str) -> Any:
        import numpy as np

        from voxlake.ai.segment import segment_series

        ai = service(request)
        state = ai.state
        row = check_image(state, image)
        started = time.perf_counter()
        try:
            the_model = ai.pool.get(model)
            with ai.pool.busy:
                outcome = segment_series(state.lake, image, the_model, nifti=True,
                                         meshes=bool(params.get("meshes", False)))
        except Exception as exc:
            raise model_error(exc) from exc
        state.refresh(force=True)
        seg_row = state.cursor().execute("SELECT StudyInstanceUID, SeriesInstanceUID, uri FROM instances WHERE "
                                         "SOPInstanceUID = ?", [outcome.SEG]).fetchone()
        base = urls.dicomweb_base(request, state.settings.dicomweb_root)
        seg = {"SOPInstanceUID": outcome.SEG}
        if seg_row is not None:
            seg |= {"StudyInstanceUID": seg_row[0], "SeriesInstanceUID": seg_row[1],
                    "RetrieveURL": base + urls.instance_path(seg_row[0], seg_row[1], outcome.SEG)}
        if output == "dicom_seg":
            if seg_row is None:
                raise DicomWebError(500, f"the SEG {outcome.SEG} is not in the catalog")
            from voxlake.dicom.frames import open_uri

            with open_uri(seg_row[2]) as fp:
                data = fp.read()
            return Response(data, media_type="application/dicom",
                            headers={"Content-Disposition": f'attachment; filename="{outcome.SEG}.dcm"'})
        label_map, affine = _result_labels(state.lake, row, outcome.SEG)
        names = {int(k): v for k, v in the_model.labels.items()}
        t_post = time.perf_counter()
        result_params = {
            "label_names": {v: int(k) for k, v in sorted(names.items())},
            "centroids": centroids(label_map, {k: v for k, v in names.items() if k in set(np.unique(label_map))}),
            "model": the_model.name, "model_version": str(the_model.version), "image": image, "SEG": seg,
            "volumes_ml": outcome.volumes_ml,
            "latencies": {"pre": round(outcome.timings.get("load", 0.0), 3),
                          "infer": round(outcome.timings.get("predict", 0.0), 3),
                          "post": round(outcome.timings.get("record", 0.0), 3),
                          "total": round(time.perf_counter() - started, 3)}}
        if output == "json":
            return result_params
        dtype = np.dtype(str(params.get("result_dtype") or ("uint8" if label_map.max(initial=0) < 256 else "uint16")))
        if dtype.str[1:] not in ("u1", "u2", "i2", "u4"):
            raise bad_request(f"result_dtype must be uint8, uint16, int16 or uint32; got {dtype}")
        if extension == ".nrrd":
            data = write_nrrd(label_map, affine, dtype=dtype, compress=bool(params.get("result_compress", False)))
        else:
            data = write_nifti_bytes(label_map.astype(dtype), affine, compress=extension == ".nii.gz")
        result_params["latencies"]["write"] = round(time.perf_counter() - t_post, 3)
        filename = f"{image}{extension}"
        if output == "image":
            return Response(data, media_type="application/octet-stream",
                            headers={"Content-Disposition": f'attachment; filename="{filename}"'})
        body, content_type = multipart_form([
            ("params", None, "application/json", json.dumps(result_params).encode()),
            ("image", filename, "application/octet-stream", data)])
        return Response(body, media_type=content_type)

    # -- /activelearning/{strategy} ----------------------------------------------------------------------------
    @r.post("/activelearning/{strategy}")
    async def activelearning(request: Request, strategy: str) -> Any:
        params, _files = await read_request(request)
        return await run_in_threadpool(_next, request, strategy, params)

    def _next(request: Any, strategy: str, params: dict[str, Any]) -> Any:
        from voxlake.ai.active import NoCandidateError, next_case

        if strategy not in STRATEGIES:
            raise bad_request(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
        modality = str(params.get("modality") or "CT")
        if not re.fullmatch(r"[A-Z]{1,16}", modality):
            raise bad_request(f"modality must be a DICOM modality such as CT; got {modality!r}")
        ai = service(request)
        try:
            if strategy == "uncertainty":
                spec = params.get("model") or next(
                    (n for n, row in model_rows(ai.pool.registry).items() if str(row.kind) == "network"), None)
                if not spec:
                    raise bad_request("strategy uncertainty needs a network model: pass params.model")
                the_model = ai.pool.get(str(spec))
                with ai.pool.busy:
                    case = next_case(ai.state.lake, strategy, where=f"Modality = '{modality}'", model=the_model)
            else:
                case = next_case(ai.state.lake, strategy, where=f"Modality = '{modality}'")
        except NoCandidateError:
            return {}  # MONAI Label's answer when nothing is left; its clients say so
        except Exception as exc:
            raise model_error(exc) from exc
        rows = image_rows(ai.state, case.SeriesInstanceUID)
        info = image_info(request, ai.state, rows[0]) if rows else {
            "SeriesInstanceUID": case.SeriesInstanceUID, "StudyInstanceUID": case.StudyInstanceUID}
        served = {strategy: {"ts": int(time.time()), "client_id": params.get("client_id")}}
        return {"id": case.SeriesInstanceUID, **info, "strategy": served, "candidates": case.candidates,
                "score": case.score, "model": case.model, "model_version": case.model_version}

    # -- /datastore/ -------------------------------------------------------------------------------------------
    @r.get("/datastore/")
    def datastore(request: Request, output: str | None = None) -> Any:
        ai = service(request)
        output = output or "stats"
        if output == "stats":
            return datastore_stats(ai.state)
        if output not in ("all", "train"):
            raise bad_request(f"output must be stats, all or train; got {output!r}")
        rows = image_rows(ai.state)
        labels = latest_labels(ai.state.lake)
        if output == "train":
            base = urls.dicomweb_base(request, ai.state.settings.dicomweb_root)
            by = {r["SeriesInstanceUID"]: r for r in rows}
            return [{"image": s, "label": t["final"]["SeriesInstanceUID"],
                     "meta": {"image": image_info(request, ai.state, by[s]),
                              "label": t["final"] | {"RetrieveURL": base + urls.series_path(
                                  by[s]["StudyInstanceUID"], t["final"]["SeriesInstanceUID"])}}}
                    for s, t in labels.items() if "final" in t and s in by]
        objects = {}
        for row in rows:
            series = row["SeriesInstanceUID"]
            objects[series] = {
                "image": {"ext": "", "info": image_info(request, ai.state, row) | {"instances": row["instances"]}},
                "labels": {tag: {"ext": ".dcm", "info": seg} for tag, seg in labels.get(series, {}).items()}}
        return {"name": "voxlake", "description": f"lake {ai.state.lake.uri}", "images_dir": "",
                "labels_dir": "", "objects": objects}

    @r.get("/datastore/image")
    def download_image(request: Request, image: str = "") -> Any:
        from voxlake.ai.volume import load_series

        ai = service(request)
        check_image(ai.state, image)
        try:
            volume = load_series(ai.state.lake, image)
        except Exception as exc:
            raise model_error(exc) from exc
        import numpy as np

        array = volume.array
        if np.all(np.equal(np.mod(array, 1), 0)) and array.min(initial=0) >= -32768 and array.max(initial=0) < 32768:
            array = array.astype(np.int16)
        data = write_nifti_bytes(array, volume.affine, compress=True)
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{image}.nii.gz"'})

    @r.put("/datastore/label")
    async def save_label(request: Request, image: str = "", tag: str = "") -> Any:
        params, files = await read_request(request)
        if "label" not in files:
            raise bad_request("the form needs a label file (field 'label')")
        if (tag or "final") != "final":
            raise not_implemented(f"label tag {tag!r} (a label from a client is stored as a final)")
        return await run_in_threadpool(_save_label, request, image, params, *files["label"])

    def _save_label(request: Any, image: str, params: dict[str, Any], filename: str | None, data: bytes) -> Any:
        from voxlake.ai.labels import sync_labels
        from voxlake.server.stow_store import store_instances

        ai = service(request)
        state = ai.state
        check_image(state, image)
        if len(data) > 132 and data[128:132] == b"DICM":
            seg_bytes = _checked_seg(data, image)
        else:
            seg_bytes = _seg_of_label_map(request, state, image, params, filename or "", data)
        try:
            stored = store_instances(state.lake, [seg_bytes])
        except Exception as exc:
            raise model_error(exc) from exc
        if not stored.stored:
            reason = "; ".join(f.message for f in stored.failed) or "not stored"
            raise DicomWebError(409 if stored.failed else 500, f"the label was not stored: {reason}")
        item = stored.stored[0]
        state.refresh(force=True)
        result = sync_labels(state.lake)
        rows = [r for r in label_rows(state.lake) if r["SegmentationSOPInstanceUID"] == item.sop_instance_uid]
        if not rows:
            reasons = [e["reason"] for e in result.errors if e.get("SOPInstanceUID") == item.sop_instance_uid]
            raise DicomWebError(422, f"the SEG {item.sop_instance_uid} was stored but is not a label of "
                                f"{image}: {'; '.join(reasons) or 'not synced'}")
        base = urls.dicomweb_base(request, state.settings.dicomweb_root)
        return {"image": image, "label": image, "tag": "final",
                "SeriesInstanceUID": item.series_uid, "SOPInstanceUID": item.sop_instance_uid,
                "RetrieveURL": base + urls.instance_path(item.study_uid, item.series_uid, item.sop_instance_uid),
                "labels": [{"label": r["label"], "status": r["status"], "SegmentNumber": r["SegmentNumber"],
                            "voxels": r["voxels"], "dice": r["dice"], "label_version": r["label_version"]}
                           for r in rows]}

    def _checked_seg(data: bytes, image: str) -> bytes:
        import pydicom

        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception as exc:
            raise DicomWebError(415, f"the label is not a DICOM file pydicom can read: {exc}") from exc
        if str(ds.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
            raise DicomWebError(415, f"the DICOM label is {ds.get('SOPClassUID', 'no SOP class')}, not a "
                                "Segmentation (SEG)")
        referenced = {str(i.get("SeriesInstanceUID")) for i in ds.get("ReferencedSeriesSequence", [])}
        if referenced and image not in referenced:
            raise bad_request(f"the SEG segments series {', '.join(sorted(referenced))}, not image {image}")
        return data

    def _seg_of_label_map(request: Any, state: Any, image: str, params: dict[str, Any], filename: str,
                          data: bytes) -> bytes:
        import numpy as np

        from voxlake.ai.volume import load_series

        try:
            volume = load_series(state.lake, image)
        except Exception as exc:
            raise model_error(exc) from exc
        try:
            label_map, declared = label_map_of(volume, filename, data)
            values = [int(v) for v in np.unique(label_map) if v > 0]
            fallback: dict[int, str] = {}
            if params.get("model"):
                try:
                    fallback = dict(service(request).pool.registry.resolve(str(params["model"])).labels)
                except Exception as exc:
                    raise model_error(exc) from exc
            names = label_names(values, params, declared, fallback)
            author = params.get("author")
            return seg_from_label_map(volume, label_map, names, str(author) if author else None)
        except LabelFileError as exc:
            raise DicomWebError(exc.status, str(exc)) from exc

    # -- /train/ -----------------------------------------------------------------------------------------------
    def _start(request: Any, models: list[str], params: dict[str, Any]) -> dict[str, Any]:
        ai = service(request)
        registry = ai.pool.registry
        for name in models:
            try:
                row = registry.resolve(name)
            except Exception as exc:
                raise model_error(exc) from exc
            if str(row.kind) != "network":
                raise bad_request(f"model {name} is {row.kind} ({'fixed rules, no weights' if str(row.kind) == 'builtin' else 'not a voxlake network'}): "
                                  "it cannot be trained; fine-tuning takes a network model")
        finetune = load_finetune()
        if importlib.import_module("voxlake.ai.finetune").finetune_running(ai.state.lake.uri):
            raise DicomWebError(429, "a training task is already running (a fine-tune of this lake, started "
                                     "through /ai/train or the CLI)")
        options = {}
        if params.get("epochs", params.get("max_epochs")) is not None:
            options["epochs"] = int(params.get("epochs", params.get("max_epochs")))
        if params.get("heldout") is not None:
            options["heldout"] = params["heldout"]
        request_info = {"models": models, **{k: v for k, v in params.items() if k not in models}}
        task = training(request.app).start(ai.state.lake, registry, finetune, models, options, request_info)
        if task is None:
            raise DicomWebError(429, "a training task is already running")
        return task

    @r.post("/train/{model}")
    async def train_model(request: Request, model: str) -> Any:
        params, _files = await read_request(request)
        specific = params.get(model) if isinstance(params.get(model), dict) else {}
        return await run_in_threadpool(_start, request, [model], {**params, **specific})

    @r.post("/train/")
    async def train_all(request: Request) -> Any:
        params, _files = await read_request(request)

        def start() -> Any:
            rows = model_rows(service(request).pool.registry)
            trainers = [n for n, row in rows.items() if str(row.kind) == "network"]
            chosen = [n for n in trainers if n in params] or trainers
            if not chosen:
                raise bad_request("no trainable model in the registry (fine-tuning takes a network model)")
            task = _start(request, chosen, params)
            return {name: {"result": task, "detail": None} for name in chosen}

        return await run_in_threadpool(start)

    @r.get("/train/")
    def train_status(request: Request, all: bool = False, check_if_running: bool = False) -> Any:
        state = training(request.app)
        if check_if_running:
            task = state.running()
            if task is None:
                return JSONResponse({"status": 404, "reason": "No Train Tasks are currently Running"}, 404)
            return task
        if not state.tasks:
            return JSONResponse({"status": 404, "reason": "No Train Tasks Found"}, 404)
        return state.tasks if all else state.tasks[-1]

    # -- what is not covered -----------------------------------------------------------------------------------
    unsupported = [
        ("DELETE", "/train/", "stopping a training task (it runs to its end in the server)"),
        ("PUT", "/datastore/", "uploading an image (store DICOM through STOW-RS at /dicomweb/studies)"),
        ("DELETE", "/datastore/", "removing images or labels from the lake"),
        ("GET", "/datastore/label", "downloading a label (retrieve its SEG through WADO-RS)"),
        ("PUT", "/session/", "sessions"),
        ("POST", "/scoring/{method}", "scoring methods"),
        ("POST", "/batch/infer/{model}", "batch inference (use POST /ai/jobs)"),
    ]
    for method, path, what in unsupported:
        def endpoint(what: str = what) -> Any:
            raise not_implemented(what)

        r.add_api_route(path, endpoint, methods=[method], include_in_schema=False)
    return r


def _result_labels(lake: Any, row: dict[str, Any], seg_sop: str) -> tuple[Any, Any]:
    """The label map a run wrote beside its SEG (``labels.nii.gz`` of its run folder), indexed (k, j, i)
    with its LPS affine."""
    from pathlib import Path

    import numpy as np

    found = lake.sql("SELECT any_value(run_id) FROM segment_stats WHERE SegmentationSOPInstanceUID = "
                     f"'{seg_sop}'").fetchall()
    run_id = found[0][0] if found else None
    paths = sorted(Path(lake.uri, "derived", row["StudyInstanceUID"], row["SeriesInstanceUID"]).glob(
        f"*/*/{run_id}/labels.nii.gz")) if run_id else []
    if not paths:
        raise DicomWebError(500, f"the label map of SEG {seg_sop} was not written")
    array, affine = read_nifti(paths[0].read_bytes())
    return np.ascontiguousarray(array.transpose(2, 1, 0)), affine[:, [2, 1, 0, 3]]
