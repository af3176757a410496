"""Stream a DICOM file's header into the DICOM JSON model (PS3.18 F.2) in one pass.

Why not ``pydicom.dcmread(...).to_json_dict()``: that builds a Dataset of DataElement objects and
then converts each one again, which costs about 2.5 ms for a CT header; indexing an archive needs
the JSON model directly. This parser reads element headers with :func:`struct.unpack_from` over a
buffer, decodes values straight into JSON types, and replaces bulk data (Pixel Data, and binary
values over a threshold) by a BulkDataURI naming the file, byte offset and length, without reading
it. The optional hasher is fed every byte in order, so the SHA-256 costs no second read.

Tolerant reading, as in pydicom and highdicom: a deviation (wrong VR, odd length, invalid number)
becomes a warning on the result; a file that ends early yields what was read with ``partial=True``.
Character sets other than ASCII, Latin-1 and UTF-8 are decoded with pydicom's codec helpers.
"""

from __future__ import annotations

import base64
import math
import threading
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from struct import Struct
from typing import Any, BinaryIO

from voxlake.dicom.vr import (
    ALL_VRS,
    ASCII_VRS,
    BINARY_VRS,
    CHARSET_VRS,
    ITEM,
    ITEM_DELIMITATION,
    LONG_VRS,
    NUMERIC_VRS,
    PIXEL_TAGS,
    SEQUENCE_DELIMITATION,
    SINGLE_TEXT_VRS,
    UNDEFINED_LENGTH,
    dictionary_vr,
)
from voxlake.errors import InvalidDicomError, NotDicomError

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"

#: Binary values larger than this many bytes become BulkDataURIs (PS3.18 F.2.7).
DEFAULT_BULK_THRESHOLD = 1024
#: No single value is held in memory beyond this; larger ones become BulkDataURIs whatever their VR.
MAX_INLINE_VALUE = 16 << 20
#: Sequences nested deeper than this are malformed in practice and would exhaust the stack.
MAX_DEPTH = 64

_READ_CHUNK = 64 << 10
_SKIP_CHUNK = 1 << 20
_VR_BYTES = {vr.encode(): vr for vr in ALL_VRS}
_HEX = [f"{i:04X}" for i in range(0x10000)]
_LE = {
    "HH": Struct("<HH"),
    "HHL": Struct("<HHL"),
    "H": Struct("<H"),
    "L": Struct("<L"),
}
_BE = {
    "HH": Struct(">HH"),
    "HHL": Struct(">HHL"),
    "H": Struct(">H"),
    "L": Struct(">L"),
}
_LATIN1 = frozenset({"iso8859", "latin_1", "iso_ir_100", "iso8859_1"})


@dataclass
class Header:
    """What one pass over a DICOM file yields."""

    #: The whole header (file meta included) as the DICOM JSON model.
    dataset: dict[str, Any]
    transfer_syntax: str | None = None
    #: Byte offset and length of the top-level Pixel Data value in the file (None if absent).
    pixel_data_offset: int | None = None
    pixel_data_length: int | None = None
    #: Encapsulated Pixel Data only: per frame, the offset of its first fragment's value and the
    #: length up to the end of its last fragment's value (see :func:`_frame_index`).
    frame_offsets: list[int] | None = None
    frame_lengths: list[int] | None = None
    has_pixels: bool = False
    has_preamble: bool = False
    #: Set when the file ended before the dataset did: ``dataset`` holds what could be read.
    partial: bool = False
    warnings: list[str] = field(default_factory=list)


class _Truncated(Exception):
    pass


_local = threading.local()


def _scratch() -> memoryview:
    """A reusable read buffer per thread, so skipping pixel data allocates nothing."""
    view = getattr(_local, "scratch", None)
    if view is None:
        view = _local.scratch = memoryview(bytearray(_SKIP_CHUNK))
    return view


