"""``voxlake deid verify``: prove that de-identified output holds none of its source's PHI.

``source`` and ``deidentified`` are each a lake or a folder of DICOM files. Research instances are
matched to their sources through the output's audit: a research lake's ``deid_audit`` table, a
folder's ``deid_audit.jsonl`` (``source_sha256`` names the source by the SHA-256 of its bytes: the
source lake's ``instances.sha256``, or the file of the source folder with that hash); or through
explicit ``pairs`` (research file → source file) for the output of another tool, judged against the
Basic Profile and the given options. Both sides are read from their files with pydicom, whatever
holds them. For each pair:

* **Terms** to look for, from the source: the patient's deny-list
  (:func:`voxlake.deid.header.identity_of` over **every source instance of the patient**: names,
  IDs and their digits, addresses, phones, e-mails, institutions, the birth date in every spelling);
  what reads as PHI (:func:`voxlake.deid.scrub.phi_spans`: dates, phones, e-mails, addresses, a
  title and a name, record numbers) in **every source text value** at any depth, private, unknown
  and unlisted ones included; the whole values of the identifying attributes the profile does not
  keep, person names in their variants. A term the source also holds where the profile keeps it
  verbatim (a model name, a standard code) is a look-alike, not checkable as PHI; code meanings,
  labels and other unlisted text are scrubbed, not kept, so a name planted there never is one.
* **Header**: each term is searched in every research element at any depth (file meta, private and
  unknown elements decoded where they print), as a word, case- and accent-insensitively; a date that
  parses to the birth date is a leak whatever its spelling.
* **Bytes**: the research file's bytes outside the pixel and overlay data, for each term in eight
  character sets and UTF-16 (ASCII case-insensitively; digits only with no digit beside them); a hit
  is a leak where the element walk did not find the same term in that instance.
* **UIDs**: no source UID (outside the standard's ``1.2.840.10008``) survives anywhere; each source
  Study, Series and Patient ID maps to exactly one research value and back (with the secret, to
  exactly the keyed value); every ReferencedSOPInstanceUID that resolved in the source resolves in the
  output.
* **Dates** the profile shifts differ from the source, by one offset per patient (±1 day for the
  time of day).
* **Kept attributes** (top level, the profile's K and what it keeps unlisted) keep their value.
* **Pixels** (``ocr=True``): every frame, overlay plane and icon image of the research file is
  screened for text (:func:`voxlake.deid.screen.screen_frame`) and, where text is found, read by
  Tesseract; a word inside a text region, read with confidence 40 or more, that matches a term (one
  or two OCR errors allowed for 6+ characters, exactly for 4-5) is a leak. Noise is not text: an
  image without text regions gives nothing. The decoded pixels equal the source's outside the boxes
  the audit says were redacted.

Each failure is a :class:`Leak` with the research instance, its file and the location (a tag path,
an encoding, a frame and box); it never carries the PHI value, only the source attribute it came
from and a hash of the term (:func:`term_hash`: keyed with the secret when one is given). The
summary uses the categories of the MIDI-B benchmark.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

__all__ = ["CATEGORIES", "Leak", "VerifyReport", "format_report", "term_hash", "verify"]

CATEGORIES = ("removed", "retained", "date_shifted", "uid_changed_consistent", "patient_id_consistent",
              "pixels_hidden", "pixels_retained")
_STANDARD_UID = "1.2.840.10008."
_PUBLIC_UIDS = {"00020010", "00020012", "00080112", "0008010C", "00080117", "00080118"}  # meta, coding schemes
# Written by the de-identification or the pixel step itself; not "retained" attributes.
_CHANGED_ON_PURPOSE = {"00120062", "00120063", "00120064", "00280301", "00280303", "00282110", "00282112",
                       "00282114", "00080016"}
_SOURCE_ONLY = {"7FE00010", "7FE00008", "7FE00009"}  # DICOM JSON tags are upper-case hex
_BULK = {0x7FE00010, 0x7FE00008, 0x7FE00009, 0x00420011}  # pixels, float pixels, an encapsulated document
_DUMMIES = {"ANONYMOUS", "UNKNOWN", "NONE", "REMOVED", "N/A"}
_SCRUBBED = {"LO", "SH", "ST", "LT", "UT", "UC", "CS", "AE"}
_TEXT = {"LO", "SH", "ST", "LT", "UT", "UC", "CS", "AE", "PN", "UR", "UN", "OB"}  # OB, UN: decoded where they print
_KEPT_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT", "IS", "DS", "AS", "OD", "OF", "OL", "OV", "OW"}
_BINARY = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
_ENCODINGS = ("utf-8", "latin-1", "utf-16-le", "iso2022_jp", "shift_jis", "gb18030", "cp1251", "iso8859_7",
              "euc_kr")
_ISO2022_ESCAPES = re.compile(rb"\x1b[\(\)\$][A-Z@]|\x1b\$[\(\)][A-Z@]")
_MIN_OCR_CONFIDENCE = 40
_SKIPPED_FILES = (".json", ".jsonl")


def term_hash(term: str, secret: Any = None) -> str:
    """The hex SHA-256 of the folded ``term`` (lower case, accents removed), HMAC-keyed with the
    secret (a :class:`~voxlake.deid.keys.Secret`) when one is given: what a :class:`Leak` says of
    its value, so that who planted a value can match leaks to it and no one else learns it."""
    from voxlake.deid.scrub import fold

    data = fold(term).strip().encode()
    if secret is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(secret.key, b"voxlake-verify-term\0" + data, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Leak:
    """One failed check: what kind, its MIDI-B category, the research instance (new SOP Instance
    UID, or its file when it has none), where in it, which source attribute the value came from
    (never the value), the hash of the term found (:func:`term_hash`) and the research file."""

    kind: str
    category: str
    instance: str
    location: str
    source: str = ""
    term: str = ""
    file: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "category": self.category, "instance": self.instance,
                "location": self.location, "source": self.source, "term": self.term, "file": self.file}


@dataclass
class VerifyReport:
    """The leaks and, per MIDI-B category, how many checks ran and how many failed."""

    instances: int = 0
    unmatched: list[str] = field(default_factory=list)  # research instances with no audited source
    leaks: list[Leak] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))

    @property
    def failed(self) -> dict[str, int]:
        out = dict.fromkeys(CATEGORIES, 0)
        for leak in self.leaks:
            out[leak.category] += 1
        return out

    @property
    def passed(self) -> bool:
        return not self.leaks and not self.unmatched

    def to_dict(self) -> dict[str, Any]:
        failed = self.failed
        return {
            "passed": self.passed, "instances": self.instances, "unmatched": self.unmatched,
            "summary": {c: {"checked": self.checked[c], "failed": failed[c], "passed": failed[c] == 0}
                        for c in CATEGORIES},
            "leaks": [leak.to_dict() for leak in self.leaks],
        }


# -- reading DICOM ---------------------------------------------------------------------------------


def _name(tag: str) -> str:
    from pydicom.datadict import keyword_for_tag

    t = int(tag, 16)
    return (keyword_for_tag(t) if t >> 16 & 1 == 0 else "") or f"({tag[:4].upper()},{tag[4:].upper()})"


def _encodings(ds: Any, default: list[str]) -> list[str]:
    from pydicom.charset import convert_encodings

    charset = ds.get("SpecificCharacterSet") if "SpecificCharacterSet" in ds else None
    if not charset:
        return default
    try:
        return convert_encodings([charset] if isinstance(charset, str) else list(charset))
    except Exception:
        return default


def _decode(raw: bytes, encodings: list[str]) -> str | None:
    """Bytes as text where they print (a private or unknown element), in the dataset's character sets."""
    from pydicom.charset import decode_bytes

    if not raw or len(raw) > 1 << 16:
        return None
    try:
        text = decode_bytes(raw, encodings, set())
    except Exception:
        text = raw.decode("latin-1")
    text = text.rstrip("\0 ")
    printable = sum(c.isprintable() or c in "\r\n\t\x1b" for c in text)
    return text if text and printable >= 0.9 * len(text) else None


