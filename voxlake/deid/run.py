"""De-identify files, folders and lakes; write the research lake, its ``deid_audit`` table, and
(only when asked, outside the research lake) the re-identification mapping.

A file that cannot be read, or that may carry burned-in text when the Clean Pixel Data option is not
chosen, is reported and left out: nothing reaches the output un-de-identified. With
``clean-pixel-data``, every image that does not declare Burned In Annotation NO is cleaned
(:mod:`voxlake.deid.pixels`: rules, ultrasound regions, OCR) and its redacted boxes are audited;
one whose pixels cannot be decoded or written back is left out. With
``clean-recognizable-visual-features``, every instance that may show the patient's face or body
(:mod:`voxlake.deid.visual`: photographs, volumes of the head, volumes of an unknown region) is left
out with the reason, as voxlake does not deface; the files written are marked Recognizable Visual
Features NO.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from struct import error as struct_error
from typing import Any

from voxlake.deid.errors import DeidentificationError
from voxlake.deid.keys import Secret
from voxlake.deid.profile import Option, Profile
from voxlake.errors import InvalidArgumentError, MissingExtraError

__all__ = ["DeidSummary", "FileOutcome", "deidentify_file", "deidentify_files", "deidentify_lake"]

AUDIT_TABLE = "deid_audit"
# Objects whose pixels usually hold text even when Burned In Annotation is absent.
_TEXT_IN_PIXELS_MODALITIES = frozenset({"US", "SC", "OT", "XC", "ES", "GM", "SM", "DOC"})


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """What happened to one source instance. ``status`` is ``written``, ``excluded`` (left out on
    purpose, see ``reason``), ``skipped`` (not DICOM) or ``error`` (unreadable)."""

    source: str
    status: str
    reason: str = ""
    dest: str = ""
    source_fingerprint: str = ""
    SOPInstanceUID: str = ""
    StudyInstanceUID: str = ""
    SeriesInstanceUID: str = ""
    audit: tuple[tuple[str, str, str], ...] = ()
    boxes: tuple[tuple[int, int, int, int, int, str], ...] = ()  # (frame, x, y, w, h, reason); frame -1: all
    mapping: tuple[tuple[str, str, str], ...] = ()  # (kind, original, replacement), only when asked
    source_sha256: str = ""


@dataclass(slots=True)
class DeidSummary:
    """A run's counts; ``outcomes`` has every file."""

    run_id: str
    out: str
    files: int = 0
    written: int = 0
    excluded: int = 0
    skipped: int = 0
    errors: int = 0
    seconds: float = 0.0
    ingested: int = 0
    outcomes: list[FileOutcome] = field(default_factory=list)

    def add(self, outcome: FileOutcome) -> None:
        self.outcomes.append(outcome)
        self.files += 1
        if outcome.status == "written":
            self.written += 1
        elif outcome.status == "excluded":
            self.excluded += 1
        elif outcome.status == "skipped":
            self.skipped += 1
        else:
            self.errors += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "out": self.out, "files": self.files, "written": self.written,
            "excluded": self.excluded, "skipped": self.skipped, "errors": self.errors, "ingested": self.ingested,
            "seconds": round(self.seconds, 3),
            "files_per_second": round(self.files / self.seconds, 1) if self.seconds > 0 else None,
            "problems": [{"source": o.source, "status": o.status, "reason": o.reason}
                         for o in self.outcomes if o.status not in ("written", "skipped")],
        }


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs; picklable, so Spark executors or processes rebuild the same
    de-identifier from it (no shared state)."""

    options: tuple[str, ...]
    recipe: Any
    secret: Secret
    allow_burned_in: bool
    with_mapping: bool
    clean_pixels: bool = False

    @property
    def clean_visual(self) -> bool:
        return Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES.value in self.options

    def deidentifier(self) -> Any:
        """The job's de-identifier, built once per process (building a profile costs about 1 ms,
        a fifth of a file's work)."""
        from voxlake.deid.header import Deidentifier

        r = self.recipe
        key = (self.options, self.secret,
               None if r is None else (tuple(sorted(r.actions.items())), r.safe_private, r.options))
        found = _DEIDENTIFIERS.get(key)
        if found is None:
            if len(_DEIDENTIFIERS) > 8:
                _DEIDENTIFIERS.clear()
            found = _DEIDENTIFIERS[key] = Deidentifier(Profile(self.options, recipe=self.recipe), self.secret)
        return found


