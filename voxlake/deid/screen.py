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

import math
import threading
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

_WORK_MAX = 1 << 23  # scratch arrays up to this many bytes are kept per thread between frames


class _Work(threading.local):
    """Per-thread scratch arrays, kept between frames: a fresh half-megabyte array costs more in page
    faults than the running min / max over it, and a frame needs a dozen."""

    def __init__(self) -> None:
        self.bufs: dict[str, np.ndarray] = {}


_WORK = _Work()


def _buf(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array, the thread's scratch ``name`` where it is small enough."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > _WORK_MAX:
        return np.empty(shape, dtype)
    b = _WORK.bufs.get(name)
    if b is None or b.size < nbytes:
        b = _WORK.bufs[name] = np.empty(max(nbytes, 1 << 16), np.uint8)
    return b[:nbytes].view(dtype).reshape(shape)


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
            if a.dtype == np.uint8 and a.shape[-1] == 3:
                # max / min of three neighbours over the raveled samples (contiguous, quicker than
                # over the channel planes), kept at every third sample: each pixel's channels
                f = np.ascontiguousarray(a).reshape(-1)
                hi, lo = _buf("hi", (f.size - 2,), np.uint8), _buf("lo", (f.size - 2,), np.uint8)
                np.maximum(f[:-2], f[1:-1], out=hi)
                np.maximum(hi, f[2:], out=hi)
                np.minimum(f[:-2], f[1:-1], out=lo)
                np.minimum(lo, f[2:], out=lo)
                out = _buf("grey", a.shape[:2], np.uint16)
                flat = out.reshape(-1)
                np.add(hi[::3], hi[::3], out=flat, dtype=np.uint16)
                flat -= lo[::3]
                return out
            if a.dtype == np.uint8:
                hi, lo = _buf("hi", a.shape[:2], np.uint8), _buf("lo", a.shape[:2], np.uint8)
                np.maximum(r, g, out=hi)
                np.maximum(hi, b, out=hi)
                np.minimum(r, g, out=lo)
                np.minimum(lo, b, out=lo)
                out = _buf("grey", a.shape[:2], np.uint16)
                np.add(hi, hi, out=out, dtype=np.uint16)
                out -= lo
                return out
            hi, lo = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
            return 2 * hi.astype(np.float32) - lo
    if a.ndim != 2:
        raise ValueError(f"a frame is rows x columns or rows x columns x 3, not shape {a.shape}")
    if a.dtype in (np.uint8, np.uint16):
        return a
    if a.dtype == np.bool_:
        return a.view(np.uint8)
    if a.dtype in (np.int8, np.int16):
        unsigned = np.uint8 if a.dtype == np.int8 else np.uint16
        out = _buf("grey", a.shape, unsigned)
        return np.bitwise_xor(np.ascontiguousarray(a).view(unsigned), unsigned(1 << (8 * a.dtype.itemsize - 1)),
                              out=out)
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
    take the first / last full window. Doubling: log2(k) + 1 array operations. (Used only for frames
    with a side shorter than the window; :func:`_filt` does the rest.)"""
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


def _double(src: np.ndarray, k: int, step: int, op: Any, names: tuple[str, str],
            out: np.ndarray | None = None) -> np.ndarray:
    """``m[q] = op(src[q], src[q + step], ..., src[q + (k - 1) step])`` for every full window, by
    doubling (log2(k) + 1 operations on contiguous 1-D arrays) alternately into the thread's scratch
    arrays ``names``; the last operation writes into ``out`` where given."""
    shifts, span = [], 1
    while span * 2 <= k:
        shifts.append(span * step)
        span *= 2
    if span < k:
        shifts.append((k - span) * step)
    m, size = src, src.size
    for i, d in enumerate(shifts):
        size -= d
        dst = out if out is not None and i == len(shifts) - 1 else _buf(names[i % 2], (size,), src.dtype)
        op(m[:size], m[d:d + size], out=dst)
        m = dst
    return m


def _shifts(k: int) -> int:
    """How many operations :func:`_double` takes for a window of ``k``."""
    return k.bit_length() - 1 + (k & (k - 1) != 0)


def _filt(a: np.ndarray, k: int, op: Any, name: str) -> np.ndarray:
    """Running ``op`` over a centred k x k window into the thread's scratch ``name``; rows and columns
    within k/2 of an edge take the nearest full window. Both passes run on the raveled frame
    (contiguous, fast): the vertical one is exact there, the horizontal one wraps from row to row only
    in the k - 1 edge columns, which are then overwritten from the nearest full window."""
    rows, cols = a.shape
    if rows < k or cols < k:
        return _run1d(_run1d(a, k, 0, op), k, 1, op)
    a = np.ascontiguousarray(a)
    p, q = k // 2, k - 1 - k // 2
    out = _buf(name, a.shape, a.dtype)
    body = out[p:rows - q]  # rows whose vertical window is full: contiguous
    v = _double(a.reshape(-1), k, cols, op, ("ping", "pong"))
    # the horizontal pass starts in the scratch array the vertical one did not end in
    names = ("pong", "ping") if _shifts(k) % 2 else ("ping", "pong")
    _double(v, k, 1, op, names, out=body.reshape(-1)[p:p + v.size - (k - 1)])
    body[:, :p] = body[:, p:p + 1]
    body[:, cols - q:] = body[:, cols - q - 1:cols - q]
    out[:p] = body[0]
    out[rows - q:] = body[-1]
    return out


# -- components and lines -------------------------------------------------------------------------


def _connected(n: int, i: np.ndarray, j: np.ndarray) -> tuple[int, np.ndarray]:
    """Connected components of the undirected graph on ``n`` nodes with edges (i, j): their number
    and each node's component, numbered in the order of their lowest node (as scipy's
    connected_components numbers them). Min-label hooking with pointer jumping, in numpy: a few
    rounds for the small graphs here, without scipy.sparse's per-call overhead."""
    lab = np.arange(n, dtype=np.intp)
    for _ in range(64):
        li, lj = lab[i], lab[j]
        if np.array_equal(li, lj):
            break
        low = np.minimum(li, lj)
        np.minimum.at(lab, li, low)  # hook each root to the lowest root it touches
        np.minimum.at(lab, lj, low)
        while True:  # and point every node at its root
            up = lab[lab]
            if np.array_equal(up, lab):
                break
            lab = up
    else:  # not settled: hand over to scipy
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        g = coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(n, n))
        k, labels = connected_components(g, directed=False)
        return int(k), labels
    # each component's label is its lowest node
    root = lab == np.arange(n)
    rank = np.cumsum(root) - 1
    return int(rank[-1] + 1) if n else 0, rank[lab]


