"""Header-realistic archives at scale: a million DICOM instances in minutes, for ingest and query
benchmarks (``voxlake synth scale``).

Why not pydicom per file: building and writing a Dataset costs about a millisecond per instance,
and a million instances at 2,000 files/s on two cores leave a millisecond of CPU per file for
everything. So each template instance is serialised once, with fixed-width placeholders where the
values change (UIDs, patient, accession, dates), and the byte offsets of those placeholders are
recorded; every output file is a copy of those bytes with the placeholders overwritten, written in
one call, on a forkserver process pool.

The hierarchy is realistic: patients with one to three studies, each study a copy of a real study
of the templates (its series, their sizes and headers), fresh UIDs everywhere (references between
instances of a study follow them), one patient's name, sex, birth date and ages throughout, and
each study's dates shifted together so their intervals stay as they were. The layout is
``OUT/<PatientID>/<AccessionNumber>/<series nnn>/<instance nnnnn>.dcm``.

Every file depends only on the seed and its place in that layout, so the output is byte-identical
whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import multiprocessing
import os
import signal
import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from voxlake.errors import InvalidArgumentError, SourceError
from voxlake.synth import rng, uid


class Pixels(StrEnum):
    """What becomes of the template's pixel data."""

    #: Header-only files without Pixel Data (what ``dcmread(stop_before_pixels=True)`` sees).
    NONE = "none"
    #: The template's pixel bytes, unchanged: realistic file sizes, for small templates.
    TEMPLATE = "template"

    @classmethod
    def of(cls, value: Pixels | str) -> Pixels:
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(p.value for p in cls)
            raise InvalidArgumentError(f"pixels must be one of {valid}, not {value!r}") from None


@dataclass(frozen=True)
class ScaleResult:
    """What :func:`generate_scale` wrote."""

    out_dir: str
    files: int
    patients: int
    studies: int
    series: int
    bytes: int
    seconds: float
    files_per_second: float
    pixels: str = Pixels.NONE.value
    #: Template instances the output copies, and the series and studies they form.
    template_instances: int = 0
    template_series: int = 0
    template_studies: int = 0
    #: ``"path: reason"`` for each file of the template folder that could not serve as a template.
    skipped: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        kind = (
            "header-only DICOM files (no Pixel Data)"
            if self.pixels == Pixels.NONE.value
            else "DICOM files (template pixel data)"
        )
        lines = [
            f"wrote {self.files:,} {kind} to {self.out_dir}: {self.patients:,} patients, "
            f"{self.studies:,} studies, {self.series:,} series, {self.bytes / 1e6:,.1f} MB "
            f"in {self.seconds:.1f} s ({self.files_per_second:,.0f} files/s)",
            f"templates: {self.template_instances:,} instances in {self.template_series:,} series "
            f"of {self.template_studies:,} studies",
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped):,} template files, e.g. {self.skipped[0]}")
        return "\n".join(lines)


# --- layout of the fixed-width placeholders -----------------------------------------------------

#: A placeholder's value: what it stands for, e.g. ``("uid", "series", 2)`` or ``("day", ordinal)``.
Key = tuple[Any, ...]

UID_WIDTH = 64  # every fresh UID is exactly 64 characters: even, no padding (PS3.5 9.1)
#: (keyword, VR, width, key) of the top-level attributes every output file has, fresh per patient
#: or study. Widths are even so that no value needs a pad byte of its own (PS3.5 7.1.1).
FIELDS: tuple[tuple[str, str, int, Key], ...] = (
    ("AccessionNumber", "SH", 16, ("accession",)),
    ("PatientName", "PN", 32, ("name",)),
    ("PatientID", "LO", 16, ("patient_id",)),
    ("PatientBirthDate", "DA", 8, ("birth_date",)),
    ("PatientSex", "CS", 2, ("sex",)),
    ("StudyID", "SH", 10, ("study_id",)),
)
_FILLER = {"SH": "X", "PN": "X", "LO": "X", "CS": "X"}
#: Template dates with no study date to shift from are taken to be this day.
REFERENCE_DAY = dt.date(2000, 1, 1).toordinal()
#: Output studies fall between these days (the first study of a patient; later ones follow it).
FIRST_DAY = dt.date(2008, 1, 1).toordinal()
LAST_DAY = dt.date(2021, 12, 31).toordinal()