class _Stream:
    """A forward-only window over a file, with absolute offsets, feeding an optional hasher."""

    __slots__ = ("buf", "eof", "fp", "hasher", "size", "start")

    def __init__(self, fp: BinaryIO, hasher: Any, size: int | None) -> None:
        self.fp = fp
        self.hasher = hasher
        self.buf = b""
        self.start = 0
        self.eof = False
        self.size = size

    def fill(self, pos: int, end: int) -> bool:
        """Make the buffer cover ``[pos, end)``; False if the file ends first."""
        have = self.start + len(self.buf)
        if end <= have:
            return True
        if pos > self.start:  # drop what has been consumed
            self.buf = self.buf[pos - self.start :]
            self.start = pos
        while have < end:
            if self.eof:
                return False
            data = self.fp.read(max(end - have, _READ_CHUNK))
            if not data:
                self.eof = True
                return False
            if self.hasher is not None:
                self.hasher.update(data)
            self.buf += data
            have += len(data)
        return True

    def skip_to(self, pos: int) -> bool:
        """Move to absolute offset ``pos`` without keeping what lies before it; False at EOF."""
        have = self.start + len(self.buf)
        if pos <= have:
            self.buf = self.buf[pos - self.start :]
            self.start = pos
            return True
        self.buf = b""
        if self.hasher is None and self.size is not None:
            self.start = pos
            if pos > self.size:
                self.eof = True
                return False
            self.fp.seek(pos)
            return True
        remaining = pos - have
        readinto = getattr(self.fp, "readinto", None)
        scratch = _scratch() if readinto is not None else None
        while remaining > 0:
            if scratch is not None:
                n = readinto(scratch[: min(remaining, _SKIP_CHUNK)])
                data = scratch[:n]
            else:
                data = self.fp.read(min(remaining, _SKIP_CHUNK))
                n = len(data)
            if not n:
                self.eof = True
                self.start = pos - remaining
                return False
            if self.hasher is not None:
                self.hasher.update(data)
            remaining -= n
        self.start = pos
        return True

    def drain(self) -> None:
        """Read to the end so the hasher has seen the whole file."""
        if self.hasher is None or self.eof:
            return
        view = _scratch()
        readinto = getattr(self.fp, "readinto", None)
        while True:
            if readinto is not None:
                n = readinto(view)
                if not n:
                    break
                self.hasher.update(view[:n])
            else:
                data = self.fp.read(_SKIP_CHUNK)
                if not data:
                    break
                self.hasher.update(data)
        self.eof = True


class _Context:
    """Per-file parsing state shared by nested datasets."""

    __slots__ = ("bulk_suffix", "eot", "frames", "pixel", "pixel_rep", "s", "threshold", "uri", "warnings")

    def __init__(self, uri: str, threshold: int, stream: _Stream) -> None:
        self.uri = uri
        self.threshold = threshold
        self.warnings: list[str] = []
        self.pixel_rep = 0
        self.s = stream
        self.pixel: tuple[int, int] | None = None
        self.bulk_suffix = ""
        #: Extended Offset Table (7FE0,0001) and its Lengths (7FE0,0002), raw, keyed 1 and 2.
        self.eot: dict[int, bytes] = {}
        self.frames: tuple[list[int], list[int]] | None = None

    def bulk_uri(self, offset: int, length: int) -> str:
        return f"{self.uri}?offset={offset}&length={length}{self.bulk_suffix}"


