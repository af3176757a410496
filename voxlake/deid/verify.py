"""``voxlake deid verify``: prove that a research lake holds none of its source lake's PHI.

Research instances are matched to their sources through the research lake's ``deid_audit`` table
(``source_sha256`` is the source lake's ``instances.sha256``; ``SOPInstanceUID`` the research one).
For each pair:

* **PHI values** of the source header (every depth, private blocks included) whose attribute the
  profile of the run (the audit's ``profile`` column) does not keep: person names in their variants
  (components, given-family order, "family, given", case and accents ignored), IDs and other
  identifying text, dates in the usual spellings. Each is searched in the whole research header
  (the ``meta`` DICOM JSON, file meta and every sequence) as a word, case- and accent-insensitive.
  Values that the source also holds in an attribute the profile keeps are look-alikes, not PHI.
* **UIDs**: no source UID (outside the standard's ``1.2.840.10008``) survives anywhere; each source
  Study, Series and Patient ID maps to exactly one research value and back (with the secret, to
  exactly the keyed value); every ReferencedSOPInstanceUID that resolved in the source resolves in the
  research lake.
* **Dates** the profile shifts differ from the source, by one offset per patient (±1 day for the
  time of day).
* **Kept attributes** (top level, the profile's K or unlisted) keep their value.
* **Pixels** (``ocr=True``): Tesseract reads every frame of the research image and its words are
  matched, allowing for OCR errors, against the source's PHI (:func:`voxlake.deid.pixels.deny_terms`);
  and the decoded pixels equal the source's outside the boxes the audit says were redacted.

Each failure is a :class:`Leak` with the research instance and the location (a tag path, or a frame
and box); it never carries the PHI value itself, only the source attribute it came from. The summary
uses the categories of the MIDI-B benchmark.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["CATEGORIES", "Leak", "VerifyReport", "verify"]

CATEGORIES = ("removed", "retained", "date_shifted", "uid_changed_consistent", "patient_id_consistent",
              "pixels_hidden", "pixels_retained")
_STANDARD_UID = "1.2.840.10008."
_PUBLIC_UIDS = {"00020010", "00020012", "00080112", "0008010C", "00080117", "00080118"}  # meta, coding schemes
# Written by the de-identification or the pixel step itself; not "retained" attributes.
_CHANGED_ON_PURPOSE = {"00120062", "00120063", "00120064", "00280301", "00280303", "00282110", "00282112",
                       "00282114", "00080016"}
_SOURCE_ONLY = {"7FE00010", "7FE00008", "7FE00009"}  # DICOM JSON tags are upper-case hex
_DUMMIES = {"ANONYMOUS", "UNKNOWN", "NONE", "REMOVED", "N/A"}
_SCRUBBED = {"LO", "SH", "ST", "LT", "UT", "UC", "CS", "AE"}


@dataclass(frozen=True, slots=True)
class Leak:
    """One failed check: what kind, its MIDI-B category, the research instance (new SOP Instance
    UID), where in it, and which source attribute the value came from (never the value)."""

    kind: str
    category: str
    instance: str
    location: str
    source: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "category": self.category, "instance": self.instance,
                "location": self.location, "source": self.source}


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


# -- DICOM JSON -------------------------------------------------------------------------------------


def _name(tag: str) -> str:
    from pydicom.datadict import keyword_for_tag

    t = int(tag, 16)
    return (keyword_for_tag(t) if t >> 16 & 1 == 0 else "") or f"({tag[:4].upper()},{tag[4:].upper()})"


def _walk(meta: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str, str, list[Any]]]:
    """(path, tag, vr, values) for every element at every depth; PN values as strings."""
    for tag, elem in meta.items():
        vr, values = elem.get("vr", ""), elem.get("Value") or []
        path = f"{prefix}{_name(tag)}"
        if vr == "SQ":
            yield path, tag, vr, []
            for i, item in enumerate(values):
                if isinstance(item, dict):
                    yield from _walk(item, f"{path}[{i}].")
            continue
        if vr == "PN":
            values = ["=".join(str(v.get(g, "")) for g in ("Alphabetic", "Ideographic", "Phonetic")
                               if v.get(g)) if isinstance(v, dict) else str(v) for v in values]
        yield path, tag, vr, values


def _fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


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


# -- the source side ------------------------------------------------------------------------------


@dataclass
class _Source:
    terms: dict[str, tuple[str, str]]  # term → (category, source path)
    uids: set[str]
    by_path: dict[str, tuple[str, str, list[Any]]]  # path → (tag, vr, values)
    kept: dict[str, list[Any]]  # top-level kept attributes: tag → values
    shifted: dict[str, str]  # path → source date, for C dates


def _source_facts(meta: dict[str, Any], profile: Any) -> _Source:
    from voxlake.deid.header import _STRUCTURAL, _is_descriptor
    from voxlake.deid.profile import Action, Option

    retain_uids = Option.RETAIN_UIDS in profile.options
    terms: dict[str, tuple[str, str]] = {}
    uids: set[str] = set()
    by_path: dict[str, tuple[str, str, list[Any]]] = {}
    kept: dict[str, list[Any]] = {}
    shifted: dict[str, str] = {}
    look_alikes: set[str] = set()
    for path, tag, vr, values in _walk(meta):
        by_path[path] = (tag, vr, values)
        if vr == "SQ":
            continue
        group = int(tag[:4], 16)
        private = group % 2 == 1
        if group == 2 and vr != "UI":
            continue
        action = Action.REMOVE if private else profile.action(int(tag, 16))
        strings = [str(v) for v in values if v is not None]
        if action is None and vr in _SCRUBBED and _name(tag) not in _STRUCTURAL:
            continue  # unlisted free text is scrubbed: neither kept verbatim nor PHI as a whole
        if vr == "UI":
            if not retain_uids and tag not in _PUBLIC_UIDS:
                uids.update(s for s in strings if s and not s.startswith(_STANDARD_UID))
            continue
        if action in (None, Action.KEEP) and vr != "PN":
            look_alikes.update(s.strip().upper() for s in strings)
            if "." not in path and not private and tag not in _CHANGED_ON_PURPOSE and not tag.startswith("0028") \
                    and tag not in _SOURCE_ONLY and vr not in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
                kept[tag] = values
            continue
        if vr == "PN":
            for s in strings:
                for t in _name_variants(s):
                    terms.setdefault(t, ("removed", path))
        elif vr in ("DA", "DT"):
            category = "date_shifted" if action is Action.CLEAN else "removed"
            for s in strings:
                for t in _date_variants(s):
                    terms.setdefault(t, (category, path))
            if action is Action.CLEAN and vr == "DA" and strings:
                shifted[path] = strings[0]
        elif vr in ("LO", "SH", "LT", "ST", "UT", "UC", "AE", "AS") and action is not Action.CLEAN \
                and (private or not _is_descriptor(int(tag, 16))):
            # a description is free text, checked through the names, IDs and dates it may hold
            for s in strings:
                terms.setdefault(s.strip(), ("removed", path))
    # a value the source also holds where the profile keeps it (a name word that is also a model name,
    # a protocol that is also a code meaning) cannot be told from the kept copy: not checkable as PHI
    kept_text = "\n".join(_fold(v).lower() for v in look_alikes)
    terms = {t: c for t, c in terms.items() if _meaningful(t) and t.strip().upper() not in look_alikes
             and not re.search(rf"(?<![0-9a-z]){re.escape(_fold(t).lower())}(?![0-9a-z])", kept_text)}
    return _Source(terms, uids, by_path, kept, shifted)


def _regex(terms: dict[str, tuple[str, str]]) -> re.Pattern[str] | None:
    words = sorted({_fold(t).lower() for t in terms}, key=len, reverse=True)
    if not words:
        return None
    return re.compile("|".join(rf"(?<![0-9a-z]){re.escape(w)}(?![0-9a-z])" for w in words))


# -- verify --------------------------------------------------------------------------------------------


def verify(source_lake: Any, deidentified_lake: Any, *, secret: Any = None, ocr: bool = True,
           pairs: Mapping[str, str] | None = None, options: Iterable[str] = ()) -> VerifyReport:
    """Check the research lake ``deidentified_lake`` against ``source_lake`` (each a
    :class:`voxlake.Lake` or its URI). ``secret`` (a :class:`~voxlake.deid.keys.Secret` or key file)
    makes the UID and Patient ID checks exact; ``ocr`` adds the pixel checks (Tesseract; slow).

    ``pairs`` (research ``instances.uri`` → source ``instances.uri``) checks the output of a tool
    that writes no ``deid_audit`` table (another de-identifier): each pair is judged against the
    Basic Profile with ``options``, as if voxlake had written it without redacting pixels."""
    import orjson

    import voxlake
    from voxlake.deid.keys import Secret
    from voxlake.deid.profile import Profile

    src = source_lake if hasattr(source_lake, "sql") else voxlake.open(str(source_lake))
    out = deidentified_lake if hasattr(deidentified_lake, "sql") else voxlake.open(str(deidentified_lake))
    key = None if secret is None else secret if isinstance(secret, Secret) else Secret.read(secret)
    research = out.sql("SELECT SOPInstanceUID, PatientID, StudyInstanceUID, SeriesInstanceUID, uri, meta, "
                       "has_pixels FROM instances ORDER BY SOPInstanceUID, uri").fetchall()
    report = VerifyReport(instances=len(research))
    if pairs is None:
        matched, unmatched = _audited(src, out, research)
    else:
        matched, unmatched = _paired(src, research, pairs, ",".join(("basic", *options)))
    report.unmatched.extend(unmatched)
    # an instance without a SOP Instance UID (some tools remove it) is named by its file
    joined = [(((r[0] or r[4]), *r[1:5], orjson.loads(r[5]), r[6]), s, row) for r, s, row in matched]
    research_sops = {r[0] for r in research if r[0]}
    source_sops = {s[1] for _, s, _ in joined}
    profiles: dict[str, Profile] = {}
    links: dict[str, dict[str, set[str]]] = {k: defaultdict(set) for k in ("study", "series", "patient")}
    back: dict[str, dict[str, set[str]]] = {k: defaultdict(set) for k in ("study", "series", "patient")}
    shifts: dict[str, set[int]] = defaultdict(set)
    for (sop, pid, study, series, uri, meta, has_pixels), s, row in joined:
        chosen = [o for o in (row.get("profile") or "basic").split(",")[1:] if o]
        profile = profiles.setdefault(",".join(chosen), Profile(chosen))
        facts = _source_facts(orjson.loads(s[6]), profile)
        _check_header(report, sop, meta, facts, source_sops, research_sops, key, shifts, s[2] or s[3])
        for kind, old, new in (("study", s[3], study), ("series", s[4], series), ("patient", s[2], pid)):
            if old:
                links[kind][old].add(new or "")
                back[kind][new or ""].add(old)
        _check_keyed(report, key, sop, (pid, study, series), s)
        if ocr and has_pixels:
            _check_pixels(report, sop, uri, s[5], row)
    for kind, category in (("study", "uid_changed_consistent"), ("series", "uid_changed_consistent"),
                           ("patient", "patient_id_consistent")):
        report.checked[category] += len(links[kind])
        for old, news in links[kind].items():
            if len(news) > 1:
                report.leaks.append(Leak(f"{kind}-split", category, sorted(news)[0], kind, f"{len(news)} values"))
            if any(n == old for n in news):
                report.leaks.append(Leak(f"{kind}-unchanged", category, "", kind))
        for new, olds in back[kind].items():
            if len(olds) > 1:
                report.leaks.append(Leak(f"{kind}-merged", category, new, kind, f"{len(olds)} sources"))
    for patient, days in shifts.items():
        if days and max(days) - min(days) > 1:
            report.leaks.append(Leak("date-shift-inconsistent", "date_shifted", "", "patient", patient and "PatientID"))
    return report


_Row = tuple[Any, ...]


def _audited(src: Any, out: Any, research: list[_Row]) -> tuple[list[tuple[_Row, _Row, dict[str, Any]]], list[str]]:
    """(research row, source row, audit row) through the research lake's ``deid_audit`` table;
    and the research instances it does not account for."""
    from deltalake import DeltaTable

    from voxlake.errors import InvalidArgumentError
    from voxlake.lake import storage

    audit_uri = storage.join(out.uri, "deid_audit")
    try:
        audit = DeltaTable(audit_uri, storage_options=storage.delta_storage_options(out.uri)).to_pyarrow_table()
    except Exception as exc:
        raise InvalidArgumentError(f"{out.uri} has no deid_audit table; is it a research lake written by "
                                   f"voxlake deid? (or give verify the pairs) ({type(exc).__name__})") from None
    audit_rows: dict[str, dict[str, Any]] = {}
    for row in sorted(audit.to_pylist(), key=lambda r: r["deidentified_at"]):
        if row["status"] == "written" and row["SOPInstanceUID"]:
            audit_rows[row["SOPInstanceUID"]] = row
    shas = sorted({r["source_sha256"] for r in audit_rows.values() if r["source_sha256"]})
    sources = {row[0]: row for row in src.connect().execute(
        "SELECT sha256, SOPInstanceUID, PatientID, StudyInstanceUID, SeriesInstanceUID, uri, meta "
        "FROM instances WHERE sha256 IN (SELECT unnest($1::VARCHAR[]))", [shas]).fetchall()}
    matched, unmatched = [], []
    for r in research:
        row = audit_rows.get(r[0])
        s = sources.get(row["source_sha256"]) if row else None
        if s is None:
            unmatched.append(r[0])
        else:
            matched.append((r, s, row))
    return matched, unmatched


def _paired(src: Any, research: list[_Row], pairs: Mapping[str, str],
            profile: str) -> tuple[list[tuple[_Row, _Row, dict[str, Any]]], list[str]]:
    """(research row, source row, audit-like row) from explicit research → source file pairs."""
    wanted = sorted(set(pairs.values()))
    sources = {row[5]: row for row in src.connect().execute(
        "SELECT sha256, SOPInstanceUID, PatientID, StudyInstanceUID, SeriesInstanceUID, uri, meta "
        "FROM instances WHERE uri IN (SELECT unnest($1::VARCHAR[]))", [wanted]).fetchall()}
    matched, unmatched = [], []
    for r in research:
        s = sources.get(pairs.get(r[4], ""))
        if s is None:
            unmatched.append(r[0] or r[4])
        else:
            matched.append((r, s, {"profile": profile, "pixel_boxes": []}))
    return matched, unmatched


def _check_header(report: VerifyReport, sop: str, meta: dict[str, Any], facts: _Source, source_sops: set[str],
                  research_sops: set[str], key: Any, shifts: dict[str, set[int]], patient: str) -> None:
    regex = _regex(facts.terms)
    lowered = {_fold(t).lower(): c for t, c in facts.terms.items()}
    report.checked["removed"] += sum(1 for c, _ in facts.terms.values() if c == "removed")
    report.checked["uid_changed_consistent"] += len(facts.uids)
    research_paths: dict[str, list[Any]] = {}
    for path, tag, vr, values in _walk(meta):
        research_paths[path] = values
        strings = [str(v) for v in values if v is not None and not isinstance(v, dict | list)]
        for s in strings:
            if vr == "UI" or s in facts.uids:
                if s in facts.uids:
                    report.leaks.append(Leak("uid-retained", "uid_changed_consistent", sop, path,
                                             "a source UID"))
                continue
            if regex is None:
                continue
            for m in regex.finditer(_fold(s).lower()):
                category, origin = lowered.get(m.group(0), ("removed", ""))
                report.leaks.append(Leak("header-value", category, sop, path, origin))
        if tag == "00081155" and strings:
            source = facts.by_path.get(path)
            was = str(source[2][0]) if source and source[2] else ""
            for s in strings:
                if s not in research_sops and was in source_sops:
                    report.leaks.append(Leak("broken-reference", "uid_changed_consistent", sop, path, "a source "
                                             "reference that resolved"))
                if key is not None and was and not was.startswith(_STANDARD_UID) and s != key.uid(was):
                    report.leaks.append(Leak("uid-inconsistent", "uid_changed_consistent", sop, path))
    for tag, values in facts.kept.items():
        report.checked["retained"] += 1
        if (meta.get(tag, {}).get("Value") or []) != (values or []):
            report.leaks.append(Leak("retained-changed", "retained", sop, _name(tag), _name(tag)))
    for path, old in facts.shifted.items():
        report.checked["date_shifted"] += 1
        new = research_paths.get(path) or []
        try:
            a, b = datetime.strptime(old[:8], "%Y%m%d"), datetime.strptime(str(new[0])[:8], "%Y%m%d")
        except (ValueError, IndexError):
            continue  # emptied or removed: nothing left to leak
        if a == b:
            report.leaks.append(Leak("date-not-shifted", "date_shifted", sop, path, path))
        else:
            shifts[patient].add((a - b).days)


def _check_keyed(report: VerifyReport, key: Any, sop: str, new: tuple[str, str, str], s: tuple[Any, ...]) -> None:
    if key is None:
        return
    pid, study, series = new
    report.checked["patient_id_consistent"] += 1
    if s[2] and pid != key.patient_id(s[2]):
        report.leaks.append(Leak("patient-id-not-keyed", "patient_id_consistent", sop, "PatientID", "PatientID"))
    for value, old, where in ((sop, s[1], "SOPInstanceUID"), (study, s[3], "StudyInstanceUID"),
                              (series, s[4], "SeriesInstanceUID")):
        if old and value != key.uid(old):
            report.leaks.append(Leak("uid-inconsistent", "uid_changed_consistent", sop, where, where))


def _check_pixels(report: VerifyReport, sop: str, uri: str, source_uri: str, audit_row: dict[str, Any]) -> None:
    """OCR every research frame against the source's deny-list; source and research pixels equal
    outside the audited boxes."""
    import numpy as np
    import pydicom

    from voxlake.deid.errors import DeidentificationError
    from voxlake.deid.pixels import _frames, deny_terms, matches_deny, ocr_words
    from voxlake.deid.run import _open

    with _open(uri) as f:
        out = pydicom.dcmread(f)
    with _open(source_uri) as f:
        original = pydicom.dcmread(f)
    terms = deny_terms(original)
    try:
        new_frames, old_frames = _frames(out), _frames(original)
    except DeidentificationError:
        report.leaks.append(Leak("pixels-unreadable", "pixels_retained", sop, "PixelData"))
        return
    report.checked["pixels_hidden"] += 1
    for i, frame in enumerate(new_frames):
        for w in ocr_words(frame):
            if w.conf >= 0 and matches_deny(w.text, terms):
                report.leaks.append(Leak("pixel-text", "pixels_hidden", sop,
                                         f"PixelData frame {i} box ({w.x},{w.y},{w.w},{w.h})", "header value"))
    report.checked["pixels_retained"] += 1
    if new_frames.shape != old_frames.shape:
        report.leaks.append(Leak("pixels-reshaped", "pixels_retained", sop, "PixelData"))
        return
    keep = np.ones(new_frames.shape[:3], dtype=bool)
    for b in audit_row.get("pixel_boxes") or []:
        frames = slice(None) if b["frame"] < 0 else slice(b["frame"], b["frame"] + 1)
        keep[frames, b["y"]:b["y"] + b["h"], b["x"]:b["x"] + b["w"]] = False
    if not np.array_equal(new_frames[keep], old_frames[keep]):
        report.leaks.append(Leak("pixels-changed", "pixels_retained", sop, "PixelData outside the redacted boxes"))


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
        lines.append(f"  unmatched: {sop} has no written deid_audit row whose source is in the source lake")
    return "\n".join(lines)

