"""Burned-in text: find it, black it out on every frame, and write the pixels back (PS3.15 E.3.1,
Clean Pixel Data Option).

Three sources of boxes, all applied to every frame:

* **Rules** (:data:`RULES`, ``data/pixel_rules.json``): regions known by Manufacturer, model and
  image size (a console's patient-information page is blacked out whole).
* **Ultrasound regions**: when the header declares SequenceOfUltrasoundRegions, everything above
  the top of the highest region is blacked out, whole width. That band is where scanners write
  name, ID, date and institution; the regions themselves hold the image and stay, as in pydicom/deid's
  ultrasound recipe. Text inside a region is left to OCR.
* **OCR** (Tesseract via pytesseract): every frame is read; a word is redacted when it matches a PHI
  value of this instance's own header (the deny-list: names in their variants, IDs, dates in the usual
  spellings; fuzzy, at any confidence, because OCR misreads ``KAUFMAN`` as ``KAUPMAN``), when it reads
  as a date, time or long number, or when it is any confident text at all (unknown text in an image
  is annotation, and annotation may name the patient). A line with a PHI hit is redacted whole, so
  words Tesseract could not read on that line go too. Only a deny-listed value is redacted wherever
  it is read: the other two need the text screen (:mod:`voxlake.deid.screen`) to have seen rendered
  text there, as Tesseract reads "words" in noise and anatomy.

Pixel data is decoded with pydicom (any transfer syntax it can decode; colour as RGB) and written
back in the same transfer syntax when that is lossless and pydicom can encode it (native, Deflated,
RLE, JPEG-LS lossless, JPEG 2000 lossless). Lossless syntaxes pydicom cannot encode (JPEG Lossless
processes 14/SV1) and lossy input (JPEG baseline/extended, JPEG-LS near-lossless, lossy JPEG 2000
and HTJ2K) are written as Explicit VR Little Endian, uncompressed: re-compressing lossy data would
lose quality a second time. Lossy input keeps (or gains) LossyImageCompression ``01`` and its method.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from voxlake.deid.errors import DeidentificationError

__all__ = ["RULES", "Box", "Word", "clean_pixels", "deny_terms", "ocr_words", "rule_boxes", "ultrasound_boxes"]

RULES_PATH = Path(__file__).with_name("data") / "pixel_rules.json"
CLEAN_PIXEL_DATA_CODE = ("113101", "Clean Pixel Data Option")
_UID_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_DEFLATED = "1.2.840.10008.1.2.1.99"
_REENCODE = {"1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"}  # RLE, JLS, J2K lossless
_LOSSY_METHOD = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1", "1.2.840.10008.1.2.4.51": "ISO_10918_1",
    "1.2.840.10008.1.2.4.81": "ISO_14495_1", "1.2.840.10008.1.2.4.91": "ISO_15444_1",
    "1.2.840.10008.1.2.4.203": "ISO_15444_15", "1.2.840.10008.1.2.4.202": "ISO_15444_15",
}
# PHI-shaped words: dates (03.09.2012, 2012-03-09, 03/09/12), times (05:24:57PM), numbers of 5+ digits
# (IDs, accession numbers), DOB/ID/MRN labels.
_PHI_SHAPE = re.compile(
    r"\d{1,4}[./-]\d{1,2}[./-]\d{2,4}|\d{1,2}:\d{2}(:\d{2})?|\d{5,}|^(DOB|MRN|ID|NAME|ACC|DOS)\b",
    re.IGNORECASE,
)
_OCR_PAD = 25  # Tesseract misses text touching the border; presidio pads by the same amount
_MIN_CONFIDENT = 60  # Tesseract word confidence (0-100) above which any text is redacted
_MIN_PATTERN = 20


@dataclass(frozen=True, slots=True)
class Box:
    """A redacted rectangle: frame (-1 = every frame), top-left x, y, width, height, and why (never
    the text)."""

    frame: int
    x: int
    y: int
    w: int
    h: int
    reason: str

    def as_tuple(self) -> tuple[int, int, int, int, int, str]:
        return (self.frame, self.x, self.y, self.w, self.h, self.reason)


@dataclass(frozen=True, slots=True)
class Word:
    """One word Tesseract read, in image coordinates; ``line`` groups the words of a text line."""

    text: str
    conf: float
    x: int
    y: int
    w: int
    h: int
    line: tuple[int, int, int]


# -- the deny-list ---------------------------------------------------------------------------------


def _norm(text: str) -> str:
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return re.sub(r"[^0-9A-Z]", "", folded.upper())


def _dates(value: str) -> set[str]:
    try:
        d = datetime.strptime(value.strip()[:8], "%Y%m%d")
    except ValueError:
        return set()
    return {f"{d:%Y%m%d}", f"{d:%m%d%Y}", f"{d:%d%m%Y}", f"{d:%m%d%y}", f"{d:%d%m%y}"}


def deny_terms(ds: Any) -> set[str]:
    """The PHI values of this instance's header, normalised (upper case, letters and digits only,
    accents removed): name components, IDs and other identifying text, dates as the digits of their
    usual spellings (07.22.1943 → ``07221943``). Read before the header is de-identified."""
    from voxlake.deid.header import _values, _walk_all
    from voxlake.deid.profile import Action, Profile

    profile = Profile()
    terms: set[str] = set()
    for elem in _walk_all(ds):
        if elem.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "UI") or elem.value is None:
            continue
        values = _values(elem)
        if elem.VR == "PN":
            for v in values:
                terms.update(_norm(p) for p in re.split(r"[\^=\s,]+", str(v)) if p)
        elif elem.VR in ("DA", "DT"):
            for v in values:
                terms |= _dates(str(v))
        elif elem.VR in ("LO", "SH", "ST", "LT", "UT", "UC"):
            action = None if elem.tag.is_private else profile.action(int(elem.tag))
            if action not in (None, Action.KEEP):
                for v in values:
                    terms.add(_norm(str(v)))
                    terms.update(_norm(w) for w in str(v).split() if len(_norm(w)) >= 4)
    return {t for t in terms if len(t) >= 3 and t not in ("ANONYMOUS", "NONE", "UNKNOWN")}


def _distance(a: str, b: str, limit: int) -> int:
    """Levenshtein distance, stopping early above ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        if min(cur) > limit:
            return limit + 1
        prev = cur
    return prev[-1]