_DEIDENTIFIERS: dict[Any, Any] = {}


def _profile(profile: str, options: Iterable[str | Option], recipe: Any) -> Profile:
    if str(profile).lower() != "basic":
        raise InvalidArgumentError(f"profile must be one of basic; got {profile!r}")
    return Profile(options, recipe=recipe)


def _read_recipe(recipe: Any) -> Any:
    from voxlake.deid.profile import Recipe

    if recipe is None or isinstance(recipe, Recipe):
        return recipe
    return Recipe.read(recipe)


_NOT_CLEANED = " and pixel cleaning is not chosen (--option clean-pixel-data cleans it)"


def _burned_in_reason(ds: Any) -> str:
    flag = str(ds.get("BurnedInAnnotation", "") or "").upper()
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return ""
    if flag == "YES":
        return f"Burned In Annotation is YES{_NOT_CLEANED}"
    if flag != "NO" and str(ds.get("SOPClassUID", "")).startswith("1.2.840.10008.5.1.4.1.1.7"):
        return f"Secondary Capture images usually hold burned-in text (Burned In Annotation not NO){_NOT_CLEANED}"
    if flag != "NO" and str(ds.get("Modality", "")) in _TEXT_IN_PIXELS_MODALITIES:
        return (f"{ds.get('Modality')} images usually hold burned-in text (Burned In Annotation not NO)"
                f"{_NOT_CLEANED}")
    return ""


def _screen_reason(ds: Any) -> str:
    """Why the pixels must not be written as they are: text found by the screen (whatever Burned In
    Annotation says), or pixels the screen cannot decode. "" when they are clear."""
    from voxlake.deid.screen import screen_dataset

    try:
        regions = screen_dataset(ds)
    except MissingExtraError:
        raise
    except Exception as exc:
        return (f"pixel data cannot be decoded to look for burned-in text ({type(exc).__name__}){_NOT_CLEANED}")
    if not regions:
        return ""
    frames = sorted({r.frame for r in regions})
    where = f"frame {frames[0]}" if len(frames) == 1 else f"{len(frames)} frames"
    return (f"text found in the pixels ({len(regions)} text line{'s' * (len(regions) > 1)}, {where}; "
            f"Burned In Annotation {str(ds.get('BurnedInAnnotation', '') or 'absent').upper()}){_NOT_CLEANED}")


def _pixel_terms(identity: Any) -> set[str]:
    """The patient's deny-listed words and digit runs, as the pixel step compares OCR words."""
    if identity is None:
        return set()
    from voxlake.deid.pixels import _norm

    return {t for t in (_norm(w) for w in (*identity.words, *identity.digits)) if len(t) >= 3}


def _open(uri: str) -> Any:
    if "://" in uri:
        import fsspec

        return fsspec.open(uri, "rb").open()
    return open(uri, "rb")


MAX_SEQUENCE_DEPTH = 64
"""Sequences nested deeper than this are left out with the reason: no real object comes near (SR
trees and functional groups stay under ten levels), and pydicom's writer recurses per level."""


def _one(job: _Job, source: str, dest: str | None, out_root: str | None,
         identity: Any = None) -> FileOutcome:
    """De-identify one file; never raises for a bad file: whatever goes wrong is the file's
    outcome (``error``, with the reason), and the run goes on."""
    try:
        return _one_file(job, source, dest, out_root, identity)
    except MissingExtraError:
        raise  # tesseract or pytesseract missing: every file would fail, say so once
    except Exception as exc:  # RecursionError, MemoryError from a decoder, a pydicom surprise
        return FileOutcome(source, "error", f"cannot be processed: {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200]


def _read(source: str, *, stop_before_pixels: bool = False) -> tuple[Any, str]:
    """The dataset and the SHA-256 of the file's bytes."""
    import hashlib
    import io

    import pydicom

    with _open(source) as f:
        data = f.read()
    return pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=stop_before_pixels), \
        hashlib.sha256(data).hexdigest()