FAMILY = (
    "Smith", "Johnson", "Garcia", "Nguyen", "Kim", "Martin", "Rossi", "Muller", "Silva", "Kowalski",
    "Novak", "Jensen", "Dubois", "Tanaka", "Okafor", "Singh", "Cohen", "Larsen", "Moreau", "Ivanova",
    "Hughes", "Bauer", "Costa", "Popescu", "Haddad", "Lindqvist", "Moreno", "Walsh", "Fischer", "Sato",
)  # fmt: skip
GIVEN_FEMALE = (
    "Anna", "Maria", "Emma", "Sofia", "Olivia", "Mei", "Amara", "Ingrid", "Lucia", "Hana",
    "Priya", "Elena", "Chloe", "Fatima", "Nora", "Aiko", "Zofia", "Leila", "Grace", "Ines",
)  # fmt: skip
GIVEN_MALE = (
    "James", "Luca", "Noah", "Mateo", "Wei", "Kwame", "Lars", "Omar", "Ivan", "Hiro",
    "Arjun", "Pierre", "Diego", "Tomas", "Samuel", "Kenji", "Piotr", "Yusuf", "Daniel", "Emil",
)  # fmt: skip

_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_IMPLICIT = "1.2.840.10008.1.2"
_EXPLICIT = "1.2.840.10008.1.2.1"
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM_DELIMITER = (0xFFFE, 0xE00D)
_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)
_HH = struct.Struct("<HH")
_H = struct.Struct("<H")
_L = struct.Struct("<L")
#: Tags from Pixel Data on (Float and Double Float Pixel Data too) are left out of header-only files.
_FIRST_PIXEL_TAG = 0x7FE00008

#: Output files per pool task: big enough to amortise the round trip, small enough for smooth progress.
TASK_FILES = 2000
#: Patients planned per block of random draws (the plan draws in fixed blocks: same seed, same plan).
_PLAN_BLOCK = 1024


class _Template(NamedTuple):
    """One template instance serialised, and where its placeholders are."""

    data: bytes
    #: (byte offset, width, key) of each placeholder.
    patches: tuple[tuple[int, int, Key], ...]


@dataclass
class _StudyTemplate:
    """A real study of the template folder: its series, each a list of instances in order."""

    series: list[list[_Template]]
    #: The day its dates count from (its StudyDate), as a proleptic Gregorian ordinal.
    day: int
    sex: str | None
    age_days: int | None

    @property
    def instances(self) -> int:
        return sum(len(s) for s in self.series)


class _Study(NamedTuple):
    """One output study, as planned by the driver; everything a worker needs to write it."""

    index: int
    template: int
    files: int
    patient_id: str
    patient_name: str
    sex: str
    birth_day: int
    day: int


# --- the public function ------------------------------------------------------------------------