def _ink_runs(top: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray, int]:
    """The ink (``top > t``) as horizontal runs in raster order: flat starts and ends (exclusive) in
    a frame padded by one empty column (so that no run crosses a row), and that padded width."""
    rows, cols = top.shape
    width = cols + 1
    pad = _buf("pad", (rows, width), np.bool_)
    pad[:, cols] = False
    if top.dtype.kind in "iu":
        # for integers, top > t (compared in float64) is top > floor(t)
        thr = math.floor(t)
        if thr >= np.iinfo(top.dtype).max:
            empty = np.zeros(0, dtype=np.intp)
            return empty, empty, width
        np.greater(top, top.dtype.type(thr), out=pad[:, :cols])  # t >= 0.5: thr >= 0
    else:
        np.greater(top, t, out=pad[:, :cols])
    flat = pad.reshape(-1)
    change = _buf("change", (flat.size - 1,), np.bool_)
    np.not_equal(flat[1:], flat[:-1], out=change)
    edges = np.flatnonzero(change)
    edges += 1
    if flat[0]:
        edges = np.concatenate(([0], edges))
    return edges[0::2], edges[1::2], width


def _components(starts: np.ndarray, ends: np.ndarray, width: int, grey: np.ndarray,
                contrast: np.ndarray, bright: bool, min_h: int, max_h: int) -> np.ndarray | None:
    """Glyph-sized 4-connected components of the ink runs (see :func:`_ink_runs`) as rows (x0, y0,
    x1, y1, ink, contrast), float64, in the raster order of their first pixel; None when there are
    too many to analyse. The runs are the graph's nodes and vertical overlaps its edges, so the cost
    follows the ink, not the frame."""
    nr = starts.size
    if nr == 0:
        return np.zeros((0, 6))
    row = starts // width
    x0r = starts - row * width
    x1r = ends - row * width
    # the runs of the next row that share a column with run i are a contiguous range lo..hi
    lo = np.searchsorted(ends, starts + width, side="right")
    hi = np.searchsorted(starts, ends + width, side="left")
    cnt = hi - lo
    total = int(cnt.sum())
    if total:
        first = np.cumsum(cnt) - cnt
        nbr = np.arange(total, dtype=np.intp) - np.repeat(first - lo, cnt)
        n, lab = _connected(nr, np.repeat(np.arange(nr, dtype=np.intp), cnt), nbr)
    else:
        n, lab = nr, np.arange(nr, dtype=np.intp)
    if n > _MAX_COMPONENTS:
        return None
    big = np.iinfo(np.intp).max
    y0, x0 = np.full(n, big, dtype=np.intp), np.full(n, big, dtype=np.intp)
    y1, x1 = np.full(n, -1, dtype=np.intp), np.full(n, -1, dtype=np.intp)
    np.minimum.at(y0, lab, row)
    np.maximum.at(y1, lab, row)
    np.minimum.at(x0, lab, x0r)
    np.maximum.at(x1, lab, x1r)
    y1 += 1
    h, w = y1 - y0, x1 - x0
    keep = np.nonzero((h >= min_h) & (h <= max_h) & (w <= _MAX_ASPECT * h))[0]
    if keep.size == 0:
        return np.zeros((0, 6))
    # per-component ink (peak value) and contrast, over the pixels of the kept components only
    slot = np.full(n, -1, dtype=np.intp)
    slot[keep] = np.arange(keep.size, dtype=np.intp)
    kr = np.nonzero(slot[lab] >= 0)[0]
    cols = width - 1
    length = x1r[kr] - x0r[kr]
    off = np.zeros(kr.size, dtype=np.intp)
    np.cumsum(length[:-1], out=off[1:])
    pix = np.arange(int(off[-1] + length[-1]), dtype=np.intp) + np.repeat(row[kr] * cols + x0r[kr] - off, length)
    vals = grey.reshape(-1)[pix]
    cons = contrast.reshape(-1)[pix]
    comp = slot[lab[kr]]
    if bright:
        ink = np.full(keep.size, -np.inf)
        np.maximum.at(ink, comp, np.maximum.reduceat(vals, off).astype(np.float64))
    else:
        ink = np.full(keep.size, np.inf)
        np.minimum.at(ink, comp, np.minimum.reduceat(vals, off).astype(np.float64))
    peak = np.zeros(keep.size)
    np.maximum.at(peak, comp, np.maximum.reduceat(cons, off).astype(np.float64))
    box = np.column_stack([x0[keep], y0[keep], x1[keep], y1[keep]]).astype(np.float64)
    return np.column_stack([box, ink, peak])