def _bulk(tag: int) -> bool:
    return tag in _BULK or ((tag >> 16) & 0xFF00 == 0x6000 and tag & 0xFFFF == 0x3000)


def _walk(ds: Any) -> Iterator[tuple[str, str, str, list[str], Any]]:
    """(path, tag, vr, values as text, the dataset holding it) for every element at every depth (an
    explicit stack), the file meta first; binary values as text where they print, bulk data (pixels,
    overlay bitmaps, documents) without values; an element pydicom cannot convert, as its bytes."""
    from pydicom.dataelem import RawDataElement
    from pydicom.multival import MultiValue

    top = _encodings(ds, ["iso8859"])
    stack: list[tuple[Any, str, list[str]]] = [(ds, "", top)]
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        stack.append((meta, "", top))
    while stack:
        current, prefix, encodings = stack.pop()
        if prefix:
            encodings = _encodings(current, encodings)
        pushed: list[tuple[Any, str, list[str]]] = []
        for tag in sorted(int(t) for t in current.keys()):  # noqa: SIM118 (iterating a Dataset converts)
            tag_hex = f"{tag:08X}"
            path = f"{prefix}{_name(tag_hex)}"
            try:
                elem = current[tag]
                vr, value = str(elem.VR), elem.value
            except Exception:
                raw = dict.__getitem__(current._dict, tag) if hasattr(current, "_dict") else None
                vr, value = "UN", bytes(raw.value) if isinstance(raw, RawDataElement) and raw.value else None
            if vr == "SQ":
                yield path, tag_hex, vr, [], current
                pushed += [(item, f"{path}[{i}].", encodings) for i, item in enumerate(value or ())]
                continue
            if value is None or _bulk(tag):
                values: list[str] = []
            elif isinstance(value, bytes | bytearray):
                text = _decode(bytes(value), encodings)
                values = [text] if text else []
            elif isinstance(value, MultiValue | list | tuple):
                values = [str(v) for v in value if v is not None]
            else:
                values = [str(value)]
            yield path, tag_hex, vr, values, current
        stack.extend(reversed(pushed))


def _open_bytes(uri: str) -> bytes:
    from voxlake.deid.run import _open

    with _open(uri) as f:
        return f.read()