def generate_scale(
    out_dir: str | os.PathLike[str],
    *,
    instances: int,
    source: str | os.PathLike[str],
    seed: int = 0,
    pixels: Pixels | str = Pixels.NONE,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ScaleResult:
    """Write ``instances`` header-realistic DICOM files to ``out_dir``, copied from the templates in
    ``source`` with a fresh hierarchy of patients, studies and series.

    ``pixels="none"`` (default) writes header-only files without Pixel Data; ``"template"`` keeps
    the template's pixel bytes. ``workers`` processes write (default: all cores; 0 writes in this
    process). ``progress(n)`` is called each time ``n`` more files are written (as a tqdm bar's
    ``update``). ``out_dir`` must be empty or absent.

    >>> generate_scale("./big", instances=1_000_000, source="./synthetic")  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    mode = Pixels.of(pixels)
    if instances < 1:
        raise InvalidArgumentError(f"instances must be at least 1, not {instances}")
    if workers is not None and workers < 0:
        raise InvalidArgumentError(f"workers must be 0 (this process) or more, not {workers}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidArgumentError(f"{out}: not an empty folder; choose a new one or empty it first")
    templates, skipped = _load_templates(source, mode)
    studies, patients, series = _plan(templates, instances, seed)
    out.mkdir(parents=True, exist_ok=True)
    state = _State(templates, seed, str(out))
    n_workers = _default_workers() if workers is None else workers
    written = 0
    nbytes = 0
    for files, size in _run(state, _tasks(studies), n_workers):
        written += files
        nbytes += size
        if progress:
            progress(files)
    seconds = time.perf_counter() - t0
    return ScaleResult(
        out_dir=str(out),
        files=written,
        patients=patients,
        studies=len(studies),
        series=series,
        bytes=nbytes,
        seconds=seconds,
        files_per_second=written / seconds if seconds > 0 else 0.0,
        pixels=mode.value,
        template_instances=sum(t.instances for t in templates),
        template_series=sum(len(t.series) for t in templates),
        template_studies=len(templates),
        skipped=tuple(skipped),
    )


def _default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# --- templates ----------------------------------------------------------------------------------


def _load_templates(
    source: str | os.PathLike[str], pixels: Pixels | str = Pixels.NONE
) -> tuple[list[_StudyTemplate], list[str]]:
    """Read every file under ``source`` once and serialise each usable one as a template; the
    studies they form and ``"path: reason"`` for each file left out."""
    import warnings

    import pydicom

    mode = Pixels.of(pixels)
    root = Path(source)
    if not root.exists():
        raise SourceError(f"{root}: no such file or folder of template DICOM files")
    skipped: list[str] = []
    # (study UID, series UID) -> [(instance number, path, dataset)]
    found: dict[str, dict[str, list[tuple[int, str, Any]]]] = {}
    seen_sops: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in _files(root):
            try:
                ds = pydicom.dcmread(path, force=True, stop_before_pixels=mode is Pixels.NONE)
                ids = [
                    str(ds.get(k) or "") for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
                ]
                reason = _unusable(ds, ids)
            except Exception as exc:
                reason = f"not readable as DICOM ({type(exc).__name__})"
            if reason is None and ids[2] in seen_sops:
                reason = "same SOPInstanceUID as an earlier template"
            if reason is not None:
                skipped.append(f"{path}: {reason}")
                continue
            seen_sops.add(ids[2])
            found.setdefault(ids[0], {}).setdefault(ids[1], []).append((_instance_number(ds), path, ds))
        studies = []
        for study_uid in sorted(found):
            built = _study_template(study_uid, found[study_uid], mode, skipped)
            if built is not None:
                studies.append(built)
    if not studies:
        shown = "; ".join(skipped[:3]) or "the folder has no files"
        raise SourceError(f"{root}: no usable template DICOM files ({shown})")
    return studies, skipped


def _files(root: Path) -> Iterator[str]:
    """Files under ``root`` in name order, hidden ones left out and links to folders followed, each
    real folder once (as ingest lists a source)."""
    if root.is_file():
        yield str(root)
        return
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield os.path.join(folder, name)


def _unusable(ds: Any, ids: list[str]) -> str | None:
    for keyword, value in zip(("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"), ids, strict=True):
        if not value:
            return f"no {keyword}"
    if not ds.get("SOPClassUID"):
        return "no SOPClassUID"
    syntax = _transfer_syntax(ds)
    if syntax == _BIG_ENDIAN:
        return "Explicit VR Big Endian (retired) is not supported as a template"
    return None


def _transfer_syntax(ds: Any) -> str:
    syntax = ds.file_meta.get("TransferSyntaxUID") if getattr(ds, "file_meta", None) is not None else None
    if syntax:
        return str(syntax)
    implicit, little = ds.original_encoding
    if not little:
        return _BIG_ENDIAN
    return _IMPLICIT if implicit else _EXPLICIT


def _instance_number(ds: Any) -> int:
    try:
        return int(ds.get("InstanceNumber") or 0)
    except (TypeError, ValueError):
        return 0


def _study_template(
    study_uid: str, series: dict[str, list[tuple[int, str, Any]]], mode: Pixels, skipped: list[str]
) -> _StudyTemplate | None:
    """Serialise a study's instances; series in SeriesNumber order, instances in InstanceNumber order."""
    ordered = sorted(series.items(), key=lambda kv: (_series_number(kv[1][0][2]), kv[0]))
    members = [sorted(items, key=lambda item: (item[0], item[1])) for _uid, items in ordered]
    first = members[0][0][2]
    # Every UID of the study's own objects gets a fresh counterpart, wherever it is referenced.
    keys: dict[str, Key] = {}
    frames: dict[str, int] = {}
    for items in members:
        for _n, _path, ds in items:
            frame = str(ds.get("FrameOfReferenceUID") or "")
            if frame and frame not in frames:
                frames[frame] = len(frames)
    for frame, f in frames.items():
        keys[frame] = ("uid", "frame", f)
    keys[study_uid] = ("uid", "study")
    for j, items in enumerate(members):
        keys[str(items[0][2].SeriesInstanceUID)] = ("uid", "series", j)
        for k, (_n, _path, ds) in enumerate(items):
            keys[str(ds.SOPInstanceUID)] = ("uid", "instance", j, k)
    day = _template_day(first)
    sex = str(first.get("PatientSex") or "").strip().upper()
    age_days = _age_days(first, day)  # before serialising: that puts placeholders in the Dataset
    out: list[list[_Template]] = []
    for j, items in enumerate(members):
        built = []
        for k, (_n, path, ds) in enumerate(items):
            frame = frames.get(str(ds.get("FrameOfReferenceUID") or ""))
            roles = {0x0020000D: ("uid", "study"), 0x0020000E: ("uid", "series", j)}
            roles[0x00080018] = ("uid", "instance", j, k)
            if frame is not None:
                roles[0x00200052] = ("uid", "frame", frame)
            try:
                built.append(_serialise(ds, roles, keys, day, mode))
            except Exception as exc:
                skipped.append(f"{path}: cannot be serialised as a template ({type(exc).__name__}: {exc})")
        if built:
            out.append(built)
    if not out:
        return None
    return _StudyTemplate(out, day, sex if sex in ("F", "M") else None, age_days)


def _series_number(ds: Any) -> int:
    try:
        return int(ds.get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        return 0


def _parse_day(value: Any) -> int | None:
    text = str(value or "")
    if len(text) < 8 or not text[:8].isdigit():
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8])).toordinal()
    except ValueError:
        return None