def _depth(ds: Any, limit: int) -> int:
    """How deep sequences nest in ``ds``, counting up to ``limit + 1`` (an explicit stack)."""
    from voxlake.deid.header import _raw_vr

    deepest = 0
    stack = [(ds, 0)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        for tag in current.keys():  # noqa: SIM118 (iterating a Dataset converts every element)
            if _raw_vr(current, int(tag)) == "SQ":  # only sequences are converted from their bytes
                elem = current[tag]
                if elem.VR == "SQ":
                    stack.extend((item, depth + 1) for item in elem.value or ())
    return deepest


def _one_file(job: _Job, source: str, dest: str | None, out_root: str | None, identity: Any) -> FileOutcome:
    from pydicom.errors import InvalidDicomError

    try:
        ds, digest = _read(source)
    except RecursionError:
        return FileOutcome(source, "excluded", "sequences nested too deep to read: not a real object's "
                           "structure, left out")
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError,
            struct_error) as exc:
        return FileOutcome(source, "error", f"unreadable: {type(exc).__name__}: {_first_line(exc)}")
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        if getattr(ds, "preamble", None) is None and not ds.file_meta:
            return FileOutcome(source, "skipped", "not DICOM", source_sha256=digest)
        return FileOutcome(source, "error", "not a DICOM composite instance (no SOP Class or Instance UID)",
                           source_sha256=digest)
    d = job.deidentifier()
    fingerprint = d.secret.fingerprint(str(ds.SOPInstanceUID))
    # the first pass (which gave the identity) found the nesting shallow enough already
    depth = 0 if identity is not None else _depth(ds, MAX_SEQUENCE_DEPTH)
    if depth > MAX_SEQUENCE_DEPTH:
        return FileOutcome(source, "excluded", f"sequences nested more than {MAX_SEQUENCE_DEPTH} levels deep: "
                           "not a real object's structure, left out", source_fingerprint=fingerprint,
                           source_sha256=digest)
    if "EncapsulatedDocument" in ds:
        # PS3.15 E.1-1 would empty it (D), leaving a document without its content: left out instead
        mime = str(ds.get("MIMETypeOfEncapsulatedDocument", "") or "a document")
        return FileOutcome(source, "excluded", f"an encapsulated document ({mime}) may hold PHI in its text and "
                           "cannot be cleaned yet, left out", source_fingerprint=fingerprint, source_sha256=digest)
    if job.clean_visual:
        from voxlake.deid.visual import visual_features_risk

        risk = visual_features_risk(ds)
        if risk:
            return FileOutcome(source, "excluded", f"recognizable visual features: {risk}; not cleaned "
                               "(voxlake does not deface)", source_fingerprint=fingerprint, source_sha256=digest)
    boxes: list[Any] = []
    has_pixels = "PixelData" in ds
    flag = str(ds.get("BurnedInAnnotation", "") or "").upper()
    if job.clean_pixels and has_pixels:
        from voxlake.deid.pixels import clean_pixels, deny_terms
        from voxlake.deid.screen import screen_dataset

        try:
            # the flag is a hint: an image marked NO is still screened, and cleaned if text shows
            if flag != "NO" or screen_dataset(ds):
                boxes = clean_pixels(ds, terms=deny_terms(ds) | _pixel_terms(identity))
        except DeidentificationError as exc:
            return FileOutcome(source, "error", str(exc), source_fingerprint=fingerprint, source_sha256=digest)
        except MissingExtraError:
            raise  # tesseract or pytesseract missing: every file would fail, say so once
        except Exception as exc:  # a decoder's surprise on one file: left out, never copied through
            return FileOutcome(source, "error", f"pixel cleaning failed: {type(exc).__name__}: {exc}",
                               source_fingerprint=fingerprint, source_sha256=digest)
    elif not job.allow_burned_in:
        reason = _burned_in_reason(ds) or (_screen_reason(ds) if has_pixels else "")
        if reason:
            return FileOutcome(source, "excluded", reason, source_fingerprint=fingerprint, source_sha256=digest)
    original = {k: str(ds.get(k, "") or "") for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                                                      "SOPInstanceUID")}
    try:
        result = d.deidentify(ds, copy_dataset=False, identity=identity)
    except Exception as exc:  # one malformed element must not stop the batch, nor pass through
        return FileOutcome(source, "error", f"{type(exc).__name__}: {exc}", source_fingerprint=fingerprint, source_sha256=digest)
    out = result.dataset
    if job.clean_visual:  # PS3.15 E.3.2: added with NO (what could show the patient was left out above)
        out.RecognizableVisualFeatures = "NO"
    study, series, sop = (str(out.get(k, "") or "") for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                                             "SOPInstanceUID"))
    named = dest is not None  # a file the caller named is replaced; a folder's files never are
    if dest is None:
        assert out_root is not None
        dest = os.path.join(out_root, study or "unknown", series or "unknown", f"{sop}.dcm")
    try:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{dest}.{uuid.uuid4().hex}.tmp"
        out.save_as(tmp, enforce_file_format="TransferSyntaxUID" in out.file_meta)
        if named:
            os.replace(tmp, dest)
        else:
            dest = _place(tmp, dest, digest)
    except Exception as exc:
        if "tmp" in locals() and os.path.exists(tmp):
            os.unlink(tmp)
        return FileOutcome(source, "error", f"cannot write {dest}: {type(exc).__name__}: {exc}",
                           source_fingerprint=fingerprint, source_sha256=digest)
    mapping: tuple[tuple[str, str, str], ...] = ()
    if job.with_mapping:
        new = {"PatientID": str(out.get("PatientID", "") or ""), "StudyInstanceUID": study,
               "SeriesInstanceUID": series, "SOPInstanceUID": sop}
        mapping = tuple((k, original[k], new[k]) for k in original if original[k])
    return FileOutcome(source, "written", "", dest, fingerprint, sop, study, series,
                       tuple((e.path, e.tag, e.action) for e in result.audit), tuple(b.as_tuple() for b in boxes),
                       mapping, digest)


