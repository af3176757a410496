"""A fast screen for rendered text in pixel data: does this frame carry burned-in annotation, and where?

De-identification does not trust BurnedInAnnotation: every image it writes is screened, and only
where the screen fires is Tesseract run (0.3-1 s a frame) or the file left out. The screen must
be cheap (a few milliseconds a frame) and must tell text from noise, anatomy, bone and metal.

Rendered text is thin strokes of near-uniform ink that contrast strongly with their local
background, in glyph-sized blobs standing side by side on a line. Per frame:

* **Contrast**: the white top-hat (pixel minus its morphological opening) and the black top-hat
  (closing minus pixel) with a small square window keep structures thinner than the window, bright
  and dark, and drop flat areas, edges of large structures and smooth gradients. The filters are
  separable running min/max in the frame's own dtype (no float copy of 16-bit frames); frames over
  1100 pixels are first pooled by 2 or more (max for bright, min for dark), which keeps thin strokes.
* **Threshold**: a pixel is ink when its contrast exceeds both a multiple of the frame's own
  contrast noise (the median top-hat, which flat text backgrounds leave at zero and noise does not)
  and a fraction of the frame's robust dynamic range.
* **Glyphs**: connected components 6-48 pixels high (frame scale), not wider than a few heights.
* **Lines**: glyphs link when their heights are alike, their vertical extents overlap, the gap
  between them is small relative to their height and their ink (peak value) is alike relative to
  their contrast. A linked group of three or more glyphs is a :class:`TextRegion`.

Noise makes ink blobs of a pixel or two (or none above the threshold), speckle and anatomy make blobs
whose peaks differ, and bone, metal and organ edges are too large or too smooth for the top-hat:
none of them forms lines of like glyphs. Pathological frames (thousands of glyph-sized blobs) fire
with one region over the whole frame rather than spend seconds: the caller OCRs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TextRegion", "screen_dataset", "screen_frame", "screen_frames"]

_WINDOW = 7  # top-hat window: strokes up to 6 pixels wide (at the screening scale) are kept
_MAX_SIDE = 1100  # frames larger than this are pooled before screening
_NOISE_K = 6.0  # ink contrast > _NOISE_K x the median top-hat ...
_RANGE_FRAC = 0.08  # ... and > this fraction of the robust dynamic range
_MIN_H, _MAX_H = 6, 48  # glyph height, in frame pixels
_MAX_ASPECT = 3.0  # a glyph (or a few touching glyphs) is at most this many heights wide
_MIN_GLYPHS = 4
_MAX_COMPONENTS = 20000  # more ink blobs than this: the frame fires whole instead of being analysed
_MAX_PAIRS = 2_000_000


@dataclass(frozen=True, slots=True)
class TextRegion:
    """A line of text found by the screen: frame index, box (top-left x, y, width, height, in frame
    pixels) and the number of glyph-like components on the line (0: the frame was too busy to analyse
    and fires whole)."""

    frame: int
    x: int
    y: int
    w: int
    h: int
    glyphs: int


# -- the frame as one grey channel, in a dtype the filters are fast in ------------------------------


def _grey(frame: Any) -> np.ndarray:
    """One 2-D channel: grey as is; colour as 2 max - min of the channels (grey stays itself, coloured
    text gains its saturation); 8/16-bit kept, signed integers shifted to unsigned (order kept),
    anything else float32."""
    a = np.asarray(frame)
    if a.ndim == 3:
        if a.shape[-1] == 1:
            a = a[..., 0]
        else:
            r, g, b = a[..., 0], a[..., 1], a[..., 2]
            hi, lo = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
            if a.dtype == np.uint8:
                out = hi.astype(np.uint16)
                out <<= 1
                out -= lo
                return out
            return 2 * hi.astype(np.float32) - lo
    if a.ndim != 2:
        raise ValueError(f"a frame is rows x columns or rows x columns x 3, not shape {a.shape}")
    if a.dtype in (np.uint8, np.uint16):
        return a
    if a.dtype == np.bool_:
        return a.view(np.uint8)
    if a.dtype in (np.int8, np.int16):
        unsigned = np.uint8 if a.dtype == np.int8 else np.uint16
        return np.ascontiguousarray(a).view(unsigned) ^ unsigned(1 << (8 * a.dtype.itemsize - 1))
    out = a.astype(np.float32)
    if out.dtype.kind == "f" and not np.isfinite(out).all():
        finite = out[np.isfinite(out)]
        out = np.nan_to_num(out, nan=float(finite.min()) if finite.size else 0.0,
                            posinf=float(finite.max()) if finite.size else 0.0,
                            neginf=float(finite.min()) if finite.size else 0.0)
    return out


def _pool(a: np.ndarray, f: int, op: Any) -> np.ndarray:
    r, c = a.shape[0] // f * f, a.shape[1] // f * f
    return op(a[:r, :c].reshape(r // f, f, c // f, f), axis=(1, 3))


# -- separable running min / max ------------------------------------------------------------------


def _run1d(a: np.ndarray, k: int, axis: int, op: Any) -> np.ndarray:
    """Running ``op`` (np.minimum / np.maximum) over ``k`` samples along ``axis``, centred; the ends
    take the first / last full window. Doubling: log2(k) + 1 array operations."""
    n = a.shape[axis]
    if n < k:
        red = op.reduce(a, axis=axis, keepdims=True)
        return np.broadcast_to(red, a.shape).copy()

    def sl(lo: int, hi: int | None) -> tuple[slice, ...]:
        return (slice(lo, hi),) if axis == 0 else (slice(None), slice(lo, hi))

    m, span = a, 1
    while span * 2 <= k:
        m = op(m[sl(0, -span)], m[sl(span, None)])
        span *= 2
    if span < k:
        d = k - span
        m = op(m[sl(0, -d)], m[sl(d, None)])
    p = k // 2
    out = np.empty_like(a)
    out[sl(p, n - (k - 1 - p))] = m
    out[sl(0, p)] = m[sl(0, 1)]
    out[sl(n - (k - 1 - p), None)] = m[sl(-1, None)]
    return out


def _filt(a: np.ndarray, k: int, op: Any) -> np.ndarray:
    return _run1d(_run1d(a, k, 0, op), k, 1, op)


# -- components and lines -------------------------------------------------------------------------


def _components(mask: np.ndarray, grey: np.ndarray, contrast: np.ndarray, bright: bool,
                min_h: int, max_h: int) -> np.ndarray | None:
    """Glyph-sized components of ``mask`` as rows (x0, y0, x1, y1, ink, contrast), float64; None
    when there are too many to analyse."""
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n == 0:
        return np.zeros((0, 6))
    if n > _MAX_COMPONENTS:
        return None
    objs = ndimage.find_objects(lab)
    box = np.array([(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in objs], dtype=np.int64)
    h, w = box[:, 3] - box[:, 1], box[:, 2] - box[:, 0]
    keep = np.nonzero((h >= min_h) & (h <= max_h) & (w <= _MAX_ASPECT * h))[0]
    if keep.size == 0:
        return np.zeros((0, 6))
    # per-component ink (peak value) and contrast, over the ink pixels only (not a sort of the frame)
    ids = lab[mask]
    vals = grey[mask].astype(np.float64)
    cons = contrast[mask].astype(np.float64)
    ink = np.full(n + 1, -np.inf)
    peak = np.zeros(n + 1)
    if bright:
        np.maximum.at(ink, ids, vals)
    else:
        np.maximum.at(ink, ids, -vals)
    np.maximum.at(peak, ids, cons)
    ink = ink if bright else -ink
    return np.column_stack([box[keep].astype(np.float64), ink[keep + 1], peak[keep + 1]])


def _lines(c: np.ndarray) -> list[tuple[int, int, int, int, int]] | None:
    """Group glyphs into lines: (x0, y0, x1, y1, glyphs) of groups of three or more; None when there
    are too many candidate pairs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(c)
    if n < _MIN_GLYPHS:
        return []
    x0, y0, x1, y1, ink, con = c.T
    h = y1 - y0
    order = np.argsort(x0, kind="stable")
    xs = x0[order]
    # candidates j of i: x0_j in [x0_i, x1_i + gap_max]
    lo = np.searchsorted(xs, x0[order], side="left")
    hi = np.searchsorted(xs, x1[order] + 1.2 * h[order], side="right")
    counts = hi - lo
    total = int(counts.sum())
    if total > _MAX_PAIRS:
        return None
    i = np.repeat(order, counts)
    start = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(total)
    j = order[start]
    sel = i != j
    i, j = i[sel], j[sel]
    hi_, hj = h[i], h[j]
    overlap = np.minimum(y1[i], y1[j]) - np.maximum(y0[i], y0[j])
    gap = np.maximum(x0[i], x0[j]) - np.minimum(x1[i], x1[j])
    hmax, hmin = np.maximum(hi_, hj), np.minimum(hi_, hj)
    link = ((hmax <= 2.0 * hmin) & (overlap >= 0.5 * hmin) & (gap <= 1.2 * hmax)
            & (gap >= -0.3 * hmin)
            & (np.minimum(np.abs(y0[i] - y0[j]), np.abs(y1[i] - y1[j])) <= 1 + 0.1 * hmax)
            & (np.abs(ink[i] - ink[j]) <= 0.15 * np.minimum(con[i], con[j])))
    if not link.any():
        return []
    g = coo_matrix((np.ones(int(link.sum())), (i[link], j[link])), shape=(n, n))
    k, labels = connected_components(g, directed=False)
    sizes = np.bincount(labels, minlength=k)
    out = []
    for grp in np.nonzero(sizes >= _MIN_GLYPHS)[0]:
        m = np.nonzero(labels == grp)[0]
        # a line of text: most of its glyphs share the line's height and its top or baseline
        hm, tm, bm = np.median(h[m]), np.median(y0[m]), np.median(y1[m])
        tol = 1 + 0.15 * hm
        m = m[(np.abs(h[m] - hm) <= 0.3 * hm) & ((np.abs(y0[m] - tm) <= tol) | (np.abs(y1[m] - bm) <= tol))]
        if len(m) >= _MIN_GLYPHS:
            out.append((int(x0[m].min()), int(y0[m].min()), int(x1[m].max()), int(y1[m].max()), len(m)))
    return out