def _group_median(v: np.ndarray, grp: np.ndarray, start: np.ndarray, size: np.ndarray) -> np.ndarray:
    """np.median of ``v`` within each group (``grp`` sorted ascending; groups at ``start`` of ``size``)."""
    s = v[np.lexsort((v, grp))]
    mid = start + size // 2
    return np.where(size % 2 == 1, s[mid], (s[mid - 1] + s[mid]) / 2)


def _lines(c: np.ndarray) -> list[tuple[int, int, int, int, int]] | None:
    """Group glyphs into lines: (x0, y0, x1, y1, glyphs) of groups of three or more; None when there
    are too many candidate pairs."""
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
    if np.count_nonzero(link) < _MIN_GLYPHS - 1:  # a group of _MIN_GLYPHS needs as many - 1 links
        return []
    k, labels = _connected(n, i[link], j[link])
    sizes = np.bincount(labels, minlength=k)
    groups = np.nonzero(sizes >= _MIN_GLYPHS)[0]
    if groups.size == 0:
        return []
    # a line of text: most of its glyphs share the line's height and its top or baseline
    slot = np.full(k, -1, dtype=np.intp)
    slot[groups] = np.arange(groups.size, dtype=np.intp)
    m = np.nonzero(slot[labels] >= 0)[0]
    grp = slot[labels[m]]
    m = m[np.argsort(grp, kind="stable")]
    grp = slot[labels[m]]
    size = sizes[groups]
    first = np.zeros(groups.size, dtype=np.intp)
    np.cumsum(size[:-1], out=first[1:])
    hm = _group_median(h[m], grp, first, size)[grp]
    tm = _group_median(y0[m], grp, first, size)[grp]
    bm = _group_median(y1[m], grp, first, size)[grp]
    tol = 1 + 0.15 * hm
    ok = (np.abs(h[m] - hm) <= 0.3 * hm) & ((np.abs(y0[m] - tm) <= tol) | (np.abs(y1[m] - bm) <= tol))
    m, grp = m[ok], grp[ok]
    count = np.bincount(grp, minlength=groups.size)
    bx0, by0 = np.full(groups.size, np.inf), np.full(groups.size, np.inf)
    bx1, by1 = np.full(groups.size, -np.inf), np.full(groups.size, -np.inf)
    np.minimum.at(bx0, grp, x0[m])
    np.minimum.at(by0, grp, y0[m])
    np.maximum.at(bx1, grp, x1[m])
    np.maximum.at(by1, grp, y1[m])
    return [(int(bx0[q]), int(by0[q]), int(bx1[q]), int(by1[q]), int(count[q]))
            for q in np.nonzero(count >= _MIN_GLYPHS)[0]]


