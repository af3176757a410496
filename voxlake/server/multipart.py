"""Accept headers and multipart/related bodies (PS3.18 8.7 media types, RFC 2387).

:func:`parse_accept` reads an Accept header (or the ``accept`` query parameter, PS3.18 8.3.3.1) into
media ranges, tolerating quoted and unquoted parameters (``type="application/dicom"`` and
``type=application/dicom``) and commas inside quotes. :func:`stream` writes a multipart/related body
part by part, so a 2 GB study leaves as it is read.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

#: Transfer syntaxes stored without compression: their frames are native pixels as they are.
UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"

#: Single-frame and video media types of the compressed transfer syntaxes (PS3.18 Table 8.7.3-2..4).
MEDIA_TYPE_OF_SYNTAX: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg",
    "1.2.840.10008.1.2.4.101": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}


@dataclass(frozen=True)
class MediaRange:
    """One element of an Accept header: ``multipart/related; type="application/dicom";
    transfer-syntax=*`` has ``media_type="multipart/related"`` and ``params``."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def multipart(self) -> bool:
        return self.media_type == "multipart/related"

    @property
    def part_type(self) -> str:
        """The media type of the parts (``type=``), or the range itself for a single-part range."""
        return self.params.get("type", "").lower() if self.multipart else self.media_type

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")

    def matches(self, media_type: str) -> bool:
        """Whether this range's part type admits ``media_type`` (``*/*``, ``image/*``, empty)."""
        mine = self.part_type
        if mine in ("", "*/*", "*"):
            return True
        if mine.endswith("/*"):
            return media_type.split("/", 1)[0] == mine[:-2]
        return mine == media_type


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    parts, current, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, highest ``q`` first (stable); ``[]`` for none."""
    ranges = []
    for item in _split(header or "", ","):
        pieces = _split(item, ";")
        media_type = pieces[0].strip().lower()
        if not media_type:
            continue
        params: dict[str, str] = {}
        for piece in pieces[1:]:
            key, sep, value = piece.partition("=")
            if sep:
                params[key.strip().lower()] = value.strip().strip('"').strip()
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0:
            ranges.append(MediaRange(media_type, params, q))
    return sorted(ranges, key=lambda r: -r.q)


def new_boundary() -> str:
    return "voxlake-" + secrets.token_hex(16)


def content_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    """The Content-Type of a multipart/related response; ``type`` quoted as RFC 2387 wants."""
    value = f'multipart/related; type="{part_type}"; boundary={boundary}'
    return value + (f"; transfer-syntax={transfer_syntax}" if transfer_syntax else "")


def part_header(boundary: str, media_type: str, extra: dict[str, str] | None = None) -> bytes:
    lines = [f"--{boundary}", f"Content-Type: {media_type}"]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def stream(boundary: str, parts: Iterable[tuple[str, Iterable[bytes], dict[str, str] | None]]) -> Iterator[bytes]:
    """The body of a multipart/related message: each part is ``(media type, chunks, headers)``."""
    first = True
    for media_type, chunks, extra in parts:
        yield (b"" if first else b"\r\n") + part_header(boundary, media_type, extra)
        first = False
        yield from chunks
    yield (b"" if first else b"\r\n") + f"--{boundary}--\r\n".encode()
