"""An independent PHI leak detector, for the adversarial set of :mod:`voxlake.synth.adversarial`.

:func:`find_leaks` looks for every value of an answer key's ``planted`` rows in every file of a
folder, four ways:

* **bytes**: the value encoded in each of twelve encodings (UTF-8, Latin-1, cp1252, UTF-16-LE, the
  three Japanese ones, two Cyrillic, Greek, GB18030, EUC-KR), ASCII case-insensitively; a value of
  digits only matches with no digit beside it (a ``2.25.`` UID is a 39-digit number that holds any
  six digits by chance);
* **elements**: pydicom's reading of every element at every depth (private ones, and those it reads as
  UN or bytes decoded as text when they print), in the file's character set, case-, accent-,
  spacing- and punctuation-folded, so ``ZYXWVUT,  Quentina`` holds ``Zyxwvut Quentina``;
* **pdf**: an EncapsulatedDocument's bytes (or a PDF file's), FlateDecode streams inflated, literal
  strings unescaped;
* **ocr** (``ocr=True``, where Tesseract is installed): every frame of PixelData, every overlay plane
  and every icon image; a value is reported when an OCR word equals one of its tokens of five or more
  characters (case-insensitive, punctuation removed), for names, IDs and dates.

It shares no code with :mod:`voxlake.deid`, on purpose: it is what checks it.
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
import unicodedata
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENCODINGS = ("utf-8", "latin-1", "cp1252", "utf-16-le", "iso2022_jp", "shift_jis", "euc_jp", "iso8859_5",
             "cp1251", "iso8859_7", "gb18030", "euc_kr")
OCR_CATEGORIES = frozenset({"name", "id", "date"})
_SKIP_SUFFIXES = (".json", ".jsonl")
_BULK_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009, 0x00420011})  # pixels, float pixels, PDF
_ESCAPES = re.compile(rb"\x1b[\(\)\$][A-Z@]|\x1b\$[\(\)][A-Z@]")


@dataclass(frozen=True, order=True)
class Finding:
    """One planted value found in one file: ``how`` says by which search and where (an encoding, a tag
    path, a PDF stream, an OCR'd frame)."""

    file: str
    value: str
    category: str
    how: str


def fold(text: str) -> str:
    """Case, accents (NFKD, combining marks removed), punctuation and spacing folded."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def _folded_pattern(value: str) -> re.Pattern[str]:
    v = fold(value)
    return re.compile(rf"(?<!\d){re.escape(v)}(?!\d)" if v.isdigit() else re.escape(v))


def _byte_patterns(value: str) -> list[tuple[str, re.Pattern[bytes]]]:
    """(encoding, pattern) for each distinct encoding of ``value`` (and of its upper and lower case)."""
    out: list[tuple[str, re.Pattern[bytes]]] = []
    seen: set[bytes] = set()
    ascii_value = value.isascii()
    digits = value.isdigit()
    for encoding in ENCODINGS:
        for variant in (value,) if ascii_value else (value, value.upper(), value.lower()):
            try:
                raw = variant.encode(encoding)
            except UnicodeEncodeError:
                continue
            if encoding == "iso2022_jp":
                raw = _ESCAPES.sub(b"", raw)  # the run inside the escapes: the file may switch elsewhere
            if not raw or raw in seen:
                continue
            seen.add(raw)
            body = re.escape(raw)
            if digits:
                wide = encoding == "utf-16-le"
                before, after = (rb"(?<![0-9]\x00)", rb"(?![0-9]\x00)") if wide else (rb"(?<![0-9])", rb"(?![0-9])")
                body = before + body + after
            out.append((encoding, re.compile(body, re.IGNORECASE if ascii_value else 0)))
    return out


@dataclass(frozen=True)
class _Value:
    value: str
    category: str
    folded: re.Pattern[str]
    raw: list[tuple[str, re.Pattern[bytes]]]
    tokens: frozenset[str]


def _values(key: dict[str, Any]) -> list[_Value]:
    out = []
    for row in key["planted"]:
        value = str(row["value"])
        tokens = frozenset(t for w in value.split() if len(t := _ocr_token(w)) >= 5)
        out.append(_Value(value, str(row["category"]), _folded_pattern(value), _byte_patterns(value), tokens))
    return out


def _ocr_token(word: str) -> str:
    return fold(word).replace(" ", "")


def _files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.endswith(_SKIP_SUFFIXES):
            yield path


# --- the element walk ------------------------------------------------------------------------------


def _deep(fn: Callable[[], Any]) -> Any:
    """``fn()`` with room for a sequence nested thousands deep: a raised recursion limit, a large stack."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            errors.append(exc)

    limit = sys.getrecursionlimit()
    size = threading.stack_size()
    sys.setrecursionlimit(max(limit, 200_000))
    threading.stack_size(256 * 1024 * 1024)
    try:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
    finally:
        threading.stack_size(size)
        sys.setrecursionlimit(limit)
    if errors:
        raise errors[0]
    return result[0]


def read_dicom(path: Path) -> Any:
    """The file as pydicom reads it (force=True), every value converted; None when it is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    def read() -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # unknown elements read as UN, non-DICOM forced
                ds = pydicom.dcmread(path, force=True)
                if not len(ds) and not len(getattr(ds, "file_meta", None) or []):
                    return None
                list(_texts(ds))  # convert every raw element now, in this deep thread
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, NotImplementedError):
            return None
        return ds

    return _deep(read)


def _decode(raw: bytes, encodings: list[str]) -> str | None:
    """Bytes as text where they print (private or UN text), in the dataset's character sets."""
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


def _texts(ds: Any, prefix: str = "", encodings: list[str] | None = None) -> Iterator[tuple[str, str]]:
    """(tag path, text) of every element at every depth (file meta included at the top)."""
    from pydicom.charset import convert_encodings
    from pydicom.multival import MultiValue

    if encodings is None:
        charset = ds.get("SpecificCharacterSet") or "ISO_IR 6"
        encodings = convert_encodings([charset] if isinstance(charset, str) else list(charset))
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            yield from _texts(meta, "meta.", encodings)
    elif "SpecificCharacterSet" in ds:
        charset = ds.SpecificCharacterSet
        encodings = convert_encodings([charset] if isinstance(charset, str) else list(charset))
    for elem in _elements(ds):
        name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        path = prefix + name
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                yield from _texts(item, f"{path}[{i}].", encodings)
            continue
        if int(elem.tag) in _BULK_TAGS or ((elem.tag.group & 0xFF00) == 0x6000 and elem.tag.element == 0x3000):
            continue
        value = elem.value
        if isinstance(value, bytes | bytearray):
            text = _decode(bytes(value), encodings)
            if text:
                yield path, text
            continue
        items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        text = "\\".join(str(v) for v in items if v is not None)
        if text:
            yield path, text


def _elements(ds: Any) -> Iterator[Any]:
    """Every element of one dataset level, converted; one that fails to convert is read as bytes."""
    from pydicom.dataelem import DataElement, RawDataElement

    for tag in list(ds.keys()):
        try:
            yield ds[tag]
        except Exception:
            raw = dict.__getitem__(ds._dict, tag) if hasattr(ds, "_dict") else None
            if isinstance(raw, RawDataElement) and raw.value is not None:
                yield DataElement(tag, "UN", bytes(raw.value))


# --- PDF -------------------------------------------------------------------------------------------


def pdf_texts(pdf: bytes) -> list[str]:
    """A PDF's searchable text: its bytes, every stream (FlateDecode ones inflated) and every literal string."""
    chunks = [pdf]
    for match in re.finditer(rb"<<(.*?)>>\s*stream\r?\n(.*?)endstream", pdf, re.S):
        data = match.group(2)
        if b"FlateDecode" in match.group(1):
            try:
                data = zlib.decompressobj().decompress(data)
            except zlib.error:
                continue
        chunks.append(data)
    texts = [c.decode("latin-1") for c in chunks]
    strings = []
    for chunk in chunks:
        for s in re.findall(rb"\(((?:\\.|[^\\)])*)\)", chunk, re.S):
            strings.append(re.sub(rb"\\(.)", rb"\1", s).decode("latin-1"))
    return [*texts, " ".join(strings)]


def _pdfs(ds: Any) -> Iterator[bytes]:
    for elem in ds.iterall():
        if int(elem.tag) == 0x00420011 and isinstance(elem.value, bytes | bytearray):
            yield bytes(elem.value)


# --- OCR -------------------------------------------------------------------------------------------


def ocr_available() -> bool:
    """Whether pytesseract and the tesseract program are both there."""
    try:
        import pytesseract  # noqa: F401
    except ImportError:
        return False
    return shutil.which("tesseract") is not None


def _to_image(array: Any, *, monochrome1: bool = False) -> Any:
    """A frame as an 8-bit image Tesseract reads well: dark text on white, upscaled when small."""
    import numpy as np
    from PIL import Image

    a = np.asarray(array)
    if a.ndim == 3:
        a = a.mean(axis=2)
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    scaled = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
    if not monochrome1:
        scaled = 255.0 - scaled  # bright text becomes dark
    image = Image.fromarray(scaled.round().astype(np.uint8), "L")
    factor = 2 if min(image.size) < 600 else 1
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.BICUBIC)