# -- the screen -----------------------------------------------------------------------------------


def _threshold(grey: np.ndarray, tophats: list[np.ndarray]) -> float:
    sub = grey[::4, ::4].ravel()
    q = max(1, sub.size // 500)
    part = np.partition(sub, [q, sub.size - 1 - q])
    rng = float(part[sub.size - 1 - q]) - float(part[q])
    noise = 0.0
    for t in tophats:
        s = t[1::4, 1::4].ravel()
        noise = max(noise, float(np.partition(s, s.size // 2)[s.size // 2]))
    floor = 0.5 if grey.dtype.kind in "iu" else 1e-6 * max(rng, float(np.abs(sub).max()), 1e-30)
    return max(_NOISE_K * noise, _RANGE_FRAC * rng, floor)


def screen_frame(frame: np.ndarray, *, frame_index: int = 0) -> list[TextRegion]:
    """The text lines on one frame (rows x columns, any integer or float dtype, or rows x columns x 3
    RGB); empty when the frame shows no rendered text."""
    grey = _grey(frame)
    rows, cols = grey.shape
    if min(rows, cols) < _MIN_H:
        return []
    f = max(1, -(-max(rows, cols) // _MAX_SIDE))
    k = _WINDOW
    regions: list[TextRegion] = []
    if f > 1:
        bright_src, dark_src = _pool(grey, f, np.max), _pool(grey, f, np.min)
    else:
        bright_src = dark_src = grey
    ero = _filt(bright_src, k, np.minimum)
    white = bright_src - _filt(ero, k, np.maximum)
    del ero
    dil = _filt(dark_src, k, np.maximum)
    black = _filt(dil, k, np.minimum) - dark_src
    del dil
    t = _threshold(grey if f == 1 else bright_src, [white, black])
    min_h = max(3, round(_MIN_H / f))
    for src, top, bright in ((bright_src, white, True), (dark_src, black, False)):
        mask = top > t
        if np.count_nonzero(mask) < _MIN_GLYPHS * min_h:
            continue
        comps = _components(mask, src, top, bright, min_h, max(min_h, _MAX_H // f))
        lines = None if comps is None else _lines(comps)
        if lines is None:
            return [TextRegion(frame_index, 0, 0, cols, rows, 0)]
        for x0, y0, x1, y1, n in lines:
            x0, y0 = x0 * f, y0 * f
            x1, y1 = min(cols, x1 * f), min(rows, y1 * f)
            regions.append(TextRegion(frame_index, x0, y0, x1 - x0, y1 - y0, n))
    return _merge(regions)


def _merge(regions: list[TextRegion]) -> list[TextRegion]:
    """Union overlapping regions (the bright and the dark pass often find the same line)."""
    boxes = [[r.x, r.y, r.x + r.w, r.y + r.h, r.glyphs] for r in regions]
    merged = True
    while merged and len(boxes) > 1:
        merged = False
        out: list[list[int]] = []
        for b in sorted(boxes):
            for o in out:
                if b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3]:
                    o[0], o[1], o[2], o[3] = min(o[0], b[0]), min(o[1], b[1]), max(o[2], b[2]), max(o[3], b[3])
                    o[4] = max(o[4], b[4])
                    merged = True
                    break
            else:
                out.append(b)
        boxes = out
    frame = regions[0].frame if regions else 0
    return sorted((TextRegion(frame, x0, y0, x1 - x0, y1 - y0, n) for x0, y0, x1, y1, n in boxes),
                  key=lambda r: (r.y, r.x))


def screen_frames(frames: np.ndarray) -> list[TextRegion]:
    """:func:`screen_frame` over frames x rows x columns [x 3]."""
    out: list[TextRegion] = []
    for i in range(len(frames)):
        out += screen_frame(frames[i], frame_index=i)
    return out


def screen_dataset(ds: Any) -> list[TextRegion]:
    """Screen every frame of a pydicom dataset: single or multi-frame, MONOCHROME1/2, colour as RGB
    (YBR decoded to RGB), PALETTE COLOR by its indices. Empty when there are no pixels."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return []
    from pydicom.pixels import pixel_array

    arr = pixel_array(ds)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames == 1 and arr.ndim == (2 if samples == 1 else 3):
        arr = arr[None, ...]
    return screen_frames(arr)