def matches_deny(word: str, terms: Iterable[str]) -> bool:
    """Whether an OCR word is one of ``terms`` allowing for OCR errors: equal, contained (4+
    characters), or one edit away (two for 8+ characters)."""
    w = _norm(word)
    if len(w) < 3:
        return False
    for t in terms:
        if w == t or (len(w) >= 4 and (w in t or t in w)):
            return True
        if len(t) >= 5 and _distance(w, t, 2 if len(t) >= 8 else 1) <= (2 if len(t) >= 8 else 1):
            return True
    return False


# -- where text is -----------------------------------------------------------------------------------


@cache
def _rules() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(RULES_PATH.read_text(encoding="utf-8"))["rules"])


RULES = _rules


def rule_boxes(ds: Any) -> list[Box]:
    """Boxes of the rules that match this device and image size."""
    manufacturer = str(ds.get("Manufacturer", "") or "").strip().lower()
    model = str(ds.get("ManufacturerModelName", "") or "").strip().lower()
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    image_type = {str(v).upper() for v in (ds.get("ImageType") or [])}
    out = []
    for rule in _rules():
        if not manufacturer.startswith(rule["manufacturer"].lower()):
            continue
        if rule.get("model") and model != rule["model"].lower():
            continue
        if (rule.get("rows"), rule.get("columns")) != (rows, cols):
            continue
        if rule.get("image_type") and rule["image_type"].upper() not in image_type:
            continue
        out += [_clip(Box(-1, x, y, w, h, f"rule:{rule['name']}"), rows, cols) for x, y, w, h in rule["boxes"]]
    return [b for b in out if b is not None]


def ultrasound_boxes(ds: Any) -> list[Box]:
    """Everything above the highest SequenceOfUltrasoundRegions region, whole width."""
    regions = ds.get("SequenceOfUltrasoundRegions") or []
    tops = [int(r.RegionLocationMinY0) for r in regions if "RegionLocationMinY0" in r]
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if not tops or min(tops) <= 0:
        return []
    box = _clip(Box(-1, 0, 0, cols, min(tops), "ultrasound:above-regions"), rows, cols)
    return [box] if box else []


def _clip(b: Box, rows: int, cols: int) -> Box | None:
    x0, y0 = max(0, b.x), max(0, b.y)
    x1, y1 = min(cols, b.x + b.w), min(rows, b.y + b.h)
    if x1 <= x0 or y1 <= y0:
        return None
    return Box(b.frame, x0, y0, x1 - x0, y1 - y0, b.reason)


def _to_uint8(frame: Any) -> Any:
    """A frame as 8-bit grey with dark text on a light background, as Tesseract reads best."""
    import numpy as np

    a = frame.astype(np.float32)
    if a.ndim == 3:
        a = a[..., :3].max(axis=2)  # coloured text (yellow, green) stays bright in the max channel
    lo, hi = float(a.min()), float(a.max())
    g = ((a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)).astype(np.uint8)
    if float(np.median(g)) < 128:  # medical images are dark with bright annotations
        g = 255 - g
    return g