def _tag_str(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def read_header(
    fp: BinaryIO,
    *,
    uri: str = "",
    size: int | None = None,
    bulk_threshold: int = DEFAULT_BULK_THRESHOLD,
    hasher: Any = None,
) -> Header:
    """Parse a DICOM file (Part 10, or a bare dataset without preamble) into a :class:`Header`.

    Raises :class:`NotDicomError` when the bytes are not DICOM at all and
    :class:`InvalidDicomError` when they claim to be but nothing usable can be read.
    ``hasher`` (e.g. ``hashlib.sha256()``) sees every byte of the file once.
    """
    s = _Stream(fp, hasher, size)
    ctx = _Context(uri, bulk_threshold, s)
    s.fill(0, 132)
    head = s.buf
    preamble = len(head) >= 132 and head[128:132] == b"DICM"
    pos = 132 if preamble else 0
    if not preamble:
        if len(head) >= 4 and head[:4] == b"DICM":
            pos = 4
        elif _guess_encoding(head) is None:
            raise NotDicomError(f"{uri or 'input'}: not a DICOM file (no DICM prefix, no dataset)")
    header = Header(dataset={}, has_preamble=preamble)
    ds = header.dataset
    try:
        pos = _parse_meta(s, pos, ds, ctx)
    except _Truncated as exc:
        raise InvalidDicomError(f"{uri}: file meta information is truncated ({exc})") from None
    ts = _first_str(ds.get("00020010"))
    if preamble and not ds:
        raise InvalidDicomError(f"{uri}: DICM prefix but no file meta information")
    if ts is None and "00020010" in ds:
        ctx.warnings.append("(0002,0010) TransferSyntaxUID is empty")
    header.transfer_syntax = ts
    if not s.fill(pos, pos + 8) and s.start + len(s.buf) <= pos:
        if not ds:
            raise InvalidDicomError(f"{uri}: no data elements")
        s.drain()
        header.warnings = [*ctx.warnings, "the file holds file meta information but no dataset"]
        header.partial = True
        return header
    guess = _guess_encoding(s.buf[pos - s.start : pos - s.start + 8])
    implicit, little = _encoding_for(ts, guess, ctx)
    if ts == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        pos, s = _inflate(s, pos, ctx)
        ctx.s = s
        guess = _guess_encoding(s.buf[:8])
        implicit, little = False, True
    if guess is None and not ds:
        raise NotDicomError(f"{uri or 'input'}: not a DICOM file")
    fmt = _LE if little else _BE
    try:
        _parse_dataset(ds, ctx, pos, None, implicit, fmt, None, 0, top=True)
    except _Truncated as exc:
        header.partial = True
        ctx.warnings.append(f"truncated: {exc}")
    except _Malformed as exc:
        header.partial = True
        ctx.warnings.append(f"malformed: {exc}")
    if not ds:
        raise InvalidDicomError(f"{uri}: no data elements could be read ({'; '.join(ctx.warnings)})")
    ctx.s.drain()
    if s is not ctx.s:
        s.drain()
    header.warnings = ctx.warnings
    header.has_pixels = any(k in ds for k in ("7FE00010", "7FE00008", "7FE00009"))
    if ctx.pixel is not None:
        header.pixel_data_offset, header.pixel_data_length = ctx.pixel
    if ctx.frames is not None:
        header.frame_offsets, header.frame_lengths = ctx.frames
    return header


class _Malformed(Exception):
    pass


#: Implicit VR lookups with unambiguous dictionary VRs, the common case, without a function call.
_IMPLICIT_VR: dict[int, str] = {}


def _init_implicit_vr() -> None:
    from voxlake.dicom.vr import _VRS

    _IMPLICIT_VR.update({t: v for t, v in _VRS.items() if len(v) == 2 and v != "UN" and v in ALL_VRS})


_init_implicit_vr()

_STRUCTS: dict[tuple[bool, int, str], Struct] = {}

#: Text VRs whose single value is a stripped string (or a number for IS/DS), the fast path.
_PLAIN_TEXT = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "SH", "LO", "UC", "IS", "DS"})


def _guess_encoding(b: bytes) -> tuple[bool, bool] | None:
    """Guess (implicit, little) from the first element of a dataset; None if it is not one."""
    if len(b) < 8:
        return None
    for little, st in ((True, _LE), (False, _BE)):
        group, elem = st["HH"].unpack_from(b, 0)
        if group == 0 or group > 0x0028 or group & 1:
            continue
        if b[4:6] in _VR_BYTES:
            return (False, little)
        length = st["L"].unpack_from(b, 4)[0]
        tag = group << 16 | elem
        if dictionary_vr(tag) != "UN" and (length < (1 << 24) or length == UNDEFINED_LENGTH):
            return (True, little)
    return None


def _encoding_for(ts: str | None, guess: tuple[bool, bool] | None, ctx: _Context) -> tuple[bool, bool]:
    if ts == IMPLICIT_VR_LITTLE_ENDIAN:
        declared = (True, True)
    elif ts == EXPLICIT_VR_BIG_ENDIAN:
        declared = (False, False)
    elif ts is None:
        return guess or (True, True)
    else:
        declared = (False, True)
    if guess is not None and guess != declared:
        ctx.warnings.append(
            f"dataset is encoded as {'implicit' if guess[0] else 'explicit'} VR "
            f"{'little' if guess[1] else 'big'} endian, not as Transfer Syntax {ts} declares"
        )
        return guess
    return declared


def _inflate(s: _Stream, pos: int, ctx: _Context) -> tuple[int, _Stream]:
    import io

    chunks = []
    if s.fill(pos, pos + 1):
        chunks.append(s.buf[pos - s.start :])
    while True:
        data = s.fp.read(_SKIP_CHUNK)
        if not data:
            break
        if s.hasher is not None:
            s.hasher.update(data)
        chunks.append(data)
    s.eof = True
    try:
        inflated = zlib.decompress(b"".join(chunks), -15)
    except zlib.error as exc:
        raise InvalidDicomError(f"{ctx.uri}: deflated dataset cannot be inflated ({exc})") from None
    ctx.bulk_suffix = "&deflated=1"
    ctx.warnings.append("deflated transfer syntax: bulk data offsets refer to the inflated dataset")
    inner = _Stream(io.BytesIO(inflated), None, len(inflated))
    return 0, inner