def _template_day(ds: Any) -> int:
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        value = ds.get(keyword)
        day = _parse_day(value) if isinstance(value, str) and len(value) == 8 else None
        if day is not None:
            return day
    return REFERENCE_DAY


def _age_days(ds: Any, day: int) -> int | None:
    """The patient's age at the template study, from PatientAge or the birth date; None if unknown."""
    age = str(ds.get("PatientAge") or "").strip()
    if len(age) == 4 and age[:3].isdigit() and age[3] in "DWMY":
        days = int(age[:3]) * {"D": 1, "W": 7, "M": 30, "Y": 365}[age[3]]
        if days > 0:
            return days
    birth = _parse_day(ds.get("PatientBirthDate"))
    if birth is not None and 0 < day - birth < 120 * 365:
        return day - birth
    return None


def _serialise(ds: Any, roles: dict[int, Key], uid_keys: dict[str, Key], day: int, mode: Pixels) -> _Template:
    """The instance's bytes with fixed-width placeholders, and where they are. ``roles`` gives the
    fresh UIDs of the top-level UID attributes; ``uid_keys`` those of every other UID of the
    template study, wherever it is referenced.

    The placeholders are set on the Dataset (so pydicom writes them with the right VR, length and
    padding), then located by walking the written bytes alongside the Dataset.
    """
    import io

    import pydicom
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataset import FileMetaDataset

    syntax = _transfer_syntax(ds)
    if syntax == _DEFLATED:
        syntax = _EXPLICIT  # a deflated dataset hides its placeholders: write it inflated
    for tag in [e.tag for e in ds if e.tag.element == 0 or e.tag.group == 2]:
        del ds[tag]  # group lengths (retired) would go stale; group 2 belongs in the file meta
    if mode is Pixels.NONE:
        for tag in [e.tag for e in ds if e.tag >= _FIRST_PIXEL_TAG]:
            del ds[tag]
    wanted: dict[tuple[int, ...], tuple[int, Key, bytes]] = {}  # path -> (width, key, placeholder)
    for keyword, vr, width, key in FIELDS:
        filler = "19000101" if vr == "DA" else _FILLER[vr] * width
        ds.add_new(keyword, vr, filler)
        wanted[(tag_for_keyword(keyword),)] = (width, key, filler.encode())
    if "PatientAge" in ds:
        ds.PatientAge = "000Y"
        wanted[(0x00101010,)] = (4, ("age",), b"000Y")
    if _parse_day(ds.get("StudyDate")) is None or len(str(ds.get("StudyDate"))) != 8:
        ds.StudyDate = dt.date.fromordinal(day).strftime("%Y%m%d")
    placeholder = "9" * UID_WIDTH
    for path, elem in _elements(ds, ()):
        if path in wanted or elem.VR not in ("UI", "DA", "DT") or elem.VM > 1:
            continue
        value = "" if elem.value is None else str(elem.value)
        if elem.VR == "UI":
            key = roles.get(path[0]) if len(path) == 1 else None
            key = key or uid_keys.get(value)
            if key is not None:
                elem.value = placeholder
                wanted[path] = (UID_WIDTH, key, placeholder.encode())
        else:
            original = _parse_day(value)
            if original is not None and (elem.VR == "DT" or len(value) == 8):
                wanted[path] = (8, ("day", original), value[:8].encode())
    meta = FileMetaDataset(ds.file_meta) if getattr(ds, "file_meta", None) is not None else FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = placeholder
    ds.file_meta = meta
    ds.preamble = b"\0" * 128  # a preamble can carry an application's data; ours carries none
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    data = buffer.getvalue()
    located = _locate(data, ds, implicit=syntax == _IMPLICIT)
    patches = []
    for path, (width, key, expected) in wanted.items():
        offset, length = located[path]
        if length < width or data[offset : offset + width] != expected:
            raise ValueError(f"placeholder for {path} not where expected")
        patches.append((offset, width, key))
    meta_offset, meta_length = located[(0x00020003,)]
    if meta_length != UID_WIDTH or data[meta_offset : meta_offset + UID_WIDTH] != placeholder.encode():
        raise ValueError("MediaStorageSOPInstanceUID placeholder not where expected")
    patches.append((meta_offset, UID_WIDTH, roles[0x00080018]))
    return _Template(data, tuple(sorted(patches)))