def _planes(ds: Any) -> Iterator[tuple[str, Any, bool]]:
    """(label, array, MONOCHROME1) of every frame, overlay plane and icon of the dataset."""
    import numpy as np
    from pydicom.pixels import unpack_bits

    mono1 = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    if "PixelData" in ds:
        try:
            pixels = ds.pixel_array
        except Exception:
            pixels = None
        if pixels is not None:
            frames = int(ds.get("NumberOfFrames") or 1)
            stack = pixels if frames > 1 else pixels[np.newaxis]
            for i, frame in enumerate(stack):
                yield f"pixels frame {i}", frame, mono1
    for group in range(0x6000, 0x6020, 2):
        data = ds.get((group, 0x3000))
        rows, cols = ds.get((group, 0x0010)), ds.get((group, 0x0011))
        if data is None or rows is None or cols is None:
            continue
        bits = unpack_bits(bytes(data.value))[: rows.value * cols.value]
        if bits.size == rows.value * cols.value:
            yield f"overlay {group:04X}", bits.reshape(rows.value, cols.value), False
    for i, icon in enumerate(ds.get("IconImageSequence") or []):
        try:
            dtype = np.uint8 if int(icon.BitsAllocated) == 8 else np.uint16
            samples = int(icon.get("SamplesPerPixel") or 1)
            shape = (int(icon.Rows), int(icon.Columns), samples) if samples > 1 else (int(icon.Rows), int(icon.Columns))
            array = np.frombuffer(bytes(icon.PixelData), dtype)[: int(np.prod(shape))].reshape(shape)
        except Exception:
            continue
        yield f"icon {i}", array, str(icon.get("PhotometricInterpretation", "")) == "MONOCHROME1"


