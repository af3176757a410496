"""Frames and bulk data of indexed instances, by byte range from the source file (WADO-RS, PS3.18 8.3).

Everything here works from one ``instances`` row (:func:`pixel_info`) and the file it points at:
a frame is found by offset arithmetic for native Pixel Data and by the frame index recorded at
ingest (``frame_offsets`` / ``frame_lengths``) for encapsulated Pixel Data, so serving one frame of
a 2 GB multi-frame object reads that frame's bytes and nothing else. No HTTP here: the DICOMweb
server maps :class:`~voxlake.errors.FrameError` to its statuses.

Example::

    row = lake.sql("SELECT * FROM instances WHERE SOPInstanceUID = '1.2.3'").arrow().to_pylist()[0]
    info = pixel_info(row)
    [jpeg] = read_frames(row["uri"], info, [1])                      # as stored, for the stored syntax
    [raw] = transcode_frames(row["uri"], info, [1], EXPLICIT_VR_LITTLE_ENDIAN)   # native pixels
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from voxlake.errors import FrameError
from voxlake.lake import storage

if TYPE_CHECKING:
    import numpy as np

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
#: Transfer syntaxes whose Pixel Data is native (not encapsulated), PS3.5 A.1-A.3, A.5.
NATIVE_SYNTAXES = frozenset(
    {
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
    }
)
#: What :func:`transcode_frames` can produce: native little endian pixels.
TRANSCODE_TARGETS = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN})

_PIXEL_KEYWORDS = {"7FE00010": "PixelData", "7FE00008": "FloatPixelData", "7FE00009": "DoubleFloatPixelData"}
_ITEM = struct.Struct("<HHL")


@dataclass(frozen=True)
class PixelInfo:
    """What locating and decoding an instance's frames needs: Image Pixel module attributes
    (PS3.3 C.7.6.3) and where Pixel Data lies in the file. Built by :func:`pixel_info`."""

    sop_instance_uid: str | None
    transfer_syntax_uid: str
    rows: int
    columns: int
    number_of_frames: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    planar_configuration: int
    pixel_keyword: str
    pixel_vr: str
    pixel_data_offset: int | None
    pixel_data_length: int | None
    frame_offsets: tuple[int, ...] | None = None
    frame_lengths: tuple[int, ...] | None = None
    #: The header as DICOM JSON (PS3.18 F.2), for rendering attributes (rescale, window, LUTs).
    meta: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def encapsulated(self) -> bool:
        return self.transfer_syntax_uid not in NATIVE_SYNTAXES

    @property
    def name(self) -> str:
        """How messages name the instance."""
        return f"instance {self.sop_instance_uid or '(no SOPInstanceUID)'}"

    @property
    def frame_bits(self) -> int:
        """Bits per native frame (PS3.5 8.1.1); YBR_FULL_422 stores two samples per pixel."""
        samples = 2 if self.photometric_interpretation == "YBR_FULL_422" else self.samples_per_pixel
        return self.rows * self.columns * samples * self.bits_allocated


def pixel_info(row: Mapping[str, Any]) -> PixelInfo:
    """The :class:`PixelInfo` of one ``instances`` row (a dict, as from ``.arrow().to_pylist()``).

    Raises :class:`FrameError` when the instance has no Pixel Data or its Image Pixel module lacks
    what frames need (Rows, Columns, BitsAllocated).
    """
    meta = row.get("meta") or {}
    if isinstance(meta, str):
        meta = json.loads(meta)
    uid = row.get("SOPInstanceUID") or _value(meta, "00080018")

    def attr(column: str | None, tag: str, default: Any = None) -> Any:
        value = row.get(column) if column else None
        if value is None:
            value = _value(meta, tag)
        return default if value is None else value

    keyword_tag = next((t for t in _PIXEL_KEYWORDS if t in meta), "7FE00010")
    if row.get("pixel_data_offset") is None and keyword_tag not in meta:
        raise FrameError(f"instance {uid}: has no Pixel Data, so no frames")
    missing = [
        k
        for k, c, t in (
            ("Rows", "Rows", "00280010"),
            ("Columns", "Columns", "00280011"),
            ("BitsAllocated", "BitsAllocated", "00280100"),
        )
        if attr(c, t) is None
    ]
    if missing:
        raise FrameError(
            f"instance {uid}: Image Pixel module lacks {', '.join(missing)}; frames cannot be read"
        )

    def number(column: str | None, tag: str, default: int | None = None) -> int:
        value = attr(column, tag, default)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise FrameError(f"instance {uid}: ({tag[:4]},{tag[4:]}) {value!r} is not a number") from None

    bits_allocated = number("BitsAllocated", "00280100")
    offsets, lengths = row.get("frame_offsets"), row.get("frame_lengths")
    return PixelInfo(
        sop_instance_uid=uid,
        transfer_syntax_uid=attr("TransferSyntaxUID", "00020010", IMPLICIT_VR_LITTLE_ENDIAN),
        rows=number("Rows", "00280010"),
        columns=number("Columns", "00280011"),
        number_of_frames=number("NumberOfFrames", "00280008", 1) or 1,
        samples_per_pixel=number(None, "00280002", 1),
        bits_allocated=bits_allocated,
        bits_stored=number(None, "00280101", bits_allocated),
        pixel_representation=number(None, "00280103", 0),
        photometric_interpretation=str(attr("PhotometricInterpretation", "00280004", "MONOCHROME2")),
        planar_configuration=number(None, "00280006", 0),
        pixel_keyword=_PIXEL_KEYWORDS[keyword_tag],
        pixel_vr=(meta.get(keyword_tag) or {}).get("vr", "OW"),
        pixel_data_offset=row.get("pixel_data_offset"),
        pixel_data_length=row.get("pixel_data_length"),
        frame_offsets=tuple(offsets) if offsets is not None else None,
        frame_lengths=tuple(lengths) if lengths is not None else None,
        meta=meta,
    )


def _value(meta: Mapping[str, Any], tag: str) -> Any:
    values = (meta.get(tag) or {}).get("Value")
    return values[0] if values else None


# -- opening files -----------------------------------------------------------------------------


@contextlib.contextmanager
def open_uri(uri: str) -> Iterator[BinaryIO]:
    """A seekable binary file for an ``instances.uri``: a local path, an fsspec URL (``s3://…``),
    or a zip member ``zip://member::archive-uri`` (nested too), as ingest writes them. Reading a
    range of a deflated zip member decompresses the member up to it; nothing is read whole."""
    if uri.startswith("zip://") and "::" in uri:
        import zipfile

        member, archive = uri[len("zip://") :].split("::", 1)
        with open_uri(archive) as outer, zipfile.ZipFile(outer) as zf, zf.open(member) as fp:
            yield fp  # type: ignore[misc]
        return
    if storage.is_local(uri):
        with open(storage.normalize(uri), "rb") as fp:
            yield fp
        return
    with storage.filesystem(uri).open(uri, "rb", cache_type="none") as fp:
        yield fp


def _read_ranges(uri: str, ranges: Sequence[tuple[int, int]], *, deflated: bool = False) -> list[bytes]:
    """The bytes of each ``(offset, length)`` range of the file, one seek and read per range."""
    if deflated:
        return _read_inflated_ranges(uri, ranges)
    out = []
    with open_uri(uri) as fp:
        for offset, length in ranges:
            fp.seek(offset)
            data = fp.read(length)
            if len(data) != length:
                raise FrameError(
                    f"{uri}: the file ends before byte {offset + length} (truncated since ingest?)"
                )
            out.append(data)
    return out


def _read_inflated_ranges(uri: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """Ranges of a Deflated Explicit VR Little Endian dataset (PS3.5 A.5), whose offsets count bytes
    of the inflated dataset after the file meta information: inflate as a stream, keeping only them."""
    wanted = sorted(set(ranges))
    found: dict[tuple[int, int], bytes] = {}
    with open_uri(uri) as fp:
        fp.seek(_dataset_start(fp, uri))
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        pos = 0
        window = b""  # inflated bytes from `pos - len(window)` kept for ranges still open
        for offset, length in wanted:
            while pos < offset + length:
                chunk = fp.read(1 << 20)
                data = inflater.decompress(chunk) if chunk else inflater.flush()
                if not data and not chunk:
                    raise FrameError(f"{uri}: deflated dataset ends before byte {offset + length}")
                keep_from = max(offset, pos - len(window))
                window = (window + data)[keep_from - (pos - len(window)) :]
                pos += len(data)
            start = offset - (pos - len(window))
            found[(offset, length)] = window[start : start + length]
    return [found[r] for r in ranges]


def _dataset_start(fp: BinaryIO, uri: str) -> int:
    """Where the dataset begins after the file meta information (explicit VR little endian)."""
    head = fp.read(132)
    pos = 132 if head[128:132] == b"DICM" else 0
    fp.seek(pos)
    while True:
        hdr = fp.read(8)
        if len(hdr) < 8 or struct.unpack_from("<H", hdr)[0] != 2:
            return pos
        if hdr[4:6] in (
            b"OB",
            b"OW",
            b"OF",
            b"SQ",
            b"UT",
            b"UN",
            b"OD",
            b"OL",
            b"OV",
            b"UC",
            b"UR",
            b"SV",
            b"UV",
        ):
            (length,) = struct.unpack("<L", fp.read(4))
            pos += 12 + length
        else:
            pos += 8 + struct.unpack_from("<H", hdr, 6)[0]
        fp.seek(pos)


def read_bulk(uri: str, offset: int, length: int, *, deflated: bool = False) -> bytes:
    """The bytes of a BulkDataURI ``<uri>?offset=N&length=M`` (``&deflated=1``: ``deflated=True``)."""
    if offset < 0 or length < 0:
        raise FrameError(f"{uri}: bulk data range offset={offset} length={length} is invalid")
    return _read_ranges(uri, [(offset, length)], deflated=deflated)[0]


def parse_bulk_data_uri(bulk_data_uri: str) -> tuple[str, int, int, bool]:
    """``(uri, offset, length, deflated)`` of a BulkDataURI as ingest writes it into ``meta``."""
    from urllib.parse import parse_qs

    uri, sep, query = bulk_data_uri.rpartition("?")
    params = parse_qs(query)
    try:
        if not sep:
            raise KeyError("offset")
        return uri, int(params["offset"][0]), int(params["length"][0]), params.get("deflated") == ["1"]
    except (KeyError, ValueError):
        raise FrameError(
            f"{bulk_data_uri!r} is not a voxlake BulkDataURI (<uri>?offset=N&length=M)"
        ) from None


# -- frames ------------------------------------------------------------------------------------


def _check_numbers(info: PixelInfo, numbers: Sequence[int], count: int) -> None:
    if not numbers:
        raise FrameError(f"{info.name}: no frame numbers requested (frames are numbered from 1)")
    for n in numbers:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= count:
            raise FrameError(
                f"{info.name}: frame {n!r} does not exist (it has {count} frame{'s' * (count != 1)}, numbered from 1)"
            )


def read_frames(uri: str, info: PixelInfo, numbers: Sequence[int]) -> list[bytes]:
    """Frames ``numbers`` (1-based, PS3.18 8.3.5.1.1) in the stored transfer syntax.

    Native: each frame's bytes (BitsAllocated 1: repacked to start at bit 0 of its first byte).
    Encapsulated: each frame's compressed bitstream, its fragments joined (PS3.5 A.4).
    """
    if info.pixel_data_offset is None:
        raise FrameError(f"{info.name}: no Pixel Data offset recorded (the file ended before it?)")
    if info.encapsulated:
        return _read_encapsulated(uri, info, numbers)
    return _read_native(uri, info, numbers)


def _read_native(uri: str, info: PixelInfo, numbers: Sequence[int]) -> list[bytes]:
    bits = info.frame_bits
    available = (info.pixel_data_length or 0) * 8 // bits if bits else 0
    count = min(info.number_of_frames, available)
    if (
        count < info.number_of_frames
        and numbers
        and max(numbers) > count
        and max(numbers) <= info.number_of_frames
    ):
        raise FrameError(
            f"{info.name}: Pixel Data holds {count} whole frames of {bits // 8} bytes, not the "
            f"{info.number_of_frames} NumberOfFrames declares; frame {max(numbers)} is missing"
        )
    _check_numbers(info, numbers, count)
    base = info.pixel_data_offset or 0
    ranges = [(base + (n - 1) * bits // 8, (bits * n + 7) // 8 - (n - 1) * bits // 8) for n in numbers]
    if info.transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN and info.pixel_vr == "OW" and bits % 16:
        return _read_big_endian_ow_bytes(uri, info, ranges)
    data = _read_ranges(uri, ranges, deflated=info.transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
    if bits % 8 == 0:
        return data
    import numpy as np  # BitsAllocated 1: a frame may start inside a byte (PS3.5 8.1.1)

    out = []
    for n, chunk in zip(numbers, data, strict=True):
        shift = (n - 1) * bits % 8
        unpacked = np.unpackbits(np.frombuffer(chunk, np.uint8), bitorder="little")[shift : shift + bits]
        out.append(np.packbits(unpacked, bitorder="little").tobytes())
    return out


def _read_big_endian_ow_bytes(uri: str, info: PixelInfo, ranges: list[tuple[int, int]]) -> list[bytes]:
    """8-bit pixels in OW under Explicit VR Big Endian are byte-swapped in 16-bit words (PS3.5
    7.3), so a frame of odd length or at an odd offset splits words: read whole words, unswap,
    cut the frame, and give it as a frame of its own would be stored (swapped, padded to even)."""
    import numpy as np

    base = info.pixel_data_offset or 0
    aligned = []
    for offset, length in ranges:
        start = base + (offset - base) // 2 * 2
        end = min(offset + length + (offset + length - base) % 2, base + (info.pixel_data_length or 0))
        aligned.append((start, end - start))
    out = []
    for (offset, length), (start, _), chunk in zip(ranges, aligned, _read_ranges(uri, aligned), strict=True):
        words = chunk + b"\0" * (len(chunk) % 2)
        plain = np.frombuffer(words, ">u2").astype("<u2").tobytes()[offset - start : offset - start + length]
        plain += b"\0" * (len(plain) % 2)
        out.append(np.frombuffer(plain, "<u2").astype(">u2").tobytes())
    return out


def _frame_index(uri: str, info: PixelInfo) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The frame index from the row; for rows indexed before it existed, from a fresh header pass
    (which seeks over fragment values and reads only item headers)."""
    if info.frame_offsets is not None and info.frame_lengths is not None:
        return info.frame_offsets, info.frame_lengths
    from voxlake.dicom.parser import read_header

    with open_uri(uri) as fp:
        size = fp.seek(0, os.SEEK_END)
        fp.seek(0)
        header = read_header(fp, uri=uri, size=size)
    if header.frame_offsets is None or header.frame_lengths is None:
        raise FrameError(
            f"{info.name}: the frames of its encapsulated Pixel Data cannot be located "
            f"({'; '.join(header.warnings) or 'no fragments'})"
        )
    return tuple(header.frame_offsets), tuple(header.frame_lengths)


def _read_encapsulated(uri: str, info: PixelInfo, numbers: Sequence[int]) -> list[bytes]:
    offsets, lengths = _frame_index(uri, info)
    _check_numbers(info, numbers, len(offsets))
    # From 8 bytes before each frame: its first fragment's item header, so the walk is exact.
    data = _read_ranges(uri, [(offsets[n - 1] - 8, lengths[n - 1] + 8) for n in numbers])
    return [_join_fragments(chunk, uri, info, n) for n, chunk in zip(numbers, data, strict=True)]


def _join_fragments(chunk: bytes, uri: str, info: PixelInfo, number: int) -> bytes:
    """The values of the fragment items in ``chunk`` joined: a frame's bitstream (PS3.5 A.4)."""
    parts = []
    pos = 0
    while pos < len(chunk):
        group, elem, length = _ITEM.unpack_from(chunk, pos) if pos + 8 <= len(chunk) else (0, 0, 0)
        if (group, elem) != (0xFFFE, 0xE000) or pos + 8 + length > len(chunk):
            raise FrameError(
                f"{info.name}: frame {number} is not at the fragments the frame index names in {uri} "
                "(file changed since ingest?)"
            )
        parts.append(chunk[pos + 8 : pos + 8 + length])
        pos += 8 + length
    return parts[0] if len(parts) == 1 else b"".join(parts)


# -- decoding ----------------------------------------------------------------------------------


def _decode_options(info: PixelInfo) -> dict[str, Any]:
    return {
        "rows": info.rows,
        "columns": info.columns,
        "samples_per_pixel": info.samples_per_pixel,
        "bits_allocated": info.bits_allocated,
        "bits_stored": info.bits_stored,
        "pixel_representation": info.pixel_representation,
        "photometric_interpretation": info.photometric_interpretation,
        "planar_configuration": info.planar_configuration,
        "pixel_keyword": info.pixel_keyword,
        "pixel_vr": info.pixel_vr,
        "number_of_frames": 1,
    }


def decode_frames(uri: str, info: PixelInfo, numbers: Sequence[int]) -> list[np.ndarray]:
    """Frames as arrays, as pydicom's ``pixel_array`` gives them: (rows, columns[, samples]),
    samples interleaved, YCbCr converted to RGB, BitsAllocated 1 unpacked to one pixel per byte.
    Only the requested frames are read and decoded."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    try:
        decoder = get_decoder(info.transfer_syntax_uid)
    except NotImplementedError:
        raise FrameError(
            f"{info.name}: transfer syntax {info.transfer_syntax_uid} has no pixel data decoder"
        ) from None
    if not decoder.is_available:
        raise FrameError(
            f"{info.name}: no installed plugin decodes transfer syntax {info.transfer_syntax_uid} "
            f"({decoder.missing_dependencies})"
        )
    stored = read_frames(uri, info, numbers)
    options = _decode_options(info)
    syntax = info.transfer_syntax_uid
    if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        syntax = EXPLICIT_VR_LITTLE_ENDIAN  # the inflated bytes are explicit VR little endian
        decoder = get_decoder(syntax)
    out = []
    for n, frame in zip(numbers, stored, strict=True):
        src = frame
        if info.encapsulated:
            from pydicom.encaps import encapsulate

            src = encapsulate([frame])
        try:
            arr, _ = decoder.as_array(src, transfer_syntax_uid=UID(syntax), **options)
        except Exception as exc:
            raise FrameError(
                f"{info.name}: frame {n} cannot be decoded ({type(exc).__name__}: {exc})"
            ) from exc
        out.append(arr)
    return out


def transcode_frames(
    uri: str, info: PixelInfo, numbers: Sequence[int], transfer_syntax_uid: str
) -> list[bytes]:
    """Frames ``numbers`` in ``transfer_syntax_uid`` (PS3.18 8.7.3.5.2).

    The stored bytes when nothing changes: the stored syntax is requested, or the stored pixels
    are native little endian (Implicit, Explicit and Deflated Explicit VR Little Endian encode
    pixels alike) and a native little endian syntax is requested. Otherwise (compressed or big
    endian) the frames are decoded to native little endian pixels: the bytes of
    :func:`decode_frames`'s arrays, BitsAllocated 1 bit-packed again. Decoded color frames are
    interleaved (PlanarConfiguration 0) and YBR_FULL/YBR_FULL_422 become RGB, as pydicom decodes
    them; a server describing them should say so (PhotometricInterpretation RGB).
    """
    native_le = info.transfer_syntax_uid in NATIVE_SYNTAXES - {EXPLICIT_VR_BIG_ENDIAN}
    if transfer_syntax_uid == info.transfer_syntax_uid or (
        native_le and transfer_syntax_uid in TRANSCODE_TARGETS
    ):
        return read_frames(uri, info, numbers)
    if transfer_syntax_uid not in TRANSCODE_TARGETS:
        raise FrameError(
            f"{info.name}: cannot transcode frames from {info.transfer_syntax_uid} to {transfer_syntax_uid}; "
            f"request the stored syntax or one of {', '.join(sorted(TRANSCODE_TARGETS))}"
        )
    import numpy as np

    out = []
    for arr in decode_frames(uri, info, numbers):
        if info.bits_allocated == 1:
            out.append(np.packbits(arr.ravel(), bitorder="little").tobytes())
        else:
            out.append(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())
    return out