def _elements(ds: Any, path: tuple[int, ...]) -> Iterator[tuple[tuple[int, ...], Any]]:
    """Every element of ``ds`` with its path ``(tag, item, tag, item, ..., tag)``, depth first."""
    for elem in ds:
        here = (*path, int(elem.tag))
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                yield from _elements(item, (*here, i))
        else:
            yield here, elem


def _locate(data: bytes, ds: Any, *, implicit: bool) -> dict[tuple[int, ...], tuple[int, int]]:
    """(value offset, value length) of every element in bytes pydicom wrote, by path."""
    out: dict[tuple[int, ...], tuple[int, int]] = {}
    pos = 132  # preamble and "DICM" (PS3.10 7.1)
    while pos < len(data) and _HH.unpack_from(data, pos)[0] == 0x0002:  # file meta: explicit VR LE
        group, element = _HH.unpack_from(data, pos)
        if data[pos + 4 : pos + 6] in _LONG_VRS:
            length, pos = _L.unpack_from(data, pos + 8)[0], pos + 12
        else:
            length, pos = _H.unpack_from(data, pos + 6)[0], pos + 8
        out[(group << 16 | element,)] = (pos, length)
        pos += length
    _walk(data, pos, ds, implicit, (), out)
    return out


def _walk(
    data: bytes,
    pos: int,
    ds: Any,
    implicit: bool,
    path: tuple[int, ...],
    out: dict[tuple[int, ...], tuple[int, int]],
) -> int:
    """Walk ``ds``'s elements in ``data`` from ``pos`` (the Dataset says which are sequences)."""
    for elem in ds:
        group, element = _HH.unpack_from(data, pos)
        if (group << 16 | element) != elem.tag:
            raise ValueError(f"expected {elem.tag} at byte {pos}")
        if implicit:
            length, pos = _L.unpack_from(data, pos + 4)[0], pos + 8
        elif data[pos + 4 : pos + 6] in _LONG_VRS:
            length, pos = _L.unpack_from(data, pos + 8)[0], pos + 12
        else:
            length, pos = _H.unpack_from(data, pos + 6)[0], pos + 8
        here = (*path, int(elem.tag))
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                item_length = _L.unpack_from(data, pos + 4)[0]
                pos = _walk(data, pos + 8, item, implicit, (*here, i), out)
                if item_length == _UNDEFINED:
                    pos = _expect(data, pos, _ITEM_DELIMITER)
            if length == _UNDEFINED:
                pos = _expect(data, pos, _SEQUENCE_DELIMITER)
        elif length == _UNDEFINED:  # encapsulated pixel data: items up to the sequence delimiter
            while _HH.unpack_from(data, pos) != _SEQUENCE_DELIMITER:
                pos += 8 + _L.unpack_from(data, pos + 4)[0]
            pos += 8
        else:
            out[here] = (pos, length)
            pos += length
    return pos