def _read(v: _Value, words: set[str]) -> bool:
    """Whether OCR read one of the value's tokens: a word equal to it, or for digits, a word holding them
    with no digit beside (``MRN884422`` holds ``884422``)."""
    if v.tokens & words:
        return True
    digits = [t for t in v.tokens if t.isdigit()]
    return any(re.search(rf"(?<!\d){t}(?!\d)", w) for t in digits for w in words)


def _ocr_words(image: Any) -> set[str]:
    import pytesseract

    text = pytesseract.image_to_string(image, config="--psm 11")  # sparse text: corners of an image
    return {t for w in text.split() if (t := _ocr_token(w))}


# --- the API ---------------------------------------------------------------------------------------


def find_leaks(folder: Path, key: dict[str, Any], *, ocr: bool = False) -> list[Finding]:
    """Every planted value of ``key`` found in a file under ``folder`` (recursively, whatever the
    names; JSON and JSON-lines files, the key and audits, left out). One finding per file, value and
    search (the first place that search found it; for OCR, per kind of plane: pixels, overlay, icon),
    sorted."""
    folder = Path(folder)
    values = _values(key)
    found: dict[tuple[str, str, str], Finding] = {}
    do_ocr = ocr and ocr_available()

    def add(rel: str, v: _Value, how: str) -> None:
        search = how.split()[0] if how.startswith("ocr:") else how.split(":")[0]  # OCR: by kind of plane
        found.setdefault((rel, v.value, search), Finding(rel, v.value, v.category, how))

    for path in _files(folder):
        rel = path.relative_to(folder).as_posix()
        data = path.read_bytes()
        for v in values:
            for encoding, pattern in v.raw:
                if pattern.search(data):
                    add(rel, v, f"bytes:{encoding}")
                    break
        ds = read_dicom(path)
        pdfs = [data] if data.startswith(b"%PDF") else []
        if ds is not None:
            texts = [(p, fold(t)) for p, t in _deep(lambda ds=ds: list(_texts(ds)))]
            for v in values:
                hit = next((p for p, t in texts if v.folded.search(t)), None)
                if hit is not None:
                    add(rel, v, f"element:{hit}")
            pdfs += _deep(lambda ds=ds: list(_pdfs(ds)))
        for pdf in pdfs:
            for n, text in enumerate(pdf_texts(pdf)):
                folded = fold(text)
                for v in values:
                    if v.folded.search(folded) or any(p.search(text.encode("latin-1")) for _, p in v.raw[:1]):
                        add(rel, v, f"pdf:part {n}")
        if do_ocr and ds is not None:
            for label, array, mono1 in _planes(ds):
                words = _ocr_words(_to_image(array, monochrome1=mono1))
                for v in values:
                    if v.category in OCR_CATEGORIES and _read(v, words):
                        add(rel, v, f"ocr:{label}")
    return sorted(found.values())


def survivors(folder: Path, key: dict[str, Any]) -> dict[str, bool]:
    """For each ``must_survive`` word of ``key``: whether it is still somewhere under ``folder`` (in the
    bytes, ASCII case-insensitively, or in an element's folded text)."""
    folder = Path(folder)
    words = [str(row["value"]) for row in key["must_survive"]]
    left = {w: False for w in words}
    for path in _files(folder):
        data = path.read_bytes()
        ds = None
        for word in words:
            if left[word]:
                continue
            if any(p.search(data) for _, p in _byte_patterns(word)):
                left[word] = True
                continue
            if ds is None:
                ds = read_dicom(path) or False
            if ds is not False:
                pattern = _folded_pattern(word)
                left[word] = any(pattern.search(fold(t)) for _, t in _deep(lambda ds=ds: list(_texts(ds))))
        if all(left.values()):
            break
    return left
