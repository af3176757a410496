"""Shapes for the CT phantoms: approximate signed distances, in voxel units, on a grid of voxel centres.

A distance ``d`` (negative inside) serves both truths of a phantom: the label map takes the voxels with
``d <= 0`` and the image takes the fraction ``clip(0.5 - d, 0, 1)`` of a shape's value, which is partial
volume to first order. Distances are first-order (exact on the surface, where partial volume happens)
and measured in voxels, so thick slices blur along z and thin ones do not. Coordinates are patient LPS mm.
Private to :mod:`voxlake.synth.phantom`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

INF = math.inf


@dataclass(frozen=True)
class Grid:
    """Voxel-centre coordinates (mm, LPS) of a box of the volume, broadcastable as (z, y, x)."""

    x: Any
    y: Any
    z: Any
    s: tuple[float, float, float]  # voxel size along x, y, z

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z.shape[0], self.y.shape[1], self.x.shape[2])


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> Any:
    """``Rz(yaw) @ Ry(pitch) @ Rx(roll)``, angles in degrees: turns a shape's local axes into LPS."""
    a, b, c = np.radians([yaw, pitch, roll])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


def _radial(r: Any, gn: Any, target: Any) -> Any:
    """Signed distance of the level set ``r = target`` of a radial function ``r`` with gradient norm
    ``gn / r`` (first order: exact at the surface, which is all partial volume needs)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        grad = gn / np.maximum(r, 1e-6)
    return (r - target) / np.maximum(grad, 1e-6)


@dataclass(frozen=True)
class Ellipsoid:
    """``|diag(1/radii) R^T (p - centre)| <= 1 + bumps(direction)``: an organ-like blob."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    rotation: Any = None
    bumps: tuple[float, ...] = ()  # up to 6: linear (egg) terms along local x, y, z, then xy, yz, xz

    def bounds(self) -> tuple[Any, Any]:
        rot = np.eye(3) if self.rotation is None else self.rotation
        half = np.sqrt(((rot * np.asarray(self.radii)) ** 2).sum(axis=1)) * (1 + sum(map(abs, self.bumps)))
        return np.asarray(self.centre) - half, np.asarray(self.centre) + half

    def distance(self, g: Grid) -> Any:
        rot = np.eye(3) if self.rotation is None else self.rotation
        m = (rot / np.asarray(self.radii, float)).T  # local = m @ (p - centre)
        jt = (m * np.asarray(g.s)).T  # gradient of the local coordinates per voxel step, transposed
        # Python floats keep the arithmetic in float32 (numpy scalars would promote it to float64).
        d = (g.x - float(self.centre[0]), g.y - float(self.centre[1]), g.z - float(self.centre[2]))
        q = [(float(m[i, 0]) * d[0] + float(m[i, 1]) * d[1]) + float(m[i, 2]) * d[2] for i in range(3)]
        r = np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2])
        gn = sum(np.square(float(jt[k, 0]) * q[0] + float(jt[k, 1]) * q[1] + float(jt[k, 2]) * q[2])
                 for k in range(3))
        target: Any = 1.0
        if self.bumps:
            b = [float(v) for v in (*self.bumps, 0, 0, 0, 0, 0, 0)[:6]]
            inv = 1 / np.maximum(r, np.float32(1e-6))
            u = [qi * inv for qi in q]
            target = 1 + b[0] * u[0] + b[1] * u[1] + b[2] * u[2] + b[3] * u[0] * u[1] + b[4] * u[1] * u[2] \
                + b[5] * u[0] * u[2]
        return _radial(r, np.sqrt(gn), target)


@dataclass(frozen=True)
class Cylinder:
    """An elliptic cylinder along z whose centre and semi-axes follow knots in z (linear between, constant
    beyond), rotated in-plane by ``angle`` degrees and capped at ``z0``/``z1``: body, vessels, vertebrae."""

    zk: tuple[float, ...]
    cx: tuple[float, ...]
    cy: tuple[float, ...]
    a: tuple[float, ...]
    b: tuple[float, ...]
    angle: float = 0.0
    z0: float = -INF
    z1: float = INF

    def grown(self, mm: float) -> Cylinder:
        return Cylinder(self.zk, self.cx, self.cy, tuple(v + mm for v in self.a),
                        tuple(v + mm for v in self.b), self.angle, self.z0, self.z1)

    def bounds(self) -> tuple[Any, Any]:
        r = np.maximum(self.a, self.b)
        lo = (min(np.subtract(self.cx, r)), min(np.subtract(self.cy, r)), self.z0)
        hi = (max(np.add(self.cx, r)), max(np.add(self.cy, r)), self.z1)
        return np.asarray(lo, float), np.asarray(hi, float)

    def _at(self, values: tuple[float, ...], z: Any) -> Any:
        if len(self.zk) == 1:
            return np.float32(values[0])
        return np.interp(z.ravel(), self.zk, values).astype(np.float32).reshape(z.shape)

    def distance(self, g: Grid) -> Any:
        c, s = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
        if len(self.zk) == 1 and g.z.shape[0] > 1:  # the same ellipse on every slice: compute one
            flat = Grid(g.x, g.y, g.z[:1], g.s)
            return self._caps(np.broadcast_to(self._ellipse(flat, c, s), (1, *g.shape[1:])), g)
        return self._caps(self._ellipse(g, c, s), g)

    def _caps(self, dist: Any, g: Grid) -> Any:
        if self.z0 > -INF:
            dist = np.maximum(dist, (float(self.z0) - g.z) / g.s[2])
        if self.z1 < INF:
            dist = np.maximum(dist, (g.z - float(self.z1)) / g.s[2])
        return dist

    def _ellipse(self, g: Grid, c: float, s: float) -> Any:
        a, b = self._at(self.a, g.z), self._at(self.b, g.z)
        dx, dy = g.x - self._at(self.cx, g.z), g.y - self._at(self.cy, g.z)
        q0, q1 = (c * dx + s * dy) / a, (c * dy - s * dx) / b
        gx = (c * g.s[0]) / a * q0 - (s * g.s[0]) / b * q1
        gy = (s * g.s[1]) / a * q0 + (c * g.s[1]) / b * q1
        return _radial(np.sqrt(q0 * q0 + q1 * q1), np.sqrt(gx * gx + gy * gy), 1.0)