def _parse_meta(s: _Stream, pos: int, ds: dict[str, Any], ctx: _Context) -> int:
    """File meta information (group 0002) is always explicit VR little endian (PS3.10 7.1)."""
    while s.fill(pos, pos + 8):
        off = pos - s.start
        group = s.buf[off] | s.buf[off + 1] << 8
        if group != 2:
            break
        vr_bytes = s.buf[off + 4 : off + 6]
        if vr_bytes not in _VR_BYTES:
            # Some writers put group 0002 in implicit VR; read it the same way rather than fail.
            return _parse_dataset(ds, ctx, pos, None, True, _LE, None, 0, top=True, meta_only=True)
        return _parse_dataset(ds, ctx, pos, None, False, _LE, None, 0, top=True, meta_only=True)
    return pos


def _parse_dataset(
    ds: dict[str, Any],
    ctx: _Context,
    pos: int,
    end: int | None,
    implicit: bool,
    fmt: dict[str, Struct],
    encodings: list[str] | None,
    depth: int,
    *,
    top: bool = False,
    meta_only: bool = False,
) -> int:
    """Fill ``ds`` with the elements from ``pos`` up to ``end`` (or an item delimiter, or EOF at
    the top level) and return the offset after them. ``ds`` is filled in place so that whatever was
    read survives a truncation raised from deep inside."""
    s = ctx.s
    hh = fmt["HH"]
    hhl = fmt["HHL"]
    u16 = fmt["H"]
    u32 = fmt["L"]
    threshold = ctx.threshold
    little = fmt is _LE
    creators: dict[tuple[int, int], str] = {}
    b = s.buf
    bstart = s.start
    bend = bstart + len(b)
    while end is None or pos < end:
        if pos + 12 > bend:
            s.fill(pos, pos + 12)
            b = s.buf
            bstart = s.start
            bend = bstart + len(b)
            if pos + 8 > bend:
                if top and bend == pos:
                    return pos
                if top and bend > pos and not any(b[pos - bstart :]):
                    return pos  # trailing zero padding
                raise _Truncated(f"element header at offset {pos} is cut off")
        off = pos - bstart
        if meta_only and b[off] | b[off + 1] << 8 != 2:
            return pos
        if implicit:
            group, elem, length = hhl.unpack_from(b, off)
            hdr = 8
            vr = None
        else:
            group, elem = hh.unpack_from(b, off)
            vr_bytes = b[off + 4 : off + 6]
            vr = _VR_BYTES.get(vr_bytes)
            if vr is None:
                length = u32.unpack_from(b, off + 4)[0]
                if group != 0xFFFE:
                    ctx.warnings.append(
                        f"{_tag_str(group << 16 | elem)} has no valid VR ({vr_bytes!r}); read as implicit VR"
                    )
                hdr = 8
            elif vr in LONG_VRS:
                if pos + 12 > bend:
                    raise _Truncated(f"element header at offset {pos} is cut off")
                length = u32.unpack_from(b, off + 8)[0]
                hdr = 12
            else:
                length = u16.unpack_from(b, off + 6)[0]
                hdr = 8
        tag = group << 16 | elem
        if group == 0xFFFE:
            if tag == ITEM_DELIMITATION and end is None and not top:
                return pos + 8
            if tag == SEQUENCE_DELIMITATION and top:
                ctx.warnings.append(f"stray sequence delimiter at offset {pos} ignored")
                pos += 8
                continue
            raise _Malformed(f"unexpected item tag {_tag_str(tag)} at offset {pos}")
        reinterpreted = False
        if group & 1 and vr in (None, "UN") and elem >= 0x1000 and creators:
            creator = creators.get((group, elem >> 8))
            if creator is not None:
                private_vr = _private_vr(tag, creator)
                if private_vr is not None:
                    vr = private_vr
                    reinterpreted = True
        if vr is None:
            vr = _IMPLICIT_VR.get(tag) or _resolve_vr(tag, length, ctx)
        elif vr == "UN" and not group & 1:
            known = dictionary_vr(tag)
            if known != "UN" and " or " not in known:
                # PS3.5 6.2.2: a public element sent as UN is read with its dictionary VR,
                # and a sequence inside UN is implicit VR little endian.
                vr = known
                reinterpreted = True
        key = _HEX[group] + _HEX[elem]
        vpos = pos + hdr
        if vr == "SQ":
            seq_implicit, seq_fmt = (True, _LE) if reinterpreted else (implicit, fmt)
            pos = _element_sequence(ds, ctx, tag, pos, hdr, length, seq_implicit, seq_fmt, encodings, depth)
            b = s.buf
            bstart = s.start
            bend = bstart + len(b)
            continue
        if vr == "UN" and length == UNDEFINED_LENGTH:
            pos = _element_sequence(ds, ctx, tag, pos, hdr, length, True, _LE, encodings, depth)
            b = s.buf
            bstart = s.start
            bend = bstart + len(b)
            continue
        if length == UNDEFINED_LENGTH:
            # Encapsulated pixel data (PS3.5 A.4): fragments in items until a sequence delimiter.
            if depth == 0 and tag == 0x7FE00010:
                vend = _index_fragments(ctx, vpos, fmt, ds)
            else:
                vend = _skip_fragments(ctx, vpos, fmt)
            length = vend - vpos
            ds[key] = {"vr": vr, "BulkDataURI": ctx.bulk_uri(vpos, length)}
            if depth == 0 and tag in PIXEL_TAGS:
                ctx.pixel = (vpos, length)
            pos = vend
            b = s.buf
            bstart = s.start
            bend = bstart + len(b)
            continue
        vend = vpos + length
        if depth == 0 and (tag == 0x7FE00001 or tag == 0x7FE00002) and length <= MAX_INLINE_VALUE:
            # Extended Offset Table (PS3.3 C.7.6.3.1.8): kept for the frame index.
            if s.fill(pos, vend):
                ctx.eot[tag & 0xF] = bytes(s.buf[vpos - s.start : vend - s.start])
            b = s.buf
            bstart = s.start
            bend = bstart + len(b)
        if length & 1 and vr not in ("UN", "OB"):
            ctx.warnings.append(f"{_tag_str(tag)} has odd length {length}")
        if tag in PIXEL_TAGS or (length > threshold and vr in BINARY_VRS) or length > MAX_INLINE_VALUE:
            if length > MAX_INLINE_VALUE and tag not in PIXEL_TAGS and vr not in BINARY_VRS:
                ctx.warnings.append(f"{_tag_str(tag)} {vr} value of {length} bytes kept as bulk data")
            ds[key] = {"vr": vr, "BulkDataURI": ctx.bulk_uri(vpos, length)}
            if depth == 0 and tag in PIXEL_TAGS:
                ctx.pixel = (vpos, length)
            if not s.skip_to(vend):
                raise _Truncated(f"{_tag_str(tag)} declares {length} bytes at offset {vpos} but the file ends first")
            pos = vend
            b = s.buf
            bstart = s.start
            bend = bstart + len(b)
            continue
        if vend > bend:
            ok = s.fill(pos, vend)
            b = s.buf
            bstart = s.start
            bend = bstart + len(b)
            if not ok:
                raise _Truncated(f"{_tag_str(tag)} declares {length} bytes at offset {vpos} but the file ends first")
        off = vpos - bstart
        elem_json: dict[str, Any] = {"vr": vr}
        if length:
            raw = b[off : off + length]
            if vr in _PLAIN_TEXT and (encodings is None or vr in ASCII_VRS) and not group & 1 and tag != 0x00080005:
                text = raw.decode("latin-1")
                if "\\" not in text:
                    text = text.strip(" \x00")
                    if text:
                        if vr == "IS" or vr == "DS":
                            elem_json["Value"] = [_number(text, int if vr == "IS" else float, vr, tag, ctx)]
                        else:
                            elem_json["Value"] = [text]
                    ds[key] = elem_json
                    pos = vend
                    continue
            value = _decode(vr, raw, tag, ctx, encodings, little)
            if value is not None:
                if vr in BINARY_VRS:
                    elem_json["InlineBinary"] = value
                else:
                    elem_json["Value"] = value
                if tag == 0x00080005:
                    encodings = _encodings(value, ctx)
                elif group & 1 and 0x0010 <= elem <= 0x00FF and isinstance(value[0], str):
                    creators[(group, elem)] = value[0]
                elif tag == 0x00280103 and depth == 0 and isinstance(value[0], int):
                    ctx.pixel_rep = value[0]
        ds[key] = elem_json
        pos = vend
    return pos