def ocr_words(frame: Any) -> list[Word]:
    """Tesseract's words on one frame (2-D grey or rows×columns×3), in frame coordinates.
    Small images are read at twice their size (Tesseract wants text 20+ pixels high)."""
    import numpy as np

    try:
        import pytesseract
        from PIL import Image
    except ImportError as exc:
        from voxlake.errors import MissingExtraError

        raise MissingExtraError("burned-in text detection needs pytesseract and Pillow: "
                                "pip install 'voxlake[deid]' and apt-get install tesseract-ocr") from exc
    g = _to_uint8(frame)
    scale = 2 if max(g.shape[:2]) < 1200 else 1
    img = Image.fromarray(np.pad(g, _OCR_PAD, constant_values=255))
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.LANCZOS)
    try:
        data = pytesseract.image_to_data(img, config="--psm 11", output_type=pytesseract.Output.DICT)
    except pytesseract.TesseractNotFoundError as exc:
        from voxlake.errors import MissingExtraError

        raise MissingExtraError("the tesseract program is not installed: apt-get install tesseract-ocr "
                                "(or make deid-tools)") from exc
    words = []
    for i, text in enumerate(data["text"]):
        if not str(text).strip():
            continue
        x = data["left"][i] / scale - _OCR_PAD
        y = data["top"][i] / scale - _OCR_PAD
        words.append(Word(str(text), float(data["conf"][i]), int(x), int(y), int(np.ceil(data["width"][i] / scale)),
                          int(np.ceil(data["height"][i] / scale)),
                          (data["block_num"][i], data["par_num"][i], data["line_num"][i])))
    return words


def text_boxes(words: Sequence[Word], terms: Iterable[str], frame: int,
               regions: Sequence[Any] | None = None) -> list[Box]:
    """The words to redact (see the module docstring), each with a margin; whole lines for PHI hits.
    ``regions`` (the text screen's :class:`~voxlake.deid.screen.TextRegion`s of the frame), when
    given, control OCR's false positives: a word that is not a deny-listed value counts only where
    the screen saw text (noise is not text)."""
    terms = set(terms)
    out: list[Box] = []
    hit_lines: set[tuple[int, int, int]] = set()
    for w in words:
        alnum = sum(c.isalnum() for c in w.text)
        if matches_deny(w.text, terms):
            reason = "ocr:header-value"
        elif regions is not None and not _in_regions(w, regions):
            continue
        elif _PHI_SHAPE.search(w.text) and w.conf >= _MIN_PATTERN:
            reason = "ocr:phi-pattern"
        elif w.conf >= _MIN_CONFIDENT and alnum >= 2:
            reason = "ocr:text"
        else:
            continue
        if reason != "ocr:text":
            hit_lines.add(w.line)
        out.append(_margin(Box(frame, w.x, w.y, w.w, w.h, reason)))
    for line in hit_lines:
        members = [w for w in words if w.line == line and w.h > 0]
        if members:
            x0, y0 = min(w.x for w in members), min(w.y for w in members)
            x1, y1 = max(w.x + w.w for w in members), max(w.y + w.h for w in members)
            out.append(_margin(Box(frame, x0, y0, x1 - x0, y1 - y0, "ocr:line")))
    return out


def _in_regions(w: Word, regions: Sequence[Any], pad: int = 4) -> bool:
    return any(w.x < r.x + r.w + pad and r.x - pad < w.x + w.w and w.y < r.y + r.h + pad and r.y - pad < w.y + w.h
               for r in regions)


def _margin(b: Box) -> Box:
    m = 2 + b.h // 5
    return Box(b.frame, b.x - m, b.y - m, b.w + 2 * m, b.h + 2 * m, b.reason)


# -- cleaning ------------------------------------------------------------------------------------------


def _frames(ds: Any) -> Any:
    """All frames as (frames, rows, columns[, samples]), colour as RGB."""
    from pydicom.pixels import pixel_array

    try:
        arr = pixel_array(ds)
    except Exception as exc:  # no decoder for this syntax, or corrupt data
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise DeidentificationError(f"cannot decode the pixel data ({ts}): {type(exc).__name__}: {exc}; "
                                    "left out (install the decoders of voxlake[synth])") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames == 1 and arr.ndim == (2 if samples == 1 else 3):
        arr = arr[None, ...]
    return arr