def _expect(data: bytes, pos: int, delimiter: tuple[int, int]) -> int:
    if _HH.unpack_from(data, pos) != delimiter:
        raise ValueError(f"expected a delimiter at byte {pos}")
    return pos + 8


# --- the plan: patients, studies, series --------------------------------------------------------


def _seed_tag(seed: int) -> str:
    """Four hex digits of the seed, in every PatientID and AccessionNumber, so that archives made
    with different seeds can share a lake without their identifiers colliding."""
    return hashlib.sha256(repr((seed, "tag")).encode()).hexdigest()[:4].upper()


def _plan(templates: list[_StudyTemplate], instances: int, seed: int) -> tuple[list[_Study], int, int]:
    """The studies to write (until ``instances`` files; the last may be cut short), and the numbers
    of patients and series. Made in the driver, from one random stream, so the workers only copy."""
    r = rng(seed, "scale", "plan")
    tag = _seed_tag(seed)
    sizes = [t.instances for t in templates]
    studies: list[_Study] = []
    remaining = instances
    patients = 0
    series = 0
    while remaining > 0:
        n = _PLAN_BLOCK
        counts = r.integers(1, 4, n)
        chosen = r.integers(0, len(templates), (n, 3))
        first_days = r.integers(FIRST_DAY, LAST_DAY + 1, n)
        gaps = r.integers(30, 541, (n, 3))
        ages = r.integers(18 * 365, 90 * 365, n)
        year_days = r.integers(0, 365, n)
        female = r.random(n) < 0.5
        family = r.integers(0, len(FAMILY), n)
        given = r.integers(0, len(GIVEN_FEMALE), n)
        for i in range(n):
            if remaining <= 0:
                break
            p = patients
            patients += 1
            first = templates[int(chosen[i, 0])]
            sex = first.sex or ("F" if female[i] else "M")
            given_names = GIVEN_FEMALE if sex == "F" else GIVEN_MALE
            name = f"{FAMILY[family[i]]}^{given_names[given[i]]}"
            day = int(first_days[i])
            age = first.age_days + int(year_days[i]) if first.age_days else int(ages[i])
            birth = day - age
            for c in range(int(counts[i])):
                if remaining <= 0:
                    break
                t = int(chosen[i, c])
                files = min(sizes[t], remaining)
                remaining -= files
                studies.append(_Study(len(studies), t, files, f"VX{tag}-{p + 1:07d}", name, sex, birth, day))
                series += _series_with_files(templates[t], files)
                day += int(gaps[i, c])
    return studies, patients, series


def _series_with_files(template: _StudyTemplate, files: int) -> int:
    n = 0
    for s in template.series:
        if files <= 0:
            break
        n += 1
        files -= len(s)
    return n


def _tasks(studies: list[_Study]) -> Iterator[list[_Study]]:
    task: list[_Study] = []
    files = 0
    for study in studies:
        task.append(study)
        files += study.files
        if files >= TASK_FILES:
            yield task
            task, files = [], 0
    if task:
        yield task


# --- writing (in the workers) -------------------------------------------------------------------


class _State(NamedTuple):
    templates: list[_StudyTemplate]
    seed: int
    out_dir: str


_WORKER: list[_State] = []  # this worker process's templates, set once by its initializer


