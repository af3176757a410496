"""Rendered frames and thumbnails for WADO-RS (PS3.18 8.3.5 Rendered Resources, 8.3.5.1 query
parameters, 6.5.8 Thumbnail): consumer-format images (JPEG, PNG) of one frame, with the standard
grayscale pipeline of PS3.3 C.11: Modality LUT (Rescale Slope/Intercept), VOI LUT (window from
the request, else the header's first WindowCenter/WindowWidth, else the frame's min/max) with the
LINEAR, LINEAR_EXACT or SIGMOID function (C.11.2.1.2-3), and MONOCHROME1 inverted. Color frames
come out RGB (YCbCr converted, PALETTE COLOR looked up). ``viewport`` scales to fit, keeping
the aspect ratio. numpy and Pillow only; no HTTP here.

Example::

    info = pixel_info(row)
    jpeg = render(row["uri"], info, 1, window=(40, 400, "LINEAR"), viewport=(512, 512))
    png = thumbnail(row["uri"], info, media_type="image/png")
"""

from __future__ import annotations

import io
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from voxlake.dicom.frames import PixelInfo, decode_frames, read_bulk
from voxlake.errors import FrameError, InvalidArgumentError

if TYPE_CHECKING:
    import numpy as np

#: Side of the square a thumbnail fits into (PS3.18 leaves the size to the origin server).
THUMBNAIL_SIZE = 128

_SHARED_FG = "52009229"
_PER_FRAME_FG = "52009230"
_PIXEL_VALUE_TRANSFORMATION = "00289145"
_FRAME_VOI_LUT = "00289132"
_PALETTE_TAGS = (
    "00281101", "00281102", "00281103", "00281199",
    "00281201", "00281202", "00281203", "00281221", "00281222", "00281223",
)  # fmt: skip


class MediaType(StrEnum):
    """Rendered media types supported (PS3.18 8.7.4, single-frame image media types)."""

    JPEG = "image/jpeg"
    PNG = "image/png"


class VOILUTFunction(StrEnum):
    """VOI LUT Function (0028,1056), PS3.3 C.11.2.1.3."""

    LINEAR = "LINEAR"
    LINEAR_EXACT = "LINEAR_EXACT"
    SIGMOID = "SIGMOID"


def _enum(kind: type[StrEnum], value: Any, what: str) -> Any:
    try:
        return kind(value.upper() if kind is VOILUTFunction and isinstance(value, str) else value)
    except ValueError:
        valid = ", ".join(m.value for m in kind)  # type: ignore[attr-defined]
        raise InvalidArgumentError(f"{what} must be one of {valid}, not {value!r}") from None


def render(
    uri: str,
    info: PixelInfo,
    frame: int | None = None,
    *,
    media_type: str = "image/jpeg",
    window: tuple[float, float, str] | None = None,
    viewport: tuple[int, int] | None = None,
    quality: int = 90,
) -> bytes:
    """One frame (the first when ``frame`` is None) as a JPEG or PNG image.

    ``window`` is the request's ``window=center,width,function`` (PS3.18 8.3.5.1.4), in
    Modality LUT output units (e.g. HU); ``viewport`` its ``viewport=vw,vh`` (columns, rows): the
    image is scaled to fit inside, keeping its aspect ratio; ``quality`` (1-100) is for JPEG.
    Raises :class:`InvalidArgumentError` for a bad option and :class:`FrameError` for a frame
    that does not exist or cannot be decoded.
    """
    kind = _enum(MediaType, media_type, "media_type")
    if not 1 <= quality <= 100:
        raise InvalidArgumentError(f"quality must be between 1 and 100, not {quality}")
    if viewport is not None and (len(viewport) != 2 or min(viewport) < 1):
        raise InvalidArgumentError(f"viewport must be (columns, rows), both at least 1, not {viewport!r}")
    voi = None
    if window is not None:
        center, width, function = window
        voi = (float(center), float(width), _enum(VOILUTFunction, function, "window function"))
        _check_width(voi[1], voi[2])
    image = _pil_image(rendered_pixels(uri, info, frame, window=voi))
    if viewport is not None:
        from PIL import Image

        scale = min(viewport[0] / image.width, viewport[1] / image.height)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if kind is MediaType.JPEG:
        image.save(out, format="JPEG", quality=quality)
    else:
        image.save(out, format="PNG")
    return out.getvalue()


def thumbnail(
    uri: str,
    info: PixelInfo,
    frame: int | None = None,
    *,
    media_type: str = "image/jpeg",
    size: int = THUMBNAIL_SIZE,
    quality: int = 75,
) -> bytes:
    """A small rendered image (PS3.18 6.5.8): :func:`render` with the header's window, fitted into
    a ``size`` x ``size`` viewport. Series and study thumbnails are the server's choice of instance."""
    return render(uri, info, frame, media_type=media_type, viewport=(size, size), quality=quality)


def _check_width(width: float, function: VOILUTFunction) -> None:
    if width < 1 if function is VOILUTFunction.LINEAR else width <= 0:
        minimum = "at least 1" if function is VOILUTFunction.LINEAR else "greater than 0"
        raise InvalidArgumentError(f"window width must be {minimum} for {function.value}, not {width:g}")