@lru_cache(maxsize=8192)
def _private_vr(tag: int, creator: str) -> str | None:
    """The VR pydicom's private dictionary gives a private element of a known creator."""
    from pydicom.datadict import private_dictionary_VR

    try:
        vr = private_dictionary_VR(tag, creator)
    except KeyError:
        return None
    return vr if vr in ALL_VRS else None


def _resolve_vr(tag: int, length: int, ctx: _Context) -> str:
    """The VR of an implicit-VR element: from the dictionary, with ambiguous VRs resolved."""
    vr = dictionary_vr(tag)
    if len(vr) == 2:
        if vr == "UN" and tag >> 16 & 1 and 0x0010 <= tag & 0xFFFF <= 0x00FF:
            return "LO"  # private creator (PS3.5 7.8.1)
        return vr
    if vr == "NONE":
        return "UN"
    if "SS" in vr and "US" in vr:
        if "OW" in vr and length > 2:
            return "OW"
        return "SS" if ctx.pixel_rep == 1 else "US"
    if "OW" in vr:
        return "US" if "US" in vr and length <= 2 else "OW"
    return vr.split(" or ")[0]


def _element_sequence(
    ds: dict[str, Any],
    ctx: _Context,
    tag: int,
    pos: int,
    hdr: int,
    length: int,
    implicit: bool,
    fmt: dict[str, Struct],
    encodings: list[str] | None,
    depth: int,
) -> int:
    if depth >= MAX_DEPTH:
        raise _Malformed(f"{_tag_str(tag)} nests sequences deeper than {MAX_DEPTH} levels")
    items: list[dict[str, Any]] = []
    ds[_HEX[tag >> 16] + _HEX[tag & 0xFFFF]] = {"vr": "SQ", "Value": items} if length else {"vr": "SQ"}
    vpos = pos + hdr
    end = None if length == UNDEFINED_LENGTH else vpos + length
    return _parse_items(items, ctx, vpos, end, implicit, fmt, encodings, depth + 1)