def _parse(data: bytes, *, header_only: bool = False) -> Any:
    """The dataset (force=True), or None when the bytes are not DICOM pydicom can read."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=header_only)
    except Exception:  # not DICOM, truncated, nested too deep for pydicom's reader
        return None
    if not len(ds) and not len(getattr(ds, "file_meta", None) or []):
        return None
    return ds


def _document_texts(ds: Any) -> list[bytes]:
    """An encapsulated document's bytes and, for a PDF, its compressed streams inflated (its text
    usually sits in FlateDecode streams, invisible to a plain byte search)."""
    import zlib

    try:
        doc = ds.get("EncapsulatedDocument")  # the value, by keyword
        data = bytes(doc) if isinstance(doc, bytes | bytearray) else b""
    except Exception:
        return []
    if not data:
        return []
    parts = [data]
    for m in re.finditer(rb"stream\r?\n(.*?)endstream", data, re.S):
        try:
            parts.append(zlib.decompressobj().decompress(m.group(1), 1 << 24))  # at most 16 MiB a stream
        except zlib.error:
            continue
    return parts


def _outside_bulk(data: bytes, ds: Any) -> bytes:
    """The file's bytes without the values of the top-level pixel data and overlay bitmaps (read
    before the dataset converts them: their raw elements know where they start)."""
    from pydicom.dataelem import RawDataElement

    cuts = []
    for tag in list(ds.keys()):
        if not _bulk(int(tag)) or int(tag) == 0x00420011:
            continue
        raw = dict.__getitem__(ds._dict, tag)
        if isinstance(raw, RawDataElement) and raw.value is not None and raw.value_tell is not None:
            cuts.append((raw.value_tell, raw.value_tell + len(raw.value)))
    out, last = [], 0
    for start, end in sorted(cuts):
        if start >= last and end <= len(data):
            out.append(data[last:start])
            last = end
    out.append(data[last:])
    return b"\0".join(out)


def _patient_key(ds: Any) -> str:
    """Whose instance this is, as de-identification keys its deny-list and date offset."""
    return str(ds.get("PatientID", "") or "").strip() or str(ds.get("StudyInstanceUID", "") or "")


def _is_lake(x: Any) -> bool:
    if hasattr(x, "sql"):
        return True
    text = str(x)
    if "://" in text:
        return True
    p = Path(text)
    return not p.is_dir() or any((p / t / "_delta_log").is_dir() for t in ("instances", "_instances"))


def _files(folder: Path) -> list[Path]:
    from voxlake.deid.run import FOLDER_AUDIT

    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
                  and p.name not in (FOLDER_AUDIT, "DICOMDIR") and not p.name.endswith(_SKIPPED_FILES))


def _resolved(path: str, folder: Path | None) -> str:
    if folder is None or "://" in path:
        return path
    p = Path(path)
    return str((p if p.is_absolute() else folder / p).resolve())


# -- the source side: a lake or a folder -------------------------------------------------------------


class _Sources:
    """The source files, from a lake (its ``instances`` view) or a folder (every file, hashed): by
    SHA-256, by name, and all the files of a patient."""

    def __init__(self, source: Any) -> None:
        import voxlake

        self.lake: Any = None
        self.folder: Path | None = None
        self.sop: dict[str, str] = {}  # uri → SOP Instance UID
        if _is_lake(source):
            self.lake = source if hasattr(source, "sql") else voxlake.open(str(source))
            return
        import hashlib as _h

        self.folder = Path(source).resolve()
        self._by_sha: dict[str, str] = {}
        self._patients: dict[str, list[str]] = defaultdict(list)
        for path in _files(self.folder):
            data = path.read_bytes()
            uri = str(path)
            self._by_sha.setdefault(_h.sha256(data).hexdigest(), uri)
            ds = _parse(data, header_only=True)
            if ds is not None:
                self.sop[uri] = str(ds.get("SOPInstanceUID", "") or "")
                self._patients[_patient_key(ds)].append(uri)

    def by_sha(self, shas: Iterable[str]) -> dict[str, str]:
        """SHA-256 → source file, for those the source holds."""
        shas = sorted(set(shas))
        if self.lake is None:
            return {s: self._by_sha[s] for s in shas if s in self._by_sha}
        rows = self.lake.connect().execute("SELECT sha256, uri, SOPInstanceUID FROM instances WHERE sha256 IN "
                                           "(SELECT unnest($1::VARCHAR[]))", [shas]).fetchall()
        self.sop.update({r[1]: r[2] or "" for r in rows})
        return {r[0]: r[1] for r in rows}

    def by_name(self, names: Iterable[str]) -> dict[str, str]:
        """A name given in pairs (a lake's uri, or a path, relative to the source folder or not) →
        the source file, for those the source holds."""
        names = sorted(set(names))
        if self.lake is None:
            known = {u for us in self._patients.values() for u in us} | set(self._by_sha.values())
            return {n: r for n in names if (r := _resolved(n, self.folder)) in known}
        rows = self.lake.connect().execute("SELECT uri, SOPInstanceUID FROM instances WHERE uri IN "
                                           "(SELECT unnest($1::VARCHAR[]))", [names]).fetchall()
        self.sop.update({r[0]: r[1] or "" for r in rows})
        return {r[0]: r[0] for r in rows}

    def patient_files(self, key: str) -> list[str]:
        """Every source file of the patient ``key`` (Patient ID, else Study Instance UID)."""
        if self.lake is None:
            return list(self._patients.get(key, []))
        rows = self.lake.connect().execute(
            "SELECT uri FROM instances WHERE trim(coalesce(PatientID, '')) = $1 OR "
            "(trim(coalesce(PatientID, '')) = '' AND StudyInstanceUID = $1) ORDER BY uri", [key]).fetchall()
        return [r[0] for r in rows]


# -- the research side and its pairs -------------------------------------------------------------------

_Pair = tuple[str, str, dict[str, Any]]  # research file, source file, audit row


def _research(out: Any, sources: _Sources, pairs: Mapping[str, str] | None,
              profile: str) -> tuple[list[_Pair], list[str], set[str], int]:
    """(pairs, research instances without a source, every research SOP Instance UID, how many
    research instances) of a research lake or folder."""
    from voxlake.errors import InvalidArgumentError

    if _is_lake(out):
        import voxlake

        lake = out if hasattr(out, "sql") else voxlake.open(str(out))
        rows = lake.sql("SELECT SOPInstanceUID, uri FROM instances ORDER BY SOPInstanceUID, uri").fetchall()
        research = [(r[1], r[0] or r[1], r[0] or "") for r in rows]
        folder = None
        audit = None if pairs is not None else _lake_audit(lake)
    else:
        folder = Path(out).resolve()
        research = []
        for path in _files(folder):
            ds = _parse(path.read_bytes(), header_only=True)
            sop = str(ds.get("SOPInstanceUID", "") or "") if ds is not None else ""
            research.append((str(path), sop or path.relative_to(folder).as_posix(), sop))
        audit = None if pairs is not None else _folder_audit(folder)
    research_sops = {sop for _, _, sop in research if sop}
    matched: list[_Pair] = []
    unmatched: list[str] = []
    if pairs is None:
        assert audit is not None
        by_sha = sources.by_sha(r["source_sha256"] for r in audit.values() if r.get("source_sha256"))
        for uri, name, sop in research:
            row = audit.get(sop if folder is None else uri)
            src = by_sha.get(row.get("source_sha256") or "") if row else None
            if row is None or src is None:
                unmatched.append(name)
            else:
                matched.append((uri, src, row))
    else:
        wanted = {_resolved(k, folder): v for k, v in pairs.items()}
        found = sources.by_name(wanted.values())
        for uri, name, _sop in research:
            src = found.get(wanted.get(uri, wanted.get(_resolved(uri, folder), "")))
            if src is None:
                unmatched.append(name)
            else:
                matched.append((uri, src, {"profile": profile, "pixel_boxes": []}))
        if not research and pairs and not found:
            raise InvalidArgumentError("none of the pairs names a research and a source file")
    return matched, unmatched, research_sops, len(research)


def _lake_audit(lake: Any) -> dict[str, dict[str, Any]]:
    """The written rows of a research lake's ``deid_audit`` by research SOP Instance UID (the latest)."""
    from deltalake import DeltaTable

    from voxlake.errors import InvalidArgumentError
    from voxlake.lake import storage

    audit_uri = storage.join(lake.uri, "deid_audit")
    try:
        table = DeltaTable(audit_uri, storage_options=storage.delta_storage_options(lake.uri)).to_pyarrow_table()
    except Exception as exc:
        raise InvalidArgumentError(f"{lake.uri} has no deid_audit table; is it a research lake written by "
                                   f"voxlake deid? (or give verify the pairs) ({type(exc).__name__})") from None
    rows: dict[str, dict[str, Any]] = {}
    for row in sorted(table.to_pylist(), key=lambda r: r["deidentified_at"]):
        if row["status"] == "written" and row["SOPInstanceUID"]:
            rows[row["SOPInstanceUID"]] = row
    return rows


def _folder_audit(folder: Path) -> dict[str, dict[str, Any]]:
    """The written rows of a folder's ``deid_audit.jsonl`` by research file (the latest)."""
    import orjson

    from voxlake.deid.run import FOLDER_AUDIT
    from voxlake.errors import InvalidArgumentError

    try:
        lines = (folder / FOLDER_AUDIT).read_bytes().splitlines()
    except OSError:
        raise InvalidArgumentError(f"{folder} has no {FOLDER_AUDIT}; is it a folder written by voxlake deid "
                                   "file? (or give verify the pairs)") from None
    rows: dict[str, dict[str, Any]] = {}
    for row in sorted((orjson.loads(line) for line in lines if line.strip()), key=lambda r: r["deidentified_at"]):
        if row.get("status") == "written" and row.get("dest"):
            rows[str((folder / row["dest"]).resolve())] = row
    return rows


# -- the source's terms ----------------------------------------------------------------------------


def _name_variants(value: str) -> set[str]:
    out: set[str] = set()
    for group in value.split("="):
        parts = [p.strip() for p in group.split("^") if p.strip()]
        if not parts:
            continue
        out.update(parts)
        out.add(" ".join(parts))
        out.add(group.strip())
        family, given = parts[0], parts[1] if len(parts) > 1 else ""
        if given:
            out.update({f"{given} {family}", f"{family}, {given}", f"{family},{given}", f"{family} {given}"})
        for p in parts:
            out.update(w for w in re.split(r"[\s,.]+", p) if w)
    return out


def _date_variants(value: str) -> set[str]:
    try:
        d = datetime.strptime(value.strip()[:8], "%Y%m%d")
    except ValueError:
        return set()
    return {f"{d:%Y%m%d}", f"{d:%Y-%m-%d}", f"{d:%m/%d/%Y}", f"{d:%d/%m/%Y}", f"{d:%d.%m.%Y}", f"{d:%m.%d.%Y}",
            f"{d:%Y/%m/%d}", f"{d:%Y.%m.%d}", f"{d:%m-%d-%Y}", f"{d:%d-%m-%Y}", f"{d.day} {d:%B} {d.year}",
            f"{d:%B} {d.day}, {d.year}", f"{d.day} {d:%b} {d.year}", f"{d:%d-%b-%Y}"}


def _meaningful(term: str) -> bool:
    """Long enough to be PHI rather than a coincidence: 3+ letters, or 5+ digits."""
    letters = sum(c.isalpha() for c in term)
    digits = sum(c.isdigit() for c in term)
    return (letters >= 3 or digits >= 5) and term.strip().upper() not in _DUMMIES


def _cjk(text: str) -> bool:
    import unicodedata

    return any(unicodedata.east_asian_width(c) in ("W", "F") for c in text)


@dataclass
class _Source:
    terms: dict[str, tuple[str, str]]  # folded term → (category, source path)
    spellings: dict[str, set[str]]  # folded term → the source's own spellings of it
    uids: set[str]
    by_path: dict[str, tuple[str, str, list[str]]]  # path → (tag, vr, values)
    kept: dict[str, list[str]]  # top-level kept attributes: tag → values
    shifted: dict[str, str]  # path → source date, for C dates
    births: set[date]


_MAX_TERM = 128  # longer whole values (free text) are checked through the names, IDs and dates they hold


def _source_facts(ds: Any, profile: Any, identity: Any) -> _Source:
    """The terms to look for in the research instance of ``ds`` (the source), and what to compare."""
    from voxlake.deid.header import _CS_LABELS, _STANDARD_SCHEMES, _STRUCTURAL, _is_descriptor
    from voxlake.deid.profile import Action, Option
    from voxlake.deid.scrub import fold, phi_spans

    retain_uids = Option.RETAIN_UIDS in profile.options
    shifts = Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in profile.options
    terms: dict[str, tuple[str, str]] = {}
    spellings: dict[str, set[str]] = defaultdict(set)
    uids: set[str] = set()
    by_path: dict[str, tuple[str, str, list[str]]] = {}
    kept: dict[str, list[str]] = {}
    shifted: dict[str, str] = {}
    look_alikes: set[str] = set()

    def add(text: str, category: str, origin: str) -> str:
        t = text.strip()
        f = fold(t).strip()
        if f and len(f) <= _MAX_TERM:
            terms.setdefault(f, (category, origin))
            spellings[f].add(t)
        return f

    for path, tag, vr, values, item in _walk(ds):
        by_path[path] = (tag, vr, values)
        if vr == "SQ":
            continue
        group = int(tag[:4], 16)
        private = group % 2 == 1
        if group == 2 and vr != "UI":
            continue
        action = Action.REMOVE if private else profile.action(int(tag, 16))
        strings = [s for s in values if s]
        keyword = _name(tag)
        if vr == "UI":
            if not retain_uids and tag not in _PUBLIC_UIDS:
                uids.update(s for s in strings if not s.startswith(_STANDARD_UID))
            continue
        standard_code = keyword == "CodeValue" and str(item.get("CodingSchemeDesignator", "") or "").strip() \
            in _STANDARD_SCHEMES
        verbatim = action is Action.KEEP or (action is None and (vr in _KEPT_VRS or keyword in _STRUCTURAL
                                                                  or standard_code
                                                                  or (vr in ("CS", "AE") and keyword not in _CS_LABELS)))
        if verbatim and vr != "PN":
            # what the profile keeps: look-alikes, and (at the top) values that must survive
            look_alikes.update(fold(s).strip() for s in strings)
            if "." not in path and not private and tag not in _CHANGED_ON_PURPOSE and not tag.startswith(("0028", "60", "50")) \
                    and tag not in _SOURCE_ONLY and vr not in _BINARY:
                kept[tag] = strings
            continue
        if vr in _TEXT or vr in _BINARY:
            # what reads as PHI in any text the profile does not keep, at any depth
            category = "date_shifted" if shifts else "removed"
            for s in strings:
                for start, end, kind in phi_spans(s):
                    add(s[start:end], category if kind == "date" else "removed", path)
        if action is None and vr in _SCRUBBED:
            continue  # unlisted free text is scrubbed: neither kept verbatim nor PHI as a whole
        if vr == "PN":
            for s in strings:
                for t in _name_variants(s):
                    add(t, "removed", path)
        elif vr in ("DA", "DT"):
            category = "date_shifted" if action is Action.CLEAN else "removed"
            for s in strings:
                for t in _date_variants(s):
                    add(t, category, path)
            if action is Action.CLEAN and vr == "DA" and strings:
                shifted[path] = strings[0]
        elif vr in ("LO", "SH", "LT", "ST", "UT", "UC", "AE", "AS", "UN", "OB") and action is not Action.CLEAN \
                and (private or not _is_descriptor(int(tag, 16))):
            # a description is free text, checked through the names, IDs and dates it may hold; a
            # private value whole only when it looks like an identifier or a name (vendors copy
            # protocol words such as "WHOLE BODY_E" into private blocks and into Image ID alike)
            for s in strings:
                if not private or sum(c.isdigit() for c in s) >= 4 or "^" in s or "@" in s:
                    add(s, "removed", path)
    # what reads as PHI in an encapsulated document's text
    for part in _document_texts(ds):
        text = part.decode("latin-1")
        for start, end, _kind in phi_spans(text):
            add(text[start:end], "removed", "EncapsulatedDocument")
    # the patient's deny-list, from every source instance of the patient
    for w in (*identity.words, *identity.infixes):
        add(w, "removed", "the patient's deny-list")
    for d in identity.digits:
        add(d, "removed", "the patient's deny-list")
    for s in identity.date_strings():
        add(s, "removed", "PatientBirthDate")
    # a value the source also holds where the profile keeps it verbatim (a name word that is also a
    # model name: "Phantom") cannot be told from the kept copy: not checkable as PHI. Code meanings,
    # labels and other unlisted text are scrubbed, not kept: a name planted there is never a look-alike
    kept_text = "\n".join(sorted(look_alikes))
    out = {}
    for t, c in terms.items():
        if not _meaningful(t):
            continue
        if t in look_alikes or re.search(rf"(?<![0-9a-z]){re.escape(t)}(?![0-9a-z])", kept_text):
            continue
        out[t] = c
    return _Source(out, {t: spellings[t] for t in out}, uids, by_path, kept, shifted, set(identity.dates))


# -- matching --------------------------------------------------------------------------------------


def _trie(words: Iterable[Any]) -> str:
    """A regex alternation of ``words`` (str, or bytes decoded as latin-1) factored into a trie, which
    matches the longest word first and costs one test per character where none starts."""
    root: dict[str, Any] = {}
    for w in words:
        node = root
        for c in w:
            node = node.setdefault(c, {})
        node[""] = {}

    def pattern(node: dict[str, Any]) -> str:
        branches = [re.escape(c) + pattern(child) for c, child in sorted(node.items()) if c]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return pattern(root)


def _edge_ok(term: str, before: str, after: str) -> bool:
    """A term is found as a word: digits with no digit beside them, letters with no ASCII letter or
    digit beside them; other scripts anywhere (names written inside words)."""
    def ok(edge: str, neighbour: str) -> bool:
        if not neighbour:
            return True
        if edge.isdigit():
            return not neighbour.isdigit()
        if edge.isascii() and edge.isalnum():
            return not (neighbour.isascii() and neighbour.isalnum())
        return True
    return ok(term[0], before) and ok(term[-1], after)


class _Matcher:
    """Finds every term (folded) in folded text, overlapping ones included."""

    def __init__(self, terms: Iterable[str]) -> None:
        words = sorted(set(terms), key=len, reverse=True)
        self.regex = re.compile(f"(?=({_trie(words)}))") if words else None
        by_first: dict[str, list[str]] = defaultdict(list)
        for w in words:
            by_first[w[0]].append(w)
        self.prefixes = {w: [t for t in by_first[w[0]] if len(t) < len(w) and w.startswith(t)] for w in words}

    def find(self, text: str) -> set[str]:
        out: set[str] = set()
        if self.regex is None:
            return out
        for m in self.regex.finditer(text):
            start, longest = m.start(), m.group(1)
            if not longest:
                continue
            for t in (longest, *self.prefixes[longest]):
                end = start + len(t)
                if _edge_ok(t, text[start - 1:start] if start else "", text[end:end + 1]):
                    out.add(t)
        return out


class _ByteMatcher:
    """Finds terms in a file's bytes: each term in each of the character sets, ASCII case-insensitively."""

    def __init__(self, spellings: Mapping[str, set[str]]) -> None:
        self.variants: dict[bytes, tuple[str, str]] = {}  # lower-cased bytes → (term, encoding)
        for term, forms in spellings.items():
            for form in sorted({term, *forms, *(f.upper() for f in forms)}):
                for encoding in _ENCODINGS:
                    try:
                        raw = form.encode(encoding)
                    except UnicodeEncodeError:
                        continue
                    if encoding == "iso2022_jp":
                        raw = _ISO2022_ESCAPES.sub(b"", raw)
                    if raw:
                        self.variants.setdefault(raw.lower(), (term, encoding))
        words = sorted(self.variants, key=len, reverse=True)
        self.regex = (re.compile(f"(?=({_trie(w.decode('latin-1') for w in words)}))".encode("latin-1"),
                                 re.IGNORECASE) if words else None)
        by_first: dict[int, list[bytes]] = defaultdict(list)
        for w in words:
            by_first[w[0]].append(w)
        self.prefixes = {w: [t for t in by_first[w[0]] if len(t) < len(w) and w.startswith(t)] for w in words}

    def find(self, data: bytes) -> dict[str, str]:
        """term → the encoding it was found in."""
        out: dict[str, str] = {}
        if self.regex is None:
            return out
        for m in self.regex.finditer(data):
            start, longest = m.start(), m.group(1).lower()
            for raw in (longest, *self.prefixes.get(longest, ())):
                term, encoding = self.variants[raw]
                if term in out:
                    continue
                end = start + len(raw)
                width = 2 if encoding == "utf-16-le" else 1
                before = data[max(0, start - width):start].replace(b"\0", b"").decode("latin-1")
                after = data[end:end + width].replace(b"\0", b"").decode("latin-1")
                codec = "latin-1" if encoding == "iso2022_jp" else encoding
                if _edge_ok(raw.decode(codec, errors="replace"), before[-1:], after[:1]):
                    out[term] = encoding
        return out


_MATCHERS: dict[frozenset[str], tuple[_Matcher, _ByteMatcher]] = {}


def _matchers(facts: _Source) -> tuple[_Matcher, _ByteMatcher]:
    key = frozenset(facts.terms)
    found = _MATCHERS.get(key)
    if found is None:
        if len(_MATCHERS) > 16:
            _MATCHERS.clear()
        found = _MATCHERS[key] = (_Matcher(facts.terms), _ByteMatcher(facts.spellings))
    return found


# -- verify --------------------------------------------------------------------------------------------


def verify(source_lake: Any, deidentified_lake: Any, *, secret: Any = None, ocr: bool = True,
           pairs: Mapping[str, str] | None = None, options: Iterable[str] = ()) -> VerifyReport:
    """Check the de-identified output ``deidentified_lake`` against ``source_lake`` (each a
    :class:`voxlake.Lake`, its URI, or a folder of DICOM files). ``secret`` (a
    :class:`~voxlake.deid.keys.Secret` or key file) makes the UID and Patient ID checks exact and keys
    the leaks' term hashes; ``ocr`` adds the pixel checks (Tesseract where text is screened; slow).

    Without ``pairs``, research instances are matched to their sources through the output's audit
    (``deid_audit`` in a lake, ``deid_audit.jsonl`` in a folder). ``pairs`` (research file → source
    file: ``instances.uri`` in a lake, a path in a folder, relative to it or not) checks the output
    of a tool that writes no audit (another de-identifier): each pair is judged against the Basic
    Profile with ``options``, as if voxlake had written it without redacting pixels."""
    from voxlake.deid.header import identity_of
    from voxlake.deid.keys import Secret
    from voxlake.deid.profile import Profile
    from voxlake.deid.scrub import Identity

    key = None if secret is None else secret if isinstance(secret, Secret) else Secret.read(secret)
    sources = _Sources(source_lake)
    matched, unmatched, research_sops, count = _research(deidentified_lake, sources, pairs,
                                                         ",".join(("basic", *options)))
    report = VerifyReport(instances=count)
    report.unmatched.extend(unmatched)
    source_sops = {sop for _, s, _ in matched if (sop := sources.sop.get(s))}
    profiles: dict[str, Profile] = {}
    identities: dict[tuple[str, str], Identity] = {}
    links: dict[str, dict[str, set[str]]] = {k: defaultdict(set) for k in ("study", "series", "patient")}
    back: dict[str, dict[str, set[str]]] = {k: defaultdict(set) for k in ("study", "series", "patient")}
    shifts: dict[str, set[int]] = defaultdict(set)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="VR lookup failed")  # unknown elements, read as UN
        for uri, source_uri, row in matched:
            chosen = [o for o in (row.get("profile") or "basic").split(",")[1:] if o]
            profile = profiles.setdefault(",".join(chosen), Profile(chosen))
            source_data = _open_bytes(source_uri)
            original = _parse(source_data, header_only=not ocr)
            data = _open_bytes(uri)
            ds = _parse(data)
            if original is None:
                unmatched_name = str(ds.get("SOPInstanceUID", "") or "") if ds is not None else ""
                report.unmatched.append(unmatched_name or uri)
                continue
            patient = _patient_key(original)
            identity = identities.get((patient, ",".join(chosen)))
            if identity is None:
                identity = Identity()
                for other in sources.patient_files(patient) or [source_uri]:
                    other_ds = _parse(_open_bytes(other), header_only=True) if other != source_uri else original
                    if other_ds is not None:
                        identity_of(other_ds, profile, identity)
                identities[(patient, ",".join(chosen))] = identity
            facts = _source_facts(original, profile, identity)
            report.checked["removed"] += sum(1 for c, _ in facts.terms.values() if c == "removed")
            if ds is None:  # not readable as DICOM: its bytes are all there is to search
                sop = uri
                report.leaks.append(Leak("research-unreadable", "removed", sop, "file", "", "", uri))
                _check_bytes(report, sop, uri, data, facts, set(), key)
                continue
            sop = str(ds.get("SOPInstanceUID", "") or "") or uri
            searchable = b"\0".join([_outside_bulk(data, ds), *_document_texts(ds)])
            found = _check_header(report, sop, uri, ds, facts, source_sops, research_sops, key, shifts, patient)
            _check_bytes(report, sop, uri, searchable, facts, found, key)
            new = tuple(str(ds.get(k, "") or "") for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"))
            old = tuple(str(original.get(k, "") or "") for k in ("SOPInstanceUID", "PatientID", "StudyInstanceUID",
                                                                   "SeriesInstanceUID"))
            for kind, was, now in (("study", old[2], new[1]), ("series", old[3], new[2]), ("patient", old[1], new[0])):
                if was:
                    links[kind][was].add(now)
                    back[kind][now].add(was)
            _check_keyed(report, key, sop, uri, (new[0], new[1], new[2], str(ds.get("SOPInstanceUID", "") or "")), old)
            if ocr:
                _check_pixels(report, sop, uri, ds, original, facts, row, key)
    for kind, category in (("study", "uid_changed_consistent"), ("series", "uid_changed_consistent"),
                           ("patient", "patient_id_consistent")):
        report.checked[category] += len(links[kind])
        for was, news in links[kind].items():
            if len(news) > 1:
                report.leaks.append(Leak(f"{kind}-split", category, sorted(news)[0], kind, f"{len(news)} values"))
            if any(n == was for n in news):
                report.leaks.append(Leak(f"{kind}-unchanged", category, "", kind))
        for now, olds in back[kind].items():
            if len(olds) > 1:
                report.leaks.append(Leak(f"{kind}-merged", category, now, kind, f"{len(olds)} sources"))
    for patient, days in shifts.items():
        if days and max(days) - min(days) > 1:
            report.leaks.append(Leak("date-shift-inconsistent", "date_shifted", "", "patient", patient and "PatientID"))
    return report


def _check_header(report: VerifyReport, sop: str, uri: str, ds: Any, facts: _Source, source_sops: set[str],
                  research_sops: set[str], key: Any, shifts: dict[str, set[int]], patient: str) -> set[str]:
    """The element walk of the research instance; returns the terms it found."""
    from voxlake.deid.scrub import _parse_date, fold, phi_spans

    matcher, _ = _matchers(facts)
    found: set[str] = set()
    seen: set[tuple[str, str, str]] = set()

    def leak(kind: str, category: str, path: str, origin: str, term: str = "") -> None:
        if (kind, path, term) not in seen:
            seen.add((kind, path, term))
            report.leaks.append(Leak(kind, category, sop, path, origin, term and term_hash(term, key), uri))

    report.checked["uid_changed_consistent"] += len(facts.uids)
    research_paths: dict[str, list[str]] = {}
    top: dict[str, list[str]] = {}
    for path, tag, vr, values, _item in _walk(ds):
        research_paths[path] = values
        if "." not in path and "[" not in path:
            top[tag] = values
        for s in values:
            if vr == "UI" or s in facts.uids:
                if s in facts.uids:
                    leak("uid-retained", "uid_changed_consistent", path, "a source UID")
                continue
            text = fold(s)
            terms = matcher.find(text)
            for t in terms:
                found.add(t)
                category, origin = facts.terms[t]
                leak("header-value", category, path, origin, t)
            if facts.births:  # the birth date in any spelling
                for start, end, kind in phi_spans(s):
                    parsed = _parse_date(s[start:end]) if kind == "date" else None
                    if parsed is not None and parsed[0] in facts.births and fold(s[start:end]) not in terms:
                        leak("birth-date", "removed", path, "PatientBirthDate", s[start:end])
        if tag == "00081155" and values:
            source = facts.by_path.get(path)
            was = str(source[2][0]) if source and source[2] else ""
            for s in values:
                if s not in research_sops and was in source_sops:
                    leak("broken-reference", "uid_changed_consistent", path, "a source reference that resolved")
                if key is not None and was and not was.startswith(_STANDARD_UID) and s != key.uid(was):
                    leak("uid-inconsistent", "uid_changed_consistent", path, "")
    for tag, values in facts.kept.items():
        report.checked["retained"] += 1
        if [v for v in top.get(tag, []) if v] != values:
            report.leaks.append(Leak("retained-changed", "retained", sop, _name(tag), _name(tag), "", uri))
    for path, old in facts.shifted.items():
        report.checked["date_shifted"] += 1
        new = research_paths.get(path) or []
        try:
            a, b = datetime.strptime(old[:8], "%Y%m%d"), datetime.strptime(str(new[0])[:8], "%Y%m%d")
        except (ValueError, IndexError):
            continue  # emptied or removed: nothing left to leak
        if a == b:
            report.leaks.append(Leak("date-not-shifted", "date_shifted", sop, path, path, "", uri))
        else:
            shifts[patient].add((a - b).days)
    return found


def _check_bytes(report: VerifyReport, sop: str, uri: str, data: bytes, facts: _Source, found: set[str],
                 key: Any) -> None:
    """Terms in the research file's bytes (outside pixel data) that the element walk did not find."""
    _, matcher = _matchers(facts)
    for term, encoding in sorted(matcher.find(data).items()):
        if term not in found:
            category, origin = facts.terms[term]
            report.leaks.append(Leak("bytes", category, sop, f"file bytes ({encoding})", origin,
                                     term_hash(term, key), uri))


def _check_keyed(report: VerifyReport, key: Any, sop: str, uri: str, new: tuple[str, str, str, str],
                 old: tuple[str, str, str, str]) -> None:
    if key is None:
        return
    pid, study, series, new_sop = new
    report.checked["patient_id_consistent"] += 1
    if old[1] and pid != key.patient_id(old[1]):
        report.leaks.append(Leak("patient-id-not-keyed", "patient_id_consistent", sop, "PatientID", "PatientID",
                                 "", uri))
    for value, was, where in ((new_sop, old[0], "SOPInstanceUID"), (study, old[2], "StudyInstanceUID"),
                              (series, old[3], "SeriesInstanceUID")):
        if was and value != key.uid(was):
            report.leaks.append(Leak("uid-inconsistent", "uid_changed_consistent", sop, where, where, "", uri))


# -- pixels ----------------------------------------------------------------------------------------------


def _planes(ds: Any) -> Iterator[tuple[str, Any]]:
    """(label, 2-D or RGB array) of every frame, overlay plane and icon image; raises
    :class:`~voxlake.deid.errors.DeidentificationError` when the pixel data cannot be decoded."""
    import numpy as np
    from pydicom.pixels import unpack_bits

    from voxlake.deid.pixels import _frames

    if "PixelData" in ds:
        for i, frame in enumerate(_frames(ds)):
            yield f"PixelData frame {i}", frame
    for group in range(0x6000, 0x6020, 2):
        data, rows, cols = ds.get((group, 0x3000)), ds.get((group, 0x0010)), ds.get((group, 0x0011))
        if data is None or rows is None or cols is None or not isinstance(data.value, bytes | bytearray):
            continue
        n = int(rows.value) * int(cols.value)
        bits = unpack_bits(bytes(data.value))[:n]
        if bits.size == n:
            yield f"overlay {group:04X}", (bits.reshape(int(rows.value), int(cols.value)) * 255).astype(np.uint8)
    for i, icon in enumerate(ds.get("IconImageSequence") or []):
        try:
            dtype = np.uint8 if int(icon.BitsAllocated) == 8 else np.uint16
            samples = int(icon.get("SamplesPerPixel") or 1)
            shape = (int(icon.Rows), int(icon.Columns), samples) if samples > 1 else (int(icon.Rows), int(icon.Columns))
            yield f"icon {i}", np.frombuffer(bytes(icon.PixelData), dtype)[: int(np.prod(shape))].reshape(shape)
        except Exception:
            continue


def _ocr_terms(facts: _Source) -> dict[str, str]:
    """Normalised single-word terms (upper case, letters and digits) of 4+ characters → the term."""
    from voxlake.deid.pixels import _norm

    out: dict[str, str] = {}
    for t in facts.terms:
        if not re.search(r"\s", t) and len(n := _norm(t)) >= 4:
            out.setdefault(n, t)
    return out


def _ocr_match(word: str, terms: Mapping[str, str]) -> str | None:
    """The term an OCR word reads as: exactly for 4-5 characters, allowing for OCR errors for more."""
    from voxlake.deid.pixels import _norm, matches_deny

    w = _norm(word)
    if len(w) < 4:
        return None
    if w in terms:
        return terms[w]
    for n, t in terms.items():
        if len(n) >= 6 and len(w) >= 5 and matches_deny(w, [n]):
            return t
    return None


def _check_pixels(report: VerifyReport, sop: str, uri: str, ds: Any, original: Any, facts: _Source,
                  audit_row: Mapping[str, Any], key: Any) -> None:
    """OCR where the screen finds text, in every frame, overlay and icon, against the terms; source and
    research pixels equal outside the audited boxes."""
    import numpy as np

    from voxlake.deid.errors import DeidentificationError
    from voxlake.deid.pixels import _frames, ocr_words
    from voxlake.deid.screen import screen_frame

    terms = _ocr_terms(facts)
    try:
        planes = list(_planes(ds))
    except DeidentificationError:
        report.leaks.append(Leak("pixels-unreadable", "pixels_retained", sop, "PixelData", "", "", uri))
        return
    if not planes:
        return
    report.checked["pixels_hidden"] += 1
    for label, plane in planes:
        regions = screen_frame(plane)
        if not regions:
            continue  # noise, anatomy, nothing rendered: no text to read
        for w in ocr_words(plane):
            if w.conf < _MIN_OCR_CONFIDENCE:
                continue
            cx, cy, m = w.x + w.w / 2, w.y + w.h / 2, max(2, w.h // 2)
            if not any(r.x - m <= cx <= r.x + r.w + m and r.y - m <= cy <= r.y + r.h + m for r in regions):
                continue
            term = _ocr_match(w.text, terms)
            if term is not None:
                report.leaks.append(Leak("pixel-text", "pixels_hidden", sop, f"{label} box ({w.x},{w.y},{w.w},{w.h})",
                                         facts.terms[term][1], term_hash(term, key), uri))
    if "PixelData" not in ds or "PixelData" not in original:
        return
    try:
        new_frames, old_frames = _frames(ds), _frames(original)
    except DeidentificationError:
        report.leaks.append(Leak("pixels-unreadable", "pixels_retained", sop, "PixelData", "", "", uri))
        return
    report.checked["pixels_retained"] += 1
    if new_frames.shape != old_frames.shape:
        report.leaks.append(Leak("pixels-reshaped", "pixels_retained", sop, "PixelData", "", "", uri))
        return
    keep = np.ones(new_frames.shape[:3], dtype=bool)
    for b in audit_row.get("pixel_boxes") or []:
        frames = slice(None) if b["frame"] < 0 else slice(b["frame"], b["frame"] + 1)
        keep[frames, max(0, b["y"]):b["y"] + b["h"], max(0, b["x"]):b["x"] + b["w"]] = False
    if not np.array_equal(new_frames[keep], old_frames[keep]):
        report.leaks.append(Leak("pixels-changed", "pixels_retained", sop, "PixelData outside the redacted boxes",
                                 "", "", uri))


def format_report(report: VerifyReport) -> str:
    """The report as text for a terminal."""
    lines = [f"{'PASS' if report.passed else 'FAIL'}: {report.instances} research instances, "
             f"{len(report.leaks)} leaks, {len(report.unmatched)} without an audited source"]
    failed = report.failed
    for c in CATEGORIES:
        lines.append(f"  {c:<24} {'pass' if not failed[c] else 'FAIL'}  checked {report.checked[c]}, "
                     f"failed {failed[c]}")
    for leak in report.leaks:
        lines.append(f"  {leak.kind}: {leak.instance or '-'} {leak.location}" +
                     (f" (from {leak.source})" if leak.source else ""))
    for sop in report.unmatched:
        lines.append(f"  unmatched: {sop} has no written audit row whose source is in the source")
    return "\n".join(lines)
