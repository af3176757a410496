"""Synthetic anatomy for the cohort generator: ellipsoid phantoms of chest, abdomen and head, sampled
on any image plane (CT, MR), projected (radiographs, CT localizers), and a B-mode ultrasound sector.

Simple on purpose: the cohort needs plausible images in realistic value ranges (HU for CT, 12-bit
MR signal per weighting), the same anatomy from every series of a study, and speed; organ-level
ground truth is :mod:`voxlake.synth.phantom`'s job. Private to :mod:`voxlake.synth.cohort`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# (tissue, centre mm, semi-axes mm) in LPS about the centre of the region; later ellipsoids paint over
# earlier ones. Semi-axes of 340 mm or more make a body a cylinder over any series' extent.
Ellipsoid = tuple[str, tuple[float, float, float], tuple[float, float, float]]
CHEST: tuple[Ellipsoid, ...] = (
    ("fat", (0, 0, 0), (170, 120, 340)), ("muscle", (0, 0, 0), (158, 108, 340)),
    ("lung", (-80, -5, 10), (62, 78, 130)), ("lung", (80, -5, 10), (58, 75, 125)),
    ("heart", (20, -25, -50), (55, 48, 60)), ("blood", (-5, 10, 40), (14, 14, 70)),
    ("bone", (0, 75, 0), (18, 18, 400)), ("csf", (0, 80, 0), (7, 7, 400)), ("bone", (0, -100, -10), (14, 7, 120)),
)
ABDOMEN: tuple[Ellipsoid, ...] = (
    ("fat", (0, 0, 0), (165, 115, 340)), ("muscle", (0, 0, 0), (152, 105, 340)),
    ("liver", (-65, -5, 30), (85, 75, 90)), ("spleen", (85, 30, 40), (38, 30, 50)),
    ("kidney", (-70, 55, -30), (28, 22, 55)), ("kidney", (70, 55, -20), (28, 22, 55)),
    ("fluid", (55, -30, 60), (45, 35, 35)), ("gas", (55, -58, 70), (20, 8, 15)),
    ("bowel", (0, -40, -90), (70, 35, 45)), ("gas", (-20, -50, -95), (12, 8, 10)),
    ("blood", (10, 45, 0), (12, 12, 400)), ("blood", (-22, 40, 0), (13, 10, 400)),
    ("bone", (0, 72, 0), (20, 18, 400)), ("csf", (0, 78, 0), (7, 7, 400)),
)
BRAIN: tuple[Ellipsoid, ...] = (
    ("fat", (0, 0, 0), (76, 96, 110)), ("bone", (0, 0, 0), (72, 92, 106)), ("csf", (0, 0, 0), (67, 87, 101)),
    ("gm", (0, 0, 0), (65, 85, 99)), ("wm", (0, 0, 2), (56, 75, 86)),
    ("csf", (-10, -5, 15), (6, 22, 14)), ("csf", (10, -5, 15), (6, 22, 14)),
    ("gm", (-14, 10, 0), (9, 12, 10)), ("gm", (14, 10, 0), (9, 12, 10)), ("lesion", (30, -20, 30), (8, 8, 8)),
)
HU = {"air": -1000, "fat": -100, "muscle": 45, "lung": -850, "heart": 40, "blood": 40, "bone": 700, "csf": 5,
      "liver": 60, "spleen": 50, "kidney": 35, "fluid": 10, "gas": -950, "bowel": 30}
HU_CONTRAST = {**HU, "blood": 180, "liver": 110, "spleen": 120, "kidney": 170, "heart": 150}
#: MR signal of each tissue per weighting, arbitrary units within 12 bits.
MR_SIGNAL = {
    "t1": {"air": 0, "fat": 1600, "bone": 80, "csf": 250, "gm": 700, "wm": 1050, "lesion": 600},
    "t2": {"air": 0, "fat": 700, "bone": 60, "csf": 2200, "gm": 1100, "wm": 750, "lesion": 1800},
    "flair": {"air": 0, "fat": 800, "bone": 60, "csf": 120, "gm": 1050, "wm": 800, "lesion": 1700},
    "t1_post": {"air": 0, "fat": 1600, "bone": 80, "csf": 250, "gm": 720, "wm": 1050, "lesion": 1900},
}
MU_WATER = 0.019  # linear attenuation per mm near 70 keV


def paint(xyz: Sequence[np.ndarray], phantom: Sequence[Ellipsoid], values: Mapping[str, float],
          habitus: float) -> np.ndarray:
    """The value of the tissue at each point (x, y, z arrays, about the phantom's centre); air outside."""
    x, y, z = (np.asarray(a, np.float32) for a in (xyz[0] / habitus, xyz[1] / habitus, xyz[2]))
    out = np.full(x.shape, float(values["air"]), np.float32)
    for tissue, (cx, cy, cz), (ax, ay, az) in phantom:
        d = ((z - cz) / az) ** 2
        if d.min() > 1:  # the plane misses this ellipsoid
            continue
        d += ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2
        out[d <= 1] = values[tissue]
    return out


def project(u: np.ndarray, z: np.ndarray, axis: int, phantom: Sequence[Ellipsoid], habitus: float,
            hu: Mapping[str, float]) -> np.ndarray:
    """Line integrals of attenuation along x (axis 0) or y (axis 1) through the points (u, z), from the
    chords of each ellipsoid: each adds its attenuation over the tissue it paints over (muscle, inside)."""
    mu = {t: MU_WATER * (1 + h / 1000) for t, h in hu.items()}
    total = np.zeros(u.shape)
    for k, (tissue, centre, axes) in enumerate(phantom):
        other = 1 - axis
        a_u, c_u = axes[other] * habitus, centre[other] * habitus
        inside = 1 - ((u - c_u) / a_u) ** 2 - ((z - centre[2]) / axes[2]) ** 2
        chord = 2 * axes[axis] * habitus * np.sqrt(np.clip(inside, 0, None))
        under = "air" if k == 0 else phantom[0][0] if k == 1 else "muscle"
        total += (mu[tissue] - mu[under]) * chord
    return total


def plane(origin: Sequence[float], row: Sequence[float], col: Sequence[float], spacing: float,
          rows: int, cols: int, centre: Sequence[float] = (0, 0, 0)) -> list[np.ndarray]:
    """x, y and z (rows x cols each) of the pixel centres of an image plane, relative to ``centre``."""
    r, c = np.arange(rows)[:, None] * spacing, np.arange(cols)[None, :] * spacing
    return [origin[k] - centre[k] + c * row[k] + r * col[k] for k in range(3)]


def ultrasound(rows: int, cols: int, r: Any, t: float, doppler: bool) -> np.ndarray:
    """A B-mode sector through liver, portal vein, gallbladder and right kidney, with speckle and the
    breathing of time ``t`` (s); with ``doppler``, RGB with the portal vein's flow in colour, pulsing."""
    mm = 160.0 / rows
    y, x = np.mgrid[0:rows, 0:cols].astype(float) * mm
    x -= cols * mm / 2
    y += 10  # the probe's virtual apex above the image
    radius, angle = np.hypot(x, y), np.arctan2(x, y)
    fan = (radius <= 170) & (np.abs(angle) <= 0.6)
    breath = 4 * math.sin(2 * math.pi * t / 4)
    echo = np.select([radius < 18, radius < 28, radius < 38], [0.9, 0.3, 0.45], 0.55)
    # (centre x, depth, semi-axes) in mm and echogenicity: portal vein, gallbladder, kidney, renal sinus
    shapes = (((10, 80, 8, 5), 0.02), ((-30, 70, 18, 10), 0.01), ((35, 130, 30, 18), 0.35),
              ((35, 130, 15, 8), 0.85))
    masks = [((x - cx) / ax) ** 2 + ((y - cy - breath) / ay) ** 2 <= 1 for (cx, cy, ax, ay), _ in shapes]
    for mask, (_, e) in zip(masks, shapes, strict=True):
        echo = np.where(mask, e, echo)
    vessel = masks[0]
    echo = np.where(np.abs(radius - 155 - breath) < 2.5, 1.2, echo)
    speckle = r.rayleigh(1.0, echo.shape)
    db = 20 * np.log10(echo * speckle + 1e-3)
    gray = np.where(fan, np.clip((db + 45) / 50, 0, 1) * 255, 0).astype(np.uint8)
    if not doppler:
        return gray
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    flow = vessel & fan
    velocity = math.sin(2 * math.pi * t)  # toward the probe in systole: red; away: blue
    colour = np.array([200, 40, 40] if velocity >= 0 else [40, 60, 220]) * (0.5 + 0.5 * abs(velocity))
    rgb[flow] = colour.astype(np.uint8)
    return rgb