def _parse_items(
    items: list[dict[str, Any]],
    ctx: _Context,
    pos: int,
    end: int | None,
    implicit: bool,
    fmt: dict[str, Struct],
    encodings: list[str] | None,
    depth: int,
) -> int:
    s = ctx.s
    hhl = fmt["HHL"]
    while end is None or pos < end:
        if not s.fill(pos, pos + 8):
            raise _Truncated(f"sequence item header at offset {pos} is cut off")
        group, elem, length = hhl.unpack_from(s.buf, pos - s.start)
        tag = group << 16 | elem
        if tag == SEQUENCE_DELIMITATION:
            return pos + 8
        if tag != ITEM:
            raise _Malformed(f"expected an item tag at offset {pos}, found {_tag_str(tag)}")
        item: dict[str, Any] = {}
        items.append(item)
        if length == UNDEFINED_LENGTH:
            pos = _parse_dataset(item, ctx, pos + 8, None, implicit, fmt, encodings, depth)
        else:
            item_end = pos + 8 + length
            _parse_dataset(item, ctx, pos + 8, item_end, implicit, fmt, encodings, depth)
            pos = item_end
    return pos


def _skip_fragments(ctx: _Context, pos: int, fmt: dict[str, Struct]) -> int:
    s = ctx.s
    hhl = fmt["HHL"]
    while True:
        if not s.fill(pos, pos + 8):
            raise _Truncated(f"encapsulated pixel data item at offset {pos} is cut off")
        group, elem, length = hhl.unpack_from(s.buf, pos - s.start)
        tag = group << 16 | elem
        if tag == SEQUENCE_DELIMITATION:
            return pos + 8
        if tag != ITEM:
            raise _Malformed(f"expected a pixel data fragment at offset {pos}, found {_tag_str(tag)}")
        pos += 8 + length
        if not s.skip_to(pos):
            raise _Truncated(f"pixel data fragment ending at offset {pos} is cut off")


_EOI = b"\xff\xd9"