def clean_pixels(ds: Any, *, terms: Iterable[str] | None = None, ocr: bool = True) -> list[Box]:
    """Redact burned-in text in ``ds`` (in place, every frame) and return the boxes (frame ``-1``:
    applied to every frame). ``terms`` is the deny-list (:func:`deny_terms` of the original header;
    computed here when None). Sets BurnedInAnnotation NO and adds CID 7050 code 113101 to
    DeidentificationMethodCodeSequence; the header step sets PatientIdentityRemoved.

    Raises :class:`DeidentificationError` when the pixels cannot be decoded or written back (the
    caller leaves the file out)."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise DeidentificationError("float pixel data cannot be cleaned yet; left out")
        return []
    terms = deny_terms(ds) if terms is None else set(terms)
    arr = _frames(ds)
    rows, cols = arr.shape[1], arr.shape[2]
    fixed = [*rule_boxes(ds), *ultrasound_boxes(ds)]
    found: list[Box] = []
    if ocr and not any(b.w >= cols and b.h >= rows for b in fixed):
        from voxlake.deid.screen import screen_frame

        for i in range(arr.shape[0]):
            regions = screen_frame(arr[i], frame_index=i)
            found += text_boxes(ocr_words(arr[i]), terms, i, regions)
    # text found on one frame is redacted on all: cine overlays move little, and a frame the OCR
    # read badly must not keep what another frame showed
    boxes = [b for b in (_clip(b, rows, cols) for b in [*fixed, *found]) if b is not None]
    boxes = _dedupe([Box(-1, b.x, b.y, b.w, b.h, b.reason) for b in boxes])
    if boxes:
        fill = _black(ds, arr)
        out = arr.copy()
        for b in boxes:
            out[:, b.y:b.y + b.h, b.x:b.x + b.w] = fill
        _write(ds, out if arr.shape[0] > 1 else out[0])
    # nothing redacted: the encoded pixels stay byte for byte (no second lossy compression either)
    ds.BurnedInAnnotation = "NO"
    _add_method_code(ds)
    return boxes


def _dedupe(boxes: list[Box]) -> list[Box]:
    seen, out = set(), []
    for b in boxes:
        key = (b.x, b.y, b.w, b.h)
        if key not in seen:
            seen.add(key)
            out.append(b)
    return out


def _black(ds: Any, arr: Any) -> Any:
    import numpy as np

    pi = str(ds.get("PhotometricInterpretation", "")).upper()
    if arr.ndim == 4:
        return np.zeros(arr.shape[-1], dtype=arr.dtype)
    return arr.max() if pi == "MONOCHROME1" else arr.min()


def _lossy_method(ds: Any) -> str | None:
    meta = getattr(ds, "file_meta", None)
    return _LOSSY_METHOD.get(str(meta.get("TransferSyntaxUID", ""))) if meta is not None else None


def _write(ds: Any, arr: Any) -> None:
    """Write ``arr`` back: the same syntax when lossless and encodable, else Explicit VR Little Endian."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian

    if not hasattr(ds, "file_meta"):
        from pydicom.dataset import FileMetaDataset

        ds.file_meta = FileMetaDataset()
    ts = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
    lossy = _lossy_method(ds)
    pi = str(ds.PhotometricInterpretation)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 3 and pi != "RGB":
        pi = "RGB"  # pydicom decoded YBR to RGB
    if ts == ExplicitVRBigEndian or ts not in _UID_NATIVE:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if ts == ExplicitVRBigEndian:  # retired (PS3.5 A.3); written little endian like everything new
            ds.set_original_encoding(False, True, ds.get("SpecificCharacterSet"))
    bits = int(ds.get("BitsStored", arr.dtype.itemsize * 8))
    if arr.dtype.kind not in "iu" or arr.dtype.itemsize > 2:
        raise DeidentificationError(f"pixel data of type {arr.dtype} cannot be written back yet; left out")
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)  # big endian input decodes as >i2
    ds.set_pixel_data(arr, pi, bits, generate_instance_uid=False)
    try:
        if ts in _REENCODE:
            ds.compress(ts, generate_instance_uid=False)
        elif ts == _DEFLATED:
            ds.file_meta.TransferSyntaxUID = _DEFLATED
    except Exception as exc:
        raise DeidentificationError(f"cannot re-encode the cleaned pixels as {ts}: {type(exc).__name__}: {exc}; "
                                    "left out") from None
    if lossy is not None:  # PS3.3 C.7.6.1.1.5: once lossy, always 01, with the method that did it
        ds.LossyImageCompression = "01"
        methods = [str(m) for m in (ds.get("LossyImageCompressionMethod") or [])]
        if lossy not in methods:
            ds.LossyImageCompressionMethod = [*methods, lossy] if methods else lossy


def _add_method_code(ds: Any) -> None:
    from pydicom.dataset import Dataset

    items = list(ds.get("DeidentificationMethodCodeSequence") or [])
    if not any(str(i.get("CodeValue", "")) == CLEAN_PIXEL_DATA_CODE[0] for i in items):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = CLEAN_PIXEL_DATA_CODE[0], "DCM", \
            CLEAN_PIXEL_DATA_CODE[1]
        items.append(item)
        ds.DeidentificationMethodCodeSequence = items