_Task = tuple[str, str | None, str | None, Any]  # source, dest, out root, the patient's Identity


def _patient_key(ds: Any) -> str:
    """Whose instance this is, as :class:`~voxlake.deid.header.Deidentifier` keys its date offset."""
    return str(ds.get("PatientID", "") or "").strip() or str(ds.get("StudyInstanceUID", "") or "")


def _identity_of_file(job: _Job, source: str) -> tuple[str, Any] | None:
    """(patient key, deny-list terms) of one file's header; None when it cannot be read."""
    from voxlake.deid.header import identity_of

    try:
        import pydicom

        with _open(source) as f:  # the header only: no pixel data read, no hash
            ds = pydicom.dcmread(f, force=True, stop_before_pixels=True)
        # the walk checks the nesting too: a file with an identity is shallow enough to write
        return _patient_key(ds), identity_of(ds, job.deidentifier().profile, max_depth=MAX_SEQUENCE_DEPTH)
    except Exception:  # the file's own run reports it (too deep, unreadable)
        return None


def _identity_star(args: tuple[_Job, str]) -> tuple[str, Any] | None:
    return _identity_of_file(*args)


def _tasks(job: _Job, items: Sequence[tuple[str, str | None, str | None]], workers: int,
           others: Sequence[str] = ()) -> list[_Task]:
    """The tasks, each with the deny-list of its patient gathered from every instance of the patient
    in the run, and in ``others`` (the patient's instances a lake holds outside the selection), in a
    first pass over the headers: a name, ID or address that one instance holds is masked in the free
    text of all of them."""
    sources = [i[0] for i in items] + [o for o in others if o not in {i[0] for i in items}]
    if workers > 1 and len(sources) > 1:
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
            chunk = max(1, min(64, len(sources) // (workers * 4)))
            found = list(pool.map(_identity_star, ((job, s) for s in sources), chunksize=chunk))
    else:
        found = [_identity_of_file(job, s) for s in sources]
    from voxlake.deid.scrub import Identity

    merged: dict[str, Identity] = {}
    for f in found:
        if f is not None:
            merged.setdefault(f[0], Identity()).update(f[1])
    return [(*item, merged.get(f[0]) if f is not None else None)
            for item, f in zip(items, found[:len(items)], strict=True)]


def _run_all(job: _Job, tasks: Sequence[_Task], workers: int,
             progress: Callable[[int], None] | None, engine: str = "local",
             spark_master: str | None = None) -> Iterator[FileOutcome]:
    if engine == "spark":
        yield from _run_spark(job, tasks, spark_master, progress)
        return
    if engine != "local":
        raise InvalidArgumentError(f"engine must be local or spark; got {engine!r}")
    if workers <= 1 or len(tasks) < 2:
        for t in tasks:
            yield _one(job, *t)
            if progress is not None:
                progress(1)
        return
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        chunk = max(1, min(64, len(tasks) // (workers * 4)))
        for outcome in pool.map(_one_star, ((job, *t) for t in tasks), chunksize=chunk):
            yield outcome
            if progress is not None:
                progress(1)


def _place(tmp: str, dest: str, digest: str) -> str:
    """Move the written ``tmp`` to ``dest`` without replacing another file: two sources may hold
    the same SOP Instance UID (a re-sent instance, the same image in two transfer syntaxes), and
    one must not silently overwrite the other. The same bytes again (a rerun) are the same file; other
    bytes go beside it, named by their source's SHA-256. Atomic across processes (a hard link fails
    when the name exists)."""
    import filecmp

    stem = dest[: -len(".dcm")] if dest.endswith(".dcm") else dest
    for candidate in (dest, f"{stem}.{digest[:16]}.dcm"):
        try:
            os.link(tmp, candidate)
        except FileExistsError:
            if filecmp.cmp(tmp, candidate, shallow=False):
                os.unlink(tmp)
                return candidate
            continue
        except OSError:  # no hard links here (some network and FAT file systems)
            if os.path.exists(candidate):
                continue
            os.replace(tmp, candidate)
            return candidate
        os.unlink(tmp)
        return candidate
    os.replace(tmp, dest)  # the same source's SHA-256 with other bytes: another key or profile
    return dest


def _one_star(args: tuple[Any, ...]) -> FileOutcome:
    return _one(*args)


def _run_spark(job: _Job, tasks: Sequence[_Task], master: str | None,
               progress: Callable[[int], None] | None) -> Iterator[FileOutcome]:
    """The same per-file function as Spark tasks. The job (profile, recipe, secret) travels with
    each task, so executors derive the same keyed UIDs, pseudonyms and date shifts as the local
    engine, without shared state. Outcomes come back in task order."""
    if not tasks:
        return
    from functools import partial

    from voxlake.ingest.engines.spark import spark_session

    sc = spark_session(master).sparkContext
    slices = max(1, min(len(tasks), sc.defaultParallelism * 4))
    for outcome in sc.parallelize(list(tasks), slices).map(partial(_one_task, job)).toLocalIterator():
        yield outcome
        if progress is not None:
            progress(1)


def _one_task(job: _Job, task: _Task) -> FileOutcome:
    return _one(job, *task)


def _job(profile: str, options: Iterable[str | Option], recipe: Any, secret: Secret | str | Path | None,
         allow_burned_in: bool, with_mapping: bool) -> _Job:
    recipe = _read_recipe(recipe)
    p = _profile(profile, options, recipe)
    key = secret if isinstance(secret, Secret) else Secret.read(secret)
    return _Job(tuple(sorted(o.value for o in p.options)), recipe, key, allow_burned_in, with_mapping,
                Option.CLEAN_PIXEL_DATA in p.options)


def deidentify_file(src: str | Path, dst: str | Path, *, secret: Secret | str | Path | None,
                    profile: str = "basic", options: Iterable[str | Option] = (), recipe: Any = None,
                    allow_burned_in: bool = False) -> FileOutcome:
    """De-identify one file into ``dst``. Returns the outcome (``status`` ``error`` / ``excluded``
    with the reason when nothing was written)."""
    job = _job(profile, options, recipe, secret, allow_burned_in, False)
    return _one(job, str(src), str(dst), None)


def _list_files(src: Path) -> list[str]:
    if src.is_file():
        return [str(src)]
    if not src.is_dir():
        raise InvalidArgumentError(f"no such file or folder: {src}")
    # links are not followed: nothing outside the source folder is read
    return sorted(str(p) for p in src.rglob("*") if p.is_file() and not p.is_symlink()
                  and p.name not in ("DICOMDIR", FOLDER_AUDIT))


def deidentify_files(src: str | Path, out_dir: str | Path, *, secret: Secret | str | Path | None,
                     profile: str = "basic", options: Iterable[str | Option] = (), recipe: Any = None,
                     allow_burned_in: bool = False, workers: int = 1, engine: str = "local",
                     spark_master: str | None = None,
                     progress: Callable[[int], None] | None = None,
                     on_start: Callable[[int], None] | None = None) -> DeidSummary:
    """De-identify every file under ``src`` (a file or a folder) into
    ``out_dir/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` with the new UIDs
    (source names may hold PHI, so none is reused). Files that are not DICOM count as errors.
    ``engine``: "local" (``workers`` processes) or "spark" (tasks on ``spark_master``, default
    ``local[*]``); both write the same files."""
    job = _job(profile, options, recipe, secret, allow_burned_in, False)
    files = _list_files(Path(src))
    if on_start is not None:
        on_start(len(files))
    summary = DeidSummary(uuid.uuid4().hex, str(out_dir))
    start = time.perf_counter()
    tasks = _tasks(job, [(f, None, str(out_dir)) for f in files], workers)
    for outcome in _run_all(job, tasks, workers, progress, engine, spark_master):
        summary.add(outcome)
    summary.seconds = time.perf_counter() - start
    _write_folder_audit(Path(out_dir), summary, job)
    return summary


FOLDER_AUDIT = "deid_audit.jsonl"


def _write_folder_audit(out: Path, summary: DeidSummary, job: _Job) -> None:
    """Append one line per source file to ``out/deid_audit.jsonl``: what ``deid_audit`` holds in a
    research lake, for a folder (``voxlake deid verify`` pairs research files with their sources by
    the sources' SHA-256). No PHI: sources are named by the SHA-256 of their bytes and a keyed
    fingerprint, never by path; reasons of unexpected errors by their class only."""
    import datetime as dt

    import orjson

    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC).isoformat()
    profile = ",".join(("basic", *job.options))
    with open(out / FOLDER_AUDIT, "ab") as f:
        for o in summary.outcomes:
            f.write(orjson.dumps({
                "run_id": summary.run_id, "source_sha256": o.source_sha256 or None,
                "source_fingerprint": o.source_fingerprint or None, "status": o.status,
                "reason": _audit_reason(o), "dest": os.path.relpath(o.dest, out) if o.dest else None,
                "SOPInstanceUID": o.SOPInstanceUID or None, "profile": profile, "deidentified_at": now,
                "actions": [{"path": p, "tag": t, "action": a} for p, t, a in o.audit],
                "pixel_boxes": [dict(zip(("frame", "x", "y", "w", "h", "reason"), b, strict=True)) for b in o.boxes],
            }) + b"\n")


def _audit_reason(o: FileOutcome) -> str:
    """The reason as the research output may keep it: voxlake's own reasons name no value; an
    exception's message might (a decoder quoting a header), so only its class is kept."""
    if o.status != "error":
        return o.reason
    head = o.reason.split(":", 1)[0]
    cls = o.reason.split(":", 2)[1].strip() if o.reason.count(":") >= 2 else ""
    return f"{head}: {cls}" if cls.isidentifier() else head


def _inside(path: Path, root: Path) -> bool:
    path, root = path.resolve(), root.resolve()
    return path == root or root in path.parents


def deidentify_lake(source: Any, out: str | Path, *, where: str = "TRUE", secret: Secret | str | Path | None,
                    profile: str = "basic", options: Iterable[str | Option] = (), recipe: Any = None,
                    allow_burned_in: bool = False, mapping: str | Path | None = None, workers: int = 1,
                    engine: str = "local", spark_master: str | None = None,
                    progress: Callable[[int], None] | None = None,
                    on_start: Callable[[int], None] | None = None) -> DeidSummary:
    """De-identify the instances of the lake ``source`` (a :class:`voxlake.Lake` or its URI) that
    match the SQL condition ``where`` into the research lake ``out``: files under ``out/dicom/``,
    ingested into ``out``'s tables, and one ``deid_audit`` row per source instance. ``mapping``
    (a Parquet path outside ``out``) receives original → new identifiers for authorised
    re-identification; it is written only when given. ``engine`` "spark" runs the files as Spark
    tasks on ``spark_master`` and ingests the research lake with Spark too; the output is the same
    as the local engine's."""
    import voxlake

    out_path = Path(out)
    if mapping is not None and _inside(Path(mapping), out_path):
        raise InvalidArgumentError(f"the mapping table must be outside the research lake {out_path}; "
                                   f"got {mapping}")
    job = _job(profile, options, recipe, secret, allow_burned_in, mapping is not None)
    lake = source if hasattr(source, "sql") else voxlake.open(str(source))
    if _inside(out_path, Path(lake.uri)) if "://" not in lake.uri else False:
        raise InvalidArgumentError(f"the research lake must be outside the source lake {lake.uri}")
    rows = lake.sql(f"SELECT uri, sha256 FROM instances WHERE {where} ORDER BY uri").fetchall()
    if on_start is not None:
        on_start(len(rows))
    landing = out_path / "dicom"
    summary = DeidSummary(uuid.uuid4().hex, str(out_path))
    start = time.perf_counter()
    sha = {uri: digest for uri, digest in rows}
    # the selected patients' other instances in the lake lend their identifiers to the deny-list
    others = [r[0] for r in lake.sql(
        f"SELECT uri FROM instances WHERE PatientID IN (SELECT PatientID FROM instances WHERE ({where}) "
        f"AND PatientID <> '') "
        f"AND NOT ({where}) ORDER BY uri").fetchall()]
    tasks = _tasks(job, [(uri, None, str(landing)) for uri, _ in rows], workers, others)
    for outcome in _run_all(job, tasks, workers, progress, engine, spark_master):
        summary.add(outcome)
    if summary.written:
        ingest = voxlake.open(str(out_path)).ingest(str(landing), engine=engine, spark_master=spark_master,
                                                    workers=0 if workers <= 1 else workers)
        summary.ingested = ingest.indexed
    _write_audit(out_path, summary, job, sha)
    if mapping is not None:
        _write_mapping(Path(mapping), summary)
    summary.seconds = time.perf_counter() - start
    return summary


def _write_audit(out: Path, summary: DeidSummary, job: _Job, sha: dict[str, str]) -> None:
    """Append the run's rows to ``out/deid_audit`` (Delta). No PHI: the source is named by its
    file's SHA-256 (as in the source lake's ``instances.sha256``) and a keyed fingerprint of its SOP
    Instance UID."""
    import datetime as dt

    import pyarrow as pa
    from deltalake import write_deltalake

    action = pa.struct([("path", pa.string()), ("tag", pa.string()), ("action", pa.string())])
    box = pa.struct([("frame", pa.int32()), ("x", pa.int32()), ("y", pa.int32()), ("w", pa.int32()),
                     ("h", pa.int32()), ("reason", pa.string())])
    schema = pa.schema([
        ("run_id", pa.string()), ("source_sha256", pa.string()), ("source_fingerprint", pa.string()),
        ("status", pa.string()), ("reason", pa.string()), ("uri", pa.string()),
        ("SOPInstanceUID", pa.string()), ("SeriesInstanceUID", pa.string()), ("StudyInstanceUID", pa.string()),
        ("profile", pa.string()), ("actions", pa.list_(action)),
        ("deidentified_at", pa.timestamp("us", tz="UTC")), ("pixel_boxes", pa.list_(box)),
    ])
    now = dt.datetime.now(dt.UTC)
    profile = ",".join(("basic", *job.options))
    rows = [{
        "run_id": summary.run_id, "source_sha256": sha.get(o.source), "source_fingerprint": o.source_fingerprint,
        "status": o.status, "reason": _audit_reason(o), "uri": o.dest or None,
        "SOPInstanceUID": o.SOPInstanceUID or None, "SeriesInstanceUID": o.SeriesInstanceUID or None,
        "StudyInstanceUID": o.StudyInstanceUID or None, "profile": profile,
        "actions": [{"path": p, "tag": t, "action": a} for p, t, a in o.audit], "deidentified_at": now,
        "pixel_boxes": [dict(zip(("frame", "x", "y", "w", "h", "reason"), b, strict=True)) for b in o.boxes],
    } for o in summary.outcomes]
    table = pa.Table.from_pylist(rows, schema=schema)
    # schema_mode merge: audit tables written before pixel_boxes existed gain the column
    write_deltalake(str(out / AUDIT_TABLE), table, mode="append", schema_mode="merge")


def _write_mapping(path: Path, summary: DeidSummary) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    seen: dict[tuple[str, str], str] = {}
    for o in summary.outcomes:
        for kind, original, new in o.mapping:
            seen[(kind, original)] = new
    table = pa.table({
        "kind": [k for k, _ in seen], "original": [v for _, v in seen], "deidentified": list(seen.values()),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