def _index_fragments(ctx: _Context, pos: int, fmt: dict[str, Struct], ds: dict[str, Any]) -> int:
    """Skip top-level encapsulated Pixel Data like :func:`_skip_fragments`, recording each
    fragment's item header (and, only when no offset table will tell frame boundaries, whether
    its last 10 bytes hold a JPEG EOI marker); ``ctx.frames`` gets the frame index."""
    s = ctx.s
    hhl = fmt["HHL"]
    basic: list[int] | None = None
    fragments: list[tuple[int, int, bool]] = []
    need_eoi = False
    while True:
        if not s.fill(pos, pos + 8):
            raise _Truncated(f"encapsulated pixel data item at offset {pos} is cut off")
        group, elem, length = hhl.unpack_from(s.buf, pos - s.start)
        tag = group << 16 | elem
        if tag == SEQUENCE_DELIMITATION:
            break
        if tag != ITEM:
            raise _Malformed(f"expected a pixel data fragment at offset {pos}, found {_tag_str(tag)}")
        vpos = pos + 8
        pos = vpos + length
        if basic is None:
            basic = []
            if length and length % 4 == 0 and length <= MAX_INLINE_VALUE and s.fill(vpos, pos):
                off = vpos - s.start
                basic = list(Struct(fmt["L"].format[0] + f"{length // 4}L").unpack_from(s.buf, off))
            need_eoi = not basic and not ctx.eot
        else:
            eoi = False
            if need_eoi and length:
                tail = max(vpos, pos - 10)
                if s.skip_to(tail) and s.fill(tail, pos):
                    eoi = _EOI in s.buf[tail - s.start : pos - s.start]
            fragments.append((vpos, length, eoi))
        if not s.skip_to(pos):
            raise _Truncated(f"pixel data fragment ending at offset {pos} is cut off")
    ctx.frames = _frame_index(ctx, basic or [], fragments, ds, fmt)
    return pos + 8


def _frame_index(
    ctx: _Context,
    basic: list[int],
    fragments: list[tuple[int, int, bool]],
    ds: dict[str, Any],
    fmt: dict[str, Struct],
) -> tuple[list[int], list[int]] | None:
    """Where each frame's fragments are, found as pydicom's ``get_frame`` / ``generate_frames``
    find them: the Extended Offset Table, else the Basic Offset Table, else one fragment per frame
    (when as many fragments as frames), else all fragments for one frame, else fragments up to one
    ending in a JPEG EOI marker. A frame is ``(offset of its first fragment's value, length up to
    the end of its last fragment's value)``: one byte range that holds the item headers between
    its fragments. None (and a warning) when no rule applies."""
    if not fragments:
        return None
    first_item = fragments[0][0] - 8
    if 1 in ctx.eot and 2 in ctx.eot:
        raw_offsets, raw_lengths = ctx.eot[1], ctx.eot[2]
        n = min(len(raw_offsets), len(raw_lengths)) // 8
        q = Struct(fmt["L"].format[0] + f"{n}Q")
        offsets = [first_item + o + 8 for o in q.unpack_from(raw_offsets, 0)]
        return offsets, list(q.unpack_from(raw_lengths, 0))
    starts = {vpos - 8: i for i, (vpos, _, _) in enumerate(fragments)}
    groups: list[tuple[int, int]] = []  # (first fragment, last fragment) per frame
    if basic and all(first_item + o in starts for o in basic):
        first = [starts[first_item + o] for o in basic]
        groups = [(f, nxt - 1) for f, nxt in zip(first, [*first[1:], len(fragments)], strict=True)]
    else:
        if basic:
            ctx.warnings.append("Basic Offset Table does not point at fragment items; ignored")
        frames = _first_int(ds.get("00280008")) or 1
        if len(fragments) == frames:
            groups = [(i, i) for i in range(frames)]
        elif len(fragments) == 1 or frames == 1:
            groups = [(0, len(fragments) - 1)]
        elif len(fragments) > frames:
            start = 0
            for i, (_, _, eoi) in enumerate(fragments):
                if eoi:
                    groups.append((start, i))
                    start = i + 1
            if start < len(fragments):
                groups.append((start, len(fragments) - 1))
        else:
            ctx.warnings.append(
                f"encapsulated Pixel Data has {len(fragments)} fragments for {frames} frames and no "
                "offset table: frames cannot be located"
            )
            return None
    return (
        [fragments[a][0] for a, _ in groups],
        [fragments[z][0] + fragments[z][1] - fragments[a][0] for a, z in groups],
    )


