"""RLE Lossless (PS3.5 Annex G) encoding with numpy.

Vectorised by row, it is some fifty times faster than pydicom 3.0's pure-Python RLE encoder, which
otherwise took most of a cohort's generation time (pylibjpeg-rle would be as fast, but is not a
dependency). Private to :mod:`voxlake.synth.cohort`.
"""

from __future__ import annotations

import numpy as np


def packbits(plane: np.ndarray) -> bytes:
    """One RLE segment (PS3.5 G.3.1): each row on its own, runs of three or more bytes replicated."""
    flat = plane.ravel()
    data, cols = flat.tobytes(), plane.shape[1]
    starts_run = np.ones(flat.size, bool)
    starts_run[1:] = flat[1:] != flat[:-1]
    starts_run[::cols] = True  # runs never cross a row
    starts = np.flatnonzero(starts_run)
    lengths = np.diff(starts, append=flat.size)
    long = lengths >= 3
    runs = list(zip(starts[long].tolist(), lengths[long].tolist(), strict=True))
    out = bytearray()

    def literal(a: int, b: int) -> None:
        for i in range(a, b, 128):
            out.append(min(128, b - i) - 1)
            out.extend(data[i : min(i + 128, b)])

    k = 0
    for row_start in range(0, flat.size, cols):
        pos, row_end = row_start, row_start + cols
        while k < len(runs) and runs[k][0] < row_end:
            start, n = runs[k]
            literal(pos, start)
            for m in [128] * (n // 128) + ([n % 128] if n % 128 else []):
                out += bytes(((257 - m) & 0xFF, data[start]))  # m = 1 gives 0: a one-byte literal
            pos, k = start + n, k + 1
        literal(pos, row_end)
    return bytes(out) + b"\0" * (len(out) % 2)


def encode_frame(frame: np.ndarray) -> bytes:
    """A frame (rows x columns [x samples]) in RLE Lossless: a segment per sample and byte, most
    significant first, after a 64-byte header of offsets (PS3.5 G.5)."""
    samples = frame.reshape(frame.shape[0], frame.shape[1], -1)
    segments = [packbits(((samples[..., s] >> (8 * b)) & 0xFF).astype(np.uint8))
                for s in range(samples.shape[-1]) for b in reversed(range(frame.itemsize))]
    offsets = np.cumsum([64] + [len(seg) for seg in segments[:-1]])
    header = np.zeros(16, "<u4")
    header[0], header[1 : 1 + len(segments)] = len(segments), offsets
    return header.tobytes() + b"".join(segments)