def rendered_pixels(
    uri: str,
    info: PixelInfo,
    frame: int | None = None,
    *,
    window: tuple[float, float, VOILUTFunction] | None = None,
) -> np.ndarray:
    """The frame as 8-bit display values: (rows, columns) grayscale or (rows, columns, 3) RGB."""
    import numpy as np

    number = 1 if frame is None else frame
    arr = decode_frames(uri, info, [number])[0]
    if info.photometric_interpretation == "PALETTE COLOR":
        arr = _palette(uri, info, arr)
    if arr.ndim == 3:
        if window is not None:
            pass  # PS3.18 8.3.5.1.4: windowing applies to grayscale images only
        return _to_8bit(arr, info)
    values = arr.astype(np.float64)
    slope, intercept = _rescale(info, number)
    if slope != 1 or intercept != 0:
        values = values * slope + intercept
    if window is None:
        window = _header_window(info, number)
    if window is None:
        lo, hi = float(values.min()), float(values.max())
        out = (values - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(values)
    else:
        out = _voi(values, *window)
    if info.photometric_interpretation == "MONOCHROME1":
        out = 255 - out
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _voi(x: np.ndarray, center: float, width: float, function: VOILUTFunction) -> np.ndarray:
    """PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT) and C.11.2.1.3.1 (SIGMOID), output range 0-255."""
    import numpy as np

    if function is VOILUTFunction.SIGMOID:
        return 255 / (1 + np.exp(-4 * (x - center) / width))
    if function is VOILUTFunction.LINEAR_EXACT:
        return np.clip(((x - center) / width + 0.5) * 255, 0, 255)
    if width <= 1:  # C.11.2.1.2.1: a width of 1 is a threshold at the center
        return np.where(x <= center - 0.5, 0.0, 255.0)
    return np.clip(((x - (center - 0.5)) / (width - 1) + 0.5) * 255, 0, 255)


def _to_8bit(arr: np.ndarray, info: PixelInfo) -> np.ndarray:
    import numpy as np

    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        lo, hi = float(arr.min()), float(arr.max())
        return (
            np.zeros(arr.shape, np.uint8) if hi <= lo else ((arr - lo) * (255 / (hi - lo))).astype(np.uint8)
        )
    bits = max(8, min(info.bits_stored, arr.dtype.itemsize * 8))
    if info.photometric_interpretation == "PALETTE COLOR":
        bits = 16 if int(arr.max()) > 255 else 8
    return (arr.astype(np.int64) >> (bits - 8)).clip(0, 255).astype(np.uint8)


def _functional_group_item(info: PixelInfo, number: int, sequence: str) -> dict[str, Any] | None:
    """The item of a functional group macro for this frame: shared, else per-frame (PS3.3 C.7.6.16)."""
    meta = info.meta
    for fg, index in ((_SHARED_FG, 0), (_PER_FRAME_FG, number - 1)):
        items = (meta.get(fg) or {}).get("Value") or []
        if index < len(items) and isinstance(items[index], dict):
            inner = (items[index].get(sequence) or {}).get("Value") or []
            if inner and isinstance(inner[0], dict):
                return inner[0]
    return None


def _number(dataset: dict[str, Any] | None, tag: str) -> float | None:
    values = ((dataset or {}).get(tag) or {}).get("Value") or []
    return float(values[0]) if values and isinstance(values[0], (int, float)) else None


def _rescale(info: PixelInfo, number: int) -> tuple[float, float]:
    source: dict[str, Any] | None = dict(info.meta)
    if _number(source, "00281053") is None:
        source = _functional_group_item(info, number, _PIXEL_VALUE_TRANSFORMATION)
    slope, intercept = _number(source, "00281053"), _number(source, "00281052")
    return (1.0 if slope is None else slope), (0.0 if intercept is None else intercept)


def _header_window(info: PixelInfo, number: int) -> tuple[float, float, VOILUTFunction] | None:
    source: dict[str, Any] | None = dict(info.meta)
    if _number(source, "00281050") is None:
        source = _functional_group_item(info, number, _FRAME_VOI_LUT)
    center, width = _number(source, "00281050"), _number(source, "00281051")
    if center is None or width is None:
        return None
    name = (((source or {}).get("00281056") or {}).get("Value") or ["LINEAR"])[0]
    function = VOILUTFunction(name) if name in VOILUTFunction.__members__ else VOILUTFunction.LINEAR
    if width < 1 if function is VOILUTFunction.LINEAR else width <= 0:
        return None  # an invalid header window: fall back to min/max
    return center, width, function


def _palette(uri: str, info: PixelInfo, arr: np.ndarray) -> np.ndarray:
    """PALETTE COLOR (PS3.3 C.7.6.3.1.5) to RGB with pydicom's LUT code; LUT data kept as bulk data
    in ``meta`` is read from the file by its BulkDataURI."""
    from pydicom import Dataset
    from pydicom.pixels import apply_color_lut

    from voxlake.dicom.frames import parse_bulk_data_uri

    def bulk(tag: str, vr: str, value: str) -> bytes:
        src, offset, length, deflated = parse_bulk_data_uri(value)
        return read_bulk(src, offset, length, deflated=deflated)

    header = {tag: info.meta[tag] for tag in _PALETTE_TAGS if tag in info.meta}
    try:
        ds = Dataset.from_json(header, bulk_data_uri_handler=bulk)
        # LUT data keeps the byte order of the file it was read from.
        ds.set_original_encoding(False, info.transfer_syntax_uid != "1.2.840.10008.1.2.2")
        return apply_color_lut(arr, ds)
    except Exception as exc:
        raise FrameError(f"{info.name}: PALETTE COLOR lookup failed ({type(exc).__name__}: {exc})") from exc


def _pil_image(pixels: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(pixels, mode=None)