def _init_worker(state: _State) -> None:
    """Workers ignore Ctrl-C (the driver decides, as in the ingest engine) and keep the templates."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER[:] = [state]


def _worker_task(task: list[_Study]) -> tuple[int, int]:
    return _write_studies(_WORKER[0], task)


def _run(state: _State, tasks: Iterator[list[_Study]], workers: int) -> Iterator[tuple[int, int]]:
    """(files, bytes) of each task as it finishes, in ``workers`` processes (0: this one)."""
    if workers == 0:
        for task in tasks:
            yield _write_studies(state, task)
        return
    # forkserver, as the ingest engine: forking a process that holds threads is unsafe.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["voxlake.synth.scale"])
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(state,)) as pool:
        pending: set[Future[tuple[int, int]]] = set()
        try:
            for task in tasks:  # bounded in-flight work keeps the driver's memory flat
                pending.add(pool.submit(_worker_task, task))
                if len(pending) >= 3 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield future.result()
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _write_studies(state: _State, studies: list[_Study]) -> tuple[int, int]:
    """Write the files of ``studies``; (files, bytes) written."""
    files = 0
    nbytes = 0
    tag = _seed_tag(state.seed)
    for study in studies:
        template = state.templates[study.template]
        values = _StudyValues(state.seed, tag, study, template.day)
        accession = values.get(("accession",), 16).decode().strip()
        study_dir = os.path.join(state.out_dir, study.patient_id, accession)
        left = study.files
        for j, series in enumerate(template.series):
            if left <= 0:
                break
            series_dir = os.path.join(study_dir, f"{j + 1:03d}")
            os.makedirs(series_dir, exist_ok=True)
            for k, instance in enumerate(series[:left]):
                buf = bytearray(instance.data)
                for offset, width, key in instance.patches:
                    buf[offset : offset + width] = values.get(key, width)
                _write(os.path.join(series_dir, f"{k + 1:05d}.dcm"), buf)
                nbytes += len(buf)
            files += min(left, len(series))
            left -= len(series)
    return files, nbytes


class _StudyValues:
    """The fresh values of one output study's placeholders, each computed once."""

    def __init__(self, seed: int, tag: str, study: _Study, template_day: int) -> None:
        self.seed = seed
        self.tag = tag
        self.study = study
        self.shift = study.day - template_day
        self.cache: dict[Key, bytes] = {}

    def get(self, key: Key, width: int) -> bytes:
        value = self.cache.get(key)
        if value is None:
            value = self.cache[key] = self._compute(key, width)
        return value

    def _compute(self, key: Key, width: int) -> bytes:
        study = self.study
        kind = key[0]
        if kind == "uid":
            return _uid64(self.seed, key[1], study.index, *key[2:]).encode()
        if kind == "day":
            return _date(key[1] + self.shift, key[1]).encode()
        if kind == "accession":
            text = f"{self.tag}{study.index + 1:010d}"
        elif kind == "study_id":
            text = str(study.index + 1)
        elif kind == "name":
            text = study.patient_name
        elif kind == "patient_id":
            text = study.patient_id
        elif kind == "birth_date":
            text = _date(study.birth_day, study.birth_day)
        elif kind == "sex":
            text = study.sex
        elif kind == "age":
            text = f"{_age_years(study.birth_day, study.day):03d}Y"
        else:
            raise ValueError(f"unknown placeholder {key}")
        return text[:width].ljust(width).encode()


def _uid64(seed: int, *parts: object) -> str:
    """A :func:`uid` of exactly 64 characters (about 3 % are shorter: those are drawn again), so that
    every UID fills its placeholder with no padding."""
    value = uid(seed, *parts)
    again = 0
    while len(value) < UID_WIDTH:
        again += 1
        value = uid(seed, *parts, again)
    return value


def _age_years(birth_day: int, day: int) -> int:
    """Completed years of age on ``day`` (PS3.5 6.2: AS in years)."""
    birth, on = dt.date.fromordinal(birth_day), dt.date.fromordinal(day)
    return max(0, min(999, on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))))


def _date(day: int, fallback: int) -> str:
    with contextlib.suppress(ValueError, OverflowError):
        return dt.date.fromordinal(day).strftime("%Y%m%d")
    return dt.date.fromordinal(fallback).strftime("%Y%m%d")


def _write(path: str, data: bytearray) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