def _first_int(element: dict[str, Any] | None) -> int | None:
    value = (element or {}).get("Value")
    return value[0] if value and isinstance(value[0], int) else None


def _encodings(value: list[Any], ctx: _Context) -> list[str] | None:
    from pydicom.charset import convert_encodings

    terms = [v or "" for v in value]
    try:
        encodings = convert_encodings(terms)
    except Exception as exc:  # pydicom warns or raises on unknown terms depending on config
        ctx.warnings.append(f"(0008,0005) SpecificCharacterSet {terms}: {exc}")
        return None
    if len(encodings) == 1 and encodings[0] in _LATIN1:
        return None
    return encodings


def _decode_text(raw: bytes, vr: str, encodings: list[str] | None, ctx: _Context, tag: int) -> str:
    if encodings is None or vr not in CHARSET_VRS:
        return raw.decode("latin-1")
    if encodings == ["UTF8"] or encodings == ["utf_8"]:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            ctx.warnings.append(f"{_tag_str(tag)} is not valid UTF-8")
            return raw.decode("utf-8", "replace")
    from pydicom.charset import decode_bytes

    delimiters = {0x5C, 0x3D, 0x5E} if vr == "PN" else {0x5C}
    try:
        return decode_bytes(raw, encodings, delimiters)
    except Exception as exc:
        ctx.warnings.append(f"{_tag_str(tag)} cannot be decoded with {encodings}: {exc}")
        return raw.decode("latin-1")


def _decode(
    vr: str, raw: bytes, tag: int, ctx: _Context, encodings: list[str] | None, little: bool
) -> list[Any] | str | None:
    """One element's value in its DICOM JSON form (PS3.18 F.2.3): a list, or base64 for binary."""
    num = NUMERIC_VRS.get(vr)
    if num is not None:
        code, size = num
        n = len(raw) // size
        if len(raw) % size:
            ctx.warnings.append(f"{_tag_str(tag)} {vr} length {len(raw)} is not a multiple of {size}")
        key = (little, n, code)
        st = _STRUCTS.get(key)
        if st is None:
            st = _STRUCTS[key] = Struct(("<" if little else ">") + str(n) + code)
        values = list(st.unpack_from(raw, 0))
        if code in "fd":
            for i, v in enumerate(values):
                if not math.isfinite(v):
                    values[i] = None
                    ctx.warnings.append(f"{_tag_str(tag)} {vr} holds {v}, not a JSON number")
        return values or None
    if vr in BINARY_VRS:
        return base64.b64encode(raw).decode("ascii")
    if vr == "AT":
        n = len(raw) // 4
        pairs = Struct(("<" if little else ">") + str(2 * n) + "H").unpack_from(raw, 0)
        return [_HEX[pairs[i]] + _HEX[pairs[i + 1]] for i in range(0, 2 * n, 2)] or None
    text = _decode_text(raw, vr, encodings, ctx, tag)
    if vr in SINGLE_TEXT_VRS:
        text = text.rstrip(" \x00")
        return [text] if text else None
    parts = text.split("\\")
    if vr == "PN":
        out_pn: list[Any] = []
        for p in parts:
            groups = p.rstrip(" \x00").split("=")
            pn = {
                name: g
                for name, g in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False)
                if g
            }
            out_pn.append(pn or None)
        return out_pn if any(v is not None for v in out_pn) else None
    out: list[Any] = []
    for p in parts:
        p = p.strip(" \x00")
        if not p:
            out.append(None)
        elif vr == "DS":
            out.append(_number(p, float, vr, tag, ctx))
        elif vr == "IS":
            out.append(_number(p, int, vr, tag, ctx))
        else:
            out.append(p)
    if all(v is None for v in out):
        return None
    return out


def _number(text: str, kind: type, vr: str, tag: int, ctx: _Context) -> Any:
    try:
        value = kind(text)
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            f = math.nan
        if kind is int and f.is_integer():
            return int(f)
        ctx.warnings.append(f"{_tag_str(tag)} {vr} value {text!r} is not a valid number")
        return text
    if kind is float and not math.isfinite(value):
        ctx.warnings.append(f"{_tag_str(tag)} {vr} value {text!r} is not a finite number")
        return text
    return value


def _first_str(element: dict[str, Any] | None) -> str | None:
    if not element:
        return None
    value = element.get("Value")
    if not value or not isinstance(value[0], str):
        return None
    return value[0]