@dataclass(frozen=True)
class HalfSpace:
    """``normal · (p - point) <= 0``."""

    normal: tuple[float, float, float]
    point: tuple[float, float, float]

    def bounds(self) -> tuple[Any, Any]:
        lo, hi = np.full(3, -INF), np.full(3, INF)
        axes = np.flatnonzero(self.normal)
        if len(axes) == 1:  # axis-aligned: bounded on one side
            axis = int(axes[0])
            (hi if self.normal[axis] > 0 else lo)[axis] = self.point[axis]
        return lo, hi

    def distance(self, g: Grid) -> Any:
        n = np.asarray(self.normal, float) / np.linalg.norm(self.normal)
        scale = float(np.linalg.norm(n * np.asarray(g.s)))
        terms = [float(n[i] / scale) * (v - float(self.point[i])) for i, v in enumerate((g.x, g.y, g.z))
                 if n[i] != 0]
        return sum(terms[1:], terms[0])


@dataclass(frozen=True)
class AboveY:
    """``y >= y(z)`` with ``y(z)`` linear between knots: where the ribs end anteriorly."""

    zk: tuple[float, ...]
    yk: tuple[float, ...]

    def bounds(self) -> tuple[Any, Any]:
        return np.array([-INF, min(self.yk), -INF]), np.full(3, INF)

    def distance(self, g: Grid) -> Any:
        limit = np.interp(g.z.ravel(), self.zk, self.yk).astype(np.float32).reshape(g.z.shape)
        return (limit - g.y) / g.s[1]


@dataclass(frozen=True)
class Bands:
    """Slabs ``width`` thick every ``period`` mm along ``z - slope * (y - y0)``, from ``z0`` up: vertebral
    bodies between discs, and ribs (which run lower anteriorly)."""

    period: float
    width: float
    phase: float
    slope: float = 0.0
    y0: float = 0.0
    z0: float = -INF

    def bounds(self) -> tuple[Any, Any]:
        return np.array([-INF, -INF, -INF if self.slope else self.z0]), np.full(3, INF)

    def distance(self, g: Grid) -> Any:
        period, slope = float(self.period), float(self.slope)
        t = g.z - float(self.phase) - slope * (g.y - float(self.y0)) if slope else g.z - float(self.phase)
        along = np.abs(np.mod(t + period / 2, period) - period / 2) - float(self.width) / 2
        dist = along / math.hypot(slope * g.s[1], g.s[2])
        if self.z0 > -INF:
            dist = np.maximum(dist, (float(self.z0) - g.z) / g.s[2])
        return dist


@dataclass(frozen=True)
class All:
    """Intersection of shapes; ``All(a, Not(b))`` is a minus b."""

    parts: tuple[Any, ...]

    def bounds(self) -> tuple[Any, Any]:
        los, his = zip(*(p.bounds() for p in self.parts), strict=True)
        return np.max(los, axis=0), np.min(his, axis=0)

    def distance(self, g: Grid) -> Any:
        dist = self.parts[0].distance(g)
        for p in self.parts[1:]:
            dist = np.maximum(dist, p.distance(g))
        return dist


@dataclass(frozen=True)
class Not:
    shape: Any

    def bounds(self) -> tuple[Any, Any]:
        return np.full(3, -INF), np.full(3, INF)

    def distance(self, g: Grid) -> Any:
        return -self.shape.distance(g)


def intersect(*parts: Any) -> All:
    return All(tuple(parts))


def index_box(bounds: tuple[Any, Any], origin: Sequence[float], s: Sequence[float],
               n: Sequence[int]) -> tuple[int, ...]:
    """Index ranges (x, y, z; half-open) that hold a shape's bounds plus a voxel for the partial volume."""
    out: list[int] = []
    for axis in range(3):
        lo, hi = bounds[0][axis], bounds[1][axis]
        i0 = 0 if lo == -INF else max(0, math.floor((lo - origin[axis]) / s[axis]) - 1)
        i1 = n[axis] if hi == INF else min(n[axis], math.ceil((hi - origin[axis]) / s[axis]) + 2)
        out += [i0, max(i0, i1)]
    return tuple(out)