# -- the screen -----------------------------------------------------------------------------------


def _threshold(grey: np.ndarray, tophats: list[np.ndarray]) -> float:
    sub = grey[::4, ::4].ravel()
    q = max(1, sub.size // 500)
    # order statistics: a radix sort is quicker than a two-point partition for 8/16-bit integers
    part = np.sort(sub, kind="stable") if sub.dtype.itemsize <= 2 else np.partition(sub, [q, sub.size - 1 - q])
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
        bright_src = dark_src = np.ascontiguousarray(grey)
    white = _filt(_filt(bright_src, k, np.minimum, "ero"), k, np.maximum, "white")
    np.subtract(bright_src, white, out=white)
    black = _filt(_filt(dark_src, k, np.maximum, "dil"), k, np.minimum, "black")
    np.subtract(black, dark_src, out=black)
    t = _threshold(grey if f == 1 else bright_src, [white, black])
    min_h = max(3, round(_MIN_H / f))
    for src, top, bright in ((bright_src, white, True), (dark_src, black, False)):
        starts, ends, width = _ink_runs(top, t)
        if int(ends.sum() - starts.sum()) < _MIN_GLYPHS * min_h:
            continue
        comps = _components(starts, ends, width, src, top, bright, min_h, max(min_h, _MAX_H // f))
        lines = None if comps is None else _lines(comps)
        if lines is None:
            return [TextRegion(frame_index, 0, 0, cols, rows, 0)]
        for x0, y0, x1, y1, n in lines:
            x0, y0 = x0 * f, y0 * f
            x1, y1 = min(cols, x1 * f), min(rows, y1 * f)
            if _on_an_edge(grey, x0, y0, x1, y1, bright):
                continue
            regions.append(TextRegion(frame_index, x0, y0, x1 - x0, y1 - y0, n))
    return _merge(regions)


def _on_an_edge(grey: np.ndarray, x0: int, y0: int, x1: int, y1: int, bright: bool) -> bool:
    """Whether a line of "glyphs" is the noisy border of a large object, or noise inside one, rather
    than text: text has the same background above and below it, and stands well above that
    background's own noise; the edge of a bright disc has background on one side and the object on
    the other, and the noise inside the disc is as strong as its "glyphs"."""
    h = y1 - y0
    above, below = grey[max(0, y0 - h):max(0, y0 - 1), x0:x1], grey[y1 + 1:y1 + 1 + h, x0:x1]
    if above.size == 0 or below.size == 0:
        return False
    a, b = float(np.median(above)), float(np.median(below))
    box = grey[y0:y1, x0:x1]
    around = np.concatenate([above.ravel(), below.ravel()]).astype(np.float32)
    background = float(np.median(around))
    # the ink's distance from the background, whichever pass (bright or dark) found the line
    contrast = max(float(box.max()) - background, background - float(box.min()))
    if contrast <= 0 or abs(a - b) > 0.5 * contrast:
        return True
    # noise where the frame is mostly empty: the frame's noise level says nothing of the object's
    sigma = 1.4826 * float(np.median(np.abs(around - background)))
    return contrast < 6 * sigma


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
