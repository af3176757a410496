"""CT phantoms with ground truth: torso volumes with organ label maps, written as a CT series, a NIfTI
label map and a DICOM Segmentation that references the CT, for training and scoring segmentation.

Each case is a scene of analytic shapes in patient coordinates (LPS, mm): elliptic cylinders that taper
along the body axis (body, fat, muscle, the body cavity, vessels), ellipsoids with low-order bumps
(organs), half-spaces (diaphragm, mediastinum, liver edge) and periodic bands (vertebrae, ribs). Sizes,
positions, rotations, fat, contrast phase and Hounsfield units vary per case through
:func:`voxlake.synth.rng`, so a seed fixes everything. Shapes are painted in anatomical order; a later
shape covers an earlier one.

Partial volume comes from an approximate signed distance in voxel units, ``d``: a voxel takes the
fraction ``clip(0.5 - d, 0, 1)`` of a shape's value, which blurs thick slices along z as a real scanner
does, while the label map stays hard (``d <= 0``, the voxel centre). Noise is Gaussian, correlated
in-plane like reconstructed CT noise, and grows as slices get thinner.

>>> from voxlake.synth.phantom import generate_phantoms
>>> result = generate_phantoms("./phantoms", cases=2, seed=7)  # doctest: +SKIP
>>> print(result.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydicom.sr.coding import Code
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from voxlake import __version__ as VERSION
from voxlake.errors import InvalidArgumentError, MissingExtraError
from voxlake.synth import UID_ROOT, rng, uid

try:
    import numpy as np
except ImportError as exc:  # pragma: no cover - the synth extra brings numpy
    raise MissingExtraError("CT phantoms need numpy: pip install 'voxlake[synth]'") from exc

from voxlake.synth._shapes import (
    AboveY,
    Bands,
    Cylinder,
    Ellipsoid,
    Grid,
    HalfSpace,
    Not,
    index_box,
    intersect,
    rotation,
)

__all__ = [
    "ORGANS",
    "TISSUE_HU",
    "Organ",
    "Phantom",
    "PhantomCase",
    "PhantomResult",
    "Phase",
    "generate_phantoms",
    "make_phantom",
]

MANUFACTURER = "voxlake"
MODEL = "voxlake.synth.phantom"
#: Transfer syntaxes both pydicom (CT) and highdicom (SEG) can write without loss.
TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless,
)
#: Slice thicknesses scanners offer; a case picks the one that gives a realistic coverage.
STANDARD_THICKNESSES = (0.625, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 3.75, 5.0)
_INTERCEPT = -1024  # stored value = HU + 1024, 12 bits: HU from -1024 to 3071


class Phase(StrEnum):
    """Contrast phase of the scan: it sets the enhancement of blood, liver, spleen and kidneys."""

    NATIVE = "native"
    ARTERIAL = "arterial"
    PORTAL_VENOUS = "portal-venous"


@dataclass(frozen=True)
class Organ:
    """A label of the phantom: its name, its codes for the SEG (PS3.16 CID 7150 category, CID 7151 or
    7166 type, CID 244 laterality modifier), typical Hounsfield units per phase as (mean, sd between cases),
    and a display colour (RGB)."""

    label: int
    name: str
    category: Code
    property_type: Code
    modifier: Code | None
    hu: Mapping[Phase, tuple[float, float]]
    colour: tuple[int, int, int]

    def codes(self) -> dict[str, Any]:
        """The codes as JSON, keyed by the DICOM attribute that holds them in a SEG."""
        out = {
            "SegmentedPropertyCategoryCodeSequence": _code_json(self.category),
            "SegmentedPropertyTypeCodeSequence": _code_json(self.property_type),
        }
        if self.modifier is not None:
            out["SegmentedPropertyTypeModifierCodeSequence"] = _code_json(self.modifier)
        return out


def _code_json(code: Code) -> dict[str, str]:
    return {"CodeValue": code.value, "CodingSchemeDesignator": code.scheme_designator,
            "CodeMeaning": code.meaning}


_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
_TISSUE = Code("85756007", "SCT", "Tissue")
_RIGHT = Code("24028007", "SCT", "Right")
_LEFT = Code("7771000", "SCT", "Left")


def _hu(native: tuple[float, float], arterial: tuple[float, float] | None = None,
        portal: tuple[float, float] | None = None) -> Mapping[Phase, tuple[float, float]]:
    return MappingProxyType({Phase.NATIVE: native, Phase.ARTERIAL: arterial or native,
                             Phase.PORTAL_VENOUS: portal or native})


#: Label value → organ. 0 is background (air and the table). ``body`` is everything else inside the skin.
ORGANS: Mapping[int, Organ] = MappingProxyType({o.label: o for o in (
    Organ(1, "body", _STRUCTURE, Code("38266002", "SCT", "Entire body"), None,
          _hu((40, 10)), (177, 122, 101)),
    Organ(2, "lung_right", _STRUCTURE, Code("39607008", "SCT", "Lung"), _RIGHT,
          _hu((-850, 30)), (197, 165, 145)),
    Organ(3, "lung_left", _STRUCTURE, Code("39607008", "SCT", "Lung"), _LEFT,
          _hu((-850, 30)), (172, 138, 115)),
    Organ(4, "heart", _STRUCTURE, Code("80891009", "SCT", "Heart"), None,
          _hu((42, 5), (260, 40), (150, 20)), (206, 110, 84)),
    Organ(5, "liver", _STRUCTURE, Code("10200004", "SCT", "Liver"), None,
          _hu((58, 6), (75, 8), (108, 12)), (221, 130, 101)),
    Organ(6, "spleen", _STRUCTURE, Code("78961009", "SCT", "Spleen"), None,
          _hu((48, 5), (120, 15), (115, 10)), (157, 108, 162)),
    Organ(7, "kidney_right", _STRUCTURE, Code("64033007", "SCT", "Kidney"), _RIGHT,
          _hu((32, 5), (180, 25), (165, 20)), (185, 102, 83)),
    Organ(8, "kidney_left", _STRUCTURE, Code("64033007", "SCT", "Kidney"), _LEFT,
          _hu((32, 5), (180, 25), (165, 20)), (160, 88, 70)),
    Organ(9, "aorta", _STRUCTURE, Code("15825003", "SCT", "Aorta"), None,
          _hu((42, 5), (280, 40), (170, 20)), (224, 97, 76)),
    Organ(10, "urinary_bladder", _STRUCTURE, Code("89837001", "SCT", "Bladder"), None,
          _hu((5, 4)), (222, 154, 132)),
    Organ(11, "spine", _STRUCTURE, Code("421060004", "SCT", "Spine"), None,
          _hu((250, 50)), (241, 214, 145)),
    Organ(12, "bone", _TISSUE, Code("3138006", "SCT", "Bone"), None, _hu((450, 80)), (255, 250, 220)),
)})
_LABEL = MappingProxyType({o.name: o.label for o in ORGANS.values()})

#: Unlabelled tissues as (mean, sd between cases); bone layers give the cortex and the spongiosa.
TISSUE_HU: Mapping[str, tuple[float, float]] = MappingProxyType({
    "air": (-1000, 0), "gas": (-950, 20), "fat": (-100, 8), "visceral_fat": (-90, 8), "muscle": (50, 5),
    "bowel": (30, 8), "stomach": (18, 6), "csf": (10, 3), "cortical_bone": (850, 100),
    "table_shell": (250, 30), "table_foam": (-900, 20),
    "blood_native": (40, 4), "blood_arterial": (70, 10), "blood_portal": (150, 15),
})


@dataclass(frozen=True)
class _Layer:
    """A shape painted with a Hounsfield unit value; ``label`` None leaves the label map as it was."""

    shape: Any
    hu: float
    label: int | None


# ----------------------------------------------------------------------------------------------------------
# Anatomy

@dataclass(frozen=True)
class _Scene:
    layers: tuple[_Layer, ...]
    phase: Phase
    hu_means: Mapping[str, float]
    z_floor: float  # bottom of the pubic symphysis: scans start a little below it
    z_heart: float  # a scan reaching this far up covers the chest
    width: float  # widest extent of the body along x (mm), for the field of view


class _Anatomy:
    """One case's anatomy: landmarks first, then layers region by region in painting order, every number
    drawn from one generator in a fixed order (so a seed and a case fix the scene)."""

    def __init__(self, seed: int, case: int) -> None:
        self.g = g = rng(seed, "phantom", case, "anatomy")
        self.u, self.n = u, n = g.uniform, g.normal
        phases = (Phase.NATIVE, Phase.ARTERIAL, Phase.PORTAL_VENOUS)
        self.phase = phases[int(g.choice(3, p=[0.25, 0.25, 0.5]))]
        self.hu = {o.name: float(n(*o.hu[self.phase])) for o in ORGANS.values()}
        self.tissue = {k: float(n(*v)) for k, v in TISSUE_HU.items()}
        self.blood = self.tissue[{Phase.NATIVE: "blood_native", Phase.ARTERIAL: "blood_arterial",
                                  Phase.PORTAL_VENOUS: "blood_portal"}[self.phase]]
        self.s = float(np.clip(n(1.0, 0.06), 0.85, 1.15))  # height
        self.frame = float(np.clip(n(1.0, 0.06), 0.85, 1.15))  # width of the skeleton
        self.t_fat, self.t_mus = float(np.clip(n(22, 9), 6, 50)), u(8, 15)
        self.cx, self.cy = n(0, 6), u(-15, 15)
        self.z_ref = round(u(-450, -150), 1)  # kidney level in table coordinates
        # The cavity inside the abdominal and chest wall: widest at the hips and the lower chest.
        self.zk = tuple(self.z(v) for v in (-290, -200, -110, 0, 110, 200, 330, 450, 520))
        self.ac, self.bc = 120 * self.frame * u(0.92, 1.08), 82 * self.frame * u(0.9, 1.1)
        fa = np.array([1.02, 1.06, 1.03, 0.95, 1.0, 1.04, 1.0, 0.9, 0.45]) * (1 + n(0, 0.015, 9))
        fb = np.array([0.95, 0.95, 0.92, 0.95, 1.0, 1.05, 1.03, 0.95, 0.6]) * (1 + n(0, 0.015, 9))
        self.a_c, self.b_c = tuple(float(v) for v in self.ac * fa), tuple(float(v) for v in self.bc * fb)
        self.cavity = Cylinder(self.zk, (self.cx,) * 9, (self.cy,) * 9, self.a_c, self.b_c, n(0, 2))
        self.x_s, self.y_v = self.cx + n(0, 3), self.cy + self.bc * u(0.28, 0.38)  # vertebral body centre
        self.av, self.bv = 22 * self.frame * u(0.9, 1.1), 17 * self.frame * u(0.9, 1.1)
        self.y_canal = self.y_v + self.bv + 9
        self.z_floor, self.z_dome = self.z(-230), self.z(150 + n(0, 10))  # pubic symphysis, right dome
        self.z_bladder = self.z_floor + u(38, 55) * self.s
        self.liver_r = tuple(float(v) * self.s for v in (u(90, 115), u(72, 92), u(70, 88)))
        self.z_liver = self.z_dome - 0.85 * self.liver_r[2]
        self.z_heart = self.z_dome + u(40, 60) * self.s
        self.layers: list[_Layer] = []

    def z(self, rel: float) -> float:
        """Table z of a level given in mm from the kidneys of a standard-height body."""
        return self.z_ref + rel * self.s

    def paint(self, shape: Any, hu: float, label: int | None = None) -> None:
        self.layers.append(_Layer(shape, hu, label))

    def scene(self, *, table: bool) -> _Scene:
        self.wall(table)
        self.viscera()
        self.thorax()
        self.abdomen()
        self.vessels()
        self.spine()
        self.bones()
        width = 2 * (max(self.a_c) + self.t_mus + self.t_fat)
        return _Scene(tuple(self.layers), self.phase, MappingProxyType(self.hu), self.z_floor, self.z_heart,
                      width)

    def wall(self, table: bool) -> None:
        """Table, skin and subcutaneous fat, muscle, the fat of the cavity, paraspinal and psoas muscles."""
        u, t = self.u, self.tissue
        y_back = self.cy + 0.95 * (0.95 * self.bc + self.t_mus + self.t_fat)  # lying flattens the back
        flat = HalfSpace((0, 1, 0), (0, y_back, 0))
        if table:
            y_top = y_back + u(0.5, 3)
            half_width = u(200, 250)
            sides = (HalfSpace((1, 0, 0), (half_width, 0, 0)), HalfSpace((-1, 0, 0), (-half_width, 0, 0)))

            def slab(y0: float, y1: float) -> Any:
                return intersect(HalfSpace((0, -1, 0), (0, y0, 0)), HalfSpace((0, 1, 0), (0, y1, 0)), *sides)

            self.paint(slab(y_top, y_top + 45), t["table_foam"])  # a carbon-fibre shell round a foam core
            self.paint(slab(y_top, y_top + 4), t["table_shell"])
            self.paint(slab(y_top + 41, y_top + 45), t["table_shell"])
        self.paint(intersect(self.cavity.grown(self.t_mus + self.t_fat), flat), t["fat"], _LABEL["body"])
        self.paint(intersect(self.cavity.grown(self.t_mus), flat), t["muscle"])
        self.paint(self.cavity, t["visceral_fat"])
        for side in (-1, 1):
            x = self.x_s + side * 38 * self.frame
            self.paint(Cylinder((0.0,), (x,), (self.y_canal + 20,), (28 * self.frame,), (24,)), t["muscle"])
            psoas_x = tuple(self.x_s + side * (self.av + 12 + r) for r in (24, 20, 14, 4))
            psoas = Cylinder(tuple(self.z(v) for v in (-215, -120, 0, 45)), psoas_x, (self.y_v,) * 4,
                             (22, 20, 14, 5), (20, 18, 12, 5), z0=self.z(-225), z1=self.z(45))
            self.paint(psoas, t["muscle"])

    def viscera(self) -> None:
        """Bowel loops (some with gas), the colon and the stomach: unlabelled, for organs to cover."""
        u, t, cx, cy, inside = self.u, self.tissue, self.cx, self.cy, self.cavity
        for _ in range(int(self.g.integers(22, 36))):
            c = (cx + u(-0.8, 0.8) * self.ac, u(cy - 0.85 * self.bc, self.y_v - 12),
                 u(self.z_bladder + 20, self.z_liver - 10))
            r = (u(10, 24), u(10, 22), u(12, 32))
            self.paint(intersect(Ellipsoid(c, r, rotation(u(0, 180))), inside), u(15, 45))
            if self.g.random() < 0.4:  # gas rises to the anterior side
                gas = Ellipsoid((c[0], c[1] - 0.35 * r[1], c[2]), (0.55 * r[0], 0.5 * r[1], 0.6 * r[2]))
                self.paint(intersect(gas, inside), t["gas"])
        for side in (-1, 1):
            a, b = u(18, 26), u(16, 24)
            colon = Cylinder((0.0,), (cx + side * 0.72 * self.ac,), (cy - 0.1 * self.bc,), (a,), (b,),
                             z0=self.z(-140), z1=self.z_liver - 0.3 * self.liver_r[2])
            self.paint(intersect(colon, inside), u(-450, -150))  # stool mixed with gas
        c = (cx + u(35, 60), cy - u(15, 35), self.z_liver + u(-25, 5))
        r = tuple(float(v) * u(0.7, 1.1) for v in (45, 35, 55))
        self.paint(intersect(Ellipsoid(c, r, rotation(u(-30, 10))), inside), t["stomach"])
        fundus = (c[0], c[1] - 0.45 * r[1], c[2] + 0.3 * r[2])
        self.paint(intersect(Ellipsoid(fundus, tuple(0.5 * v for v in r)), inside), t["gas"])

    def thorax(self) -> None:
        """Lungs above the diaphragm and beside the mediastinum; the heart in front of them."""
        u, n, cx, cy, s = self.u, self.n, self.cx, self.cy, self.s
        lung_si = u(120, 150) * s
        for side, name in ((-1, "lung_right"), (1, "lung_left")):
            dome = self.z_dome if side < 0 else self.z_dome - u(10, 25)
            lung = Ellipsoid((cx + side * 0.47 * self.ac, cy + 5, dome + 0.75 * lung_si),
                             (0.55 * self.ac, 0.98 * self.bc, lung_si), rotation(n(0, 3)),
                             (n(0, 0.04), 0.08, -0.06))
            diaphragm = HalfSpace((0, 0.45, -1), (0, cy, dome))  # lower posteriorly: the costophrenic recess
            mediastinum = HalfSpace((-side, 0, 0), (cx + side * 10, 0, 0))
            self.paint(intersect(lung, self.cavity, diaphragm, mediastinum), self.hu[name], _LABEL[name])
        radii = tuple(v * u(0.85, 1.15) * s for v in (58, 44, 52))
        heart = Ellipsoid((cx + u(12, 30), cy - 0.25 * self.bc, self.z_heart), radii,
                          rotation(-35 + n(0, 8), n(0, 8), n(0, 8)), (0.1, 0, -0.05))
        self.paint(intersect(heart, self.cavity), self.hu["heart"], _LABEL["heart"])

    def abdomen(self) -> None:
        """Liver (with the gallbladder cut out), spleen, kidneys with sinus fat, bladder."""
        u, n, s, inside = self.u, self.n, self.s, self.cavity
        lr, zl = self.liver_r, self.z_liver
        lc = (self.cx - u(50, 70) * self.frame, self.cy - u(0, 20), zl)
        liver = Ellipsoid(lc, lr, rotation(n(0, 8), n(0, 5), n(0, 5)), (-0.12, n(0, 0.05), 0.05, n(0, 0.08)))
        edge = HalfSpace((u(0.3, 0.6), 0, -1), (lc[0], 0, zl - u(0.3, 0.5) * lr[2]))  # inferior border
        self.paint(intersect(liver, edge, inside), self.hu["liver"], _LABEL["liver"])
        if self.g.random() < 0.7:
            gb = Ellipsoid((lc[0] + 0.35 * lr[0], lc[1] - 0.4 * lr[1], zl - 0.35 * lr[2]),
                           (u(12, 18), u(12, 18), u(25, 40)), rotation(30))
            self.paint(intersect(gb, inside), self.tissue["csf"], _LABEL["body"])
        spleen = Ellipsoid((self.cx + u(0.6, 0.72) * self.ac, self.cy + u(15, 35), zl + u(-10, 20)),
                           (u(20, 30) * s, u(42, 60) * s, u(45, 65) * s),
                           rotation(u(25, 45), n(0, 8), n(0, 8)), (0.05, n(0, 0.08), 0, n(0, 0.1)))
        self.paint(intersect(spleen, inside), self.hu["spleen"], _LABEL["spleen"])
        z_left = self.z(u(-15, 20))
        for side, name in ((-1, "kidney_right"), (1, "kidney_left")):
            c = (self.x_s + side * u(55, 75) * self.frame, self.y_v + u(-5, 10),
                 z_left - (u(5, 25) * s if side < 0 else 0))  # the liver pushes the right kidney down
            r = np.array([u(21, 27), u(24, 31), u(46, 58)]) * n(1, 0.07)
            rot = rotation(side * u(20, 40), side * -u(5, 15), -u(5, 15))  # upper pole medial and posterior
            kidney = Ellipsoid(c, tuple(float(v) for v in r), rot, (n(0, 0.05), 0, 0.04))
            self.paint(intersect(kidney, inside), self.hu[name], _LABEL[name])
            sinus = np.asarray(c) + rot @ np.array([-side * 0.45 * r[0], -0.2 * r[1], 0])
            self.paint(Ellipsoid(tuple(sinus), tuple(float(v) for v in r * [0.35, 0.3, 0.45]), rot),
                       self.tissue["fat"], _LABEL[name])
        bladder = Ellipsoid((self.cx + n(0, 5), self.cy - u(10, 35), self.z_bladder),
                            (u(30, 50), u(25, 40), u(25, 40)), rotation(n(0, 10)), (0, -0.05, 0.08))
        self.paint(intersect(bladder, inside), self.hu["urinary_bladder"], _LABEL["urinary_bladder"])

    def vessels(self) -> None:
        """The aorta (labelled) down to its bifurcation, the common iliac arteries and the IVC."""
        u, inside = self.u, self.cavity
        r = u(9, 13)
        z_bif = self.z(u(-110, -70))
        y = self.y_v - self.bv - r - u(2, 6)
        zk = tuple(self.z(v) for v in (-110, 0, 100, 200, 330))
        x_off, wiggle = u(10, 22), u(0, 6)
        x_chest = max(x_off, 0.85 * self.av + 1.2 * r + 3)  # beside the thoracic vertebrae
        xk = tuple(self.x_s + o + 4 * math.sin(v / 90 + wiggle)
                   for v, o in zip(zk, (x_off, x_off, x_off + 5, x_chest, x_chest), strict=True))
        rk = (r, r, 1.1 * r, 1.2 * r, 1.2 * r)
        aorta = Cylinder(zk, xk, (y, y, y + 5, y + 15, y + 15), rk, rk, z0=z_bif)
        ivc = Cylinder((0.0,), (self.x_s - u(18, 28),), (y - 2,), (u(11, 15),), (u(8, 12),), z0=z_bif - 10,
                       z1=self.z_liver)
        self.paint(intersect(ivc, inside), self.blood)
        self.paint(intersect(aorta, inside), self.hu["aorta"], _LABEL["aorta"])
        for side in (-1, 1):
            x_low = xk[0] + side * 0.5 * (z_bif - self.z_floor)
            iliac = Cylinder((self.z_floor, z_bif), (x_low, xk[0]), (y - 25, y), (0.65 * r,) * 2,
                             (0.65 * r,) * 2, z1=z_bif)
            self.paint(intersect(iliac, inside), self.hu["aorta"])

    def spine(self) -> None:
        """Vertebral bodies (cortex, then spongiosa) between discs, arches and processes, the sacrum, the
        spinal canal."""
        u, z, spine, cortex = self.u, self.z, _LABEL["spine"], self.tissue["cortical_bone"]
        x, av, bv, y_canal = self.x_s, self.av, self.bv, self.y_canal
        pitch, disc = u(28, 34) * self.s, u(6, 9) * self.s
        phase = self.z_ref + u(0, pitch)
        bodies = Cylinder(tuple(z(v) for v in (-95, 20, 150, 300)), (x,) * 4, (self.y_v,) * 4,
                          (av, av, 0.85 * av, 0.75 * av), (bv, bv, 0.9 * bv, 0.85 * bv), z0=z(-95))
        self.paint(intersect(bodies, Bands(pitch, pitch - disc, phase)), cortex, spine)
        spongiosa = intersect(bodies.grown(-2.0), Bands(pitch, pitch - disc - 4, phase))
        self.paint(spongiosa, self.hu["spine"], spine)
        arch = Cylinder((0.0,), (x,), (y_canal + 2,), (17 * self.frame,), (13,), z0=z(-95))
        self.paint(intersect(arch, Bands(pitch, pitch - disc - 2, phase + 0.1 * pitch)), 0.7 * cortex, spine)
        spinous = Cylinder((0.0,), (x,), (y_canal + 20,), (5,), (14,), z0=z(-95))
        self.paint(intersect(spinous, Bands(pitch, 0.45 * pitch, phase - 0.15 * pitch)), 0.7 * cortex, spine)
        transverse = Cylinder((0.0,), (x,), (y_canal - 3,), (u(36, 46) * self.frame,), (6,), z0=z(-95),
                              z1=z(40))
        self.paint(intersect(transverse, Bands(pitch, 0.3 * pitch, phase)), 0.7 * cortex, spine)
        sacrum = Cylinder((z(-200), z(-95)), (x,) * 2, (self.y_v + 35, self.y_v + 8), (30, 48 * self.frame),
                          (14, 20), z0=z(-200), z1=z(-95))
        self.paint(sacrum, 0.5 * (cortex + self.hu["spine"]), spine)
        canal = Cylinder((0.0,), (x,), (y_canal,), (10,), (8,), z0=z(-200))
        self.paint(canal, self.tissue["csf"], _LABEL["body"])

    def bones(self) -> None:
        """Ribs (the lower ones only posterolateral), sternum, iliac wings, femoral heads, necks, shafts
        and the pubic bones."""
        u, cx, cy, bc, s, frame = self.u, self.cx, self.cy, self.bc, self.s, self.frame
        bone, cortex, spongiosa = _LABEL["bone"], self.tissue["cortical_bone"], self.hu["bone"]
        z_xiphoid = self.z_dome + u(0, 20)
        costal_margin = AboveY((z_xiphoid - 60, z_xiphoid, z_xiphoid + 80),
                               (cy - 0.1 * bc, cy - 0.6 * bc, cy - 0.85 * bc))
        ribs = Bands(u(24, 30) * s, u(9, 12), self.z_ref + u(0, 30), slope=0.5, y0=cy, z0=self.z(u(5, 30)))
        ring = intersect(self.cavity.grown(11.0), Not(self.cavity.grown(1.0)))
        self.paint(intersect(ring, ribs, costal_margin), 0.6 * cortex, bone)
        y_sternum = cy - float(np.interp(z_xiphoid, self.zk, self.b_c)) - 6
        self.paint(Cylinder((0.0,), (cx,), (y_sternum,), (14,), (6,), z0=z_xiphoid), 0.6 * cortex, bone)
        hip = self.a_c[1]
        for side in (-1, 1):
            wing = (cx + side * 0.6 * hip, self.y_v + 5, self.z(-130))
            rot = rotation(side * -u(25, 40), side * u(5, 15))  # opening anterolaterally
            self.paint(Ellipsoid(wing, (11, 52 * frame, 55 * s), rot), 0.8 * cortex, bone)
            self.paint(Ellipsoid(wing, (7, 48 * frame, 51 * s), rot), spongiosa - 200, bone)
            head = (cx + side * 0.68 * hip, cy + 0.05 * bc, self.z_floor + u(25, 40))
            self.paint(Ellipsoid(head, (23, 23, 23)), spongiosa, bone)
            neck = (head[0] + side * 30, head[1], head[2] - 14)
            self.paint(Ellipsoid(neck, (30, 14, 14), rotation(0, side * 40)), spongiosa, bone)
            trochanter = (head[0] + side * 52, head[1] + 5, head[2] - 12)
            self.paint(Ellipsoid(trochanter, (16, 20, 28)), spongiosa, bone)
            shaft = Cylinder((0.0,), (trochanter[0] - side * 8,), (trochanter[1],), (15,), (15,),
                             z1=trochanter[2])
            self.paint(shaft, cortex, bone)
            pubis = (cx + side * 14, cy - 0.8 * self.b_c[1], self.z_floor + 15)
            self.paint(Ellipsoid(pubis, (14, 9, 20)), spongiosa, bone)


def _scene(seed: int, case: int, *, table: bool) -> _Scene:
    return _Anatomy(seed, case).scene(table=table)


# ----------------------------------------------------------------------------------------------------------
# Rendering

@dataclass(frozen=True, eq=False)
class Phantom:
    """One rendered case. Arrays are indexed ``[k, r, c]`` (slice, row, column): slice ``k`` lies at
    ``origin + k * spacing[0]`` along ``direction[:, 0]`` (+z, feet to head), row ``r`` along
    ``direction[:, 1]`` (+y, posterior), column ``c`` along ``direction[:, 2]`` (+x, patient left).

    ``organ_centres`` holds each present organ's centroid in LPS mm, computed from the hard label map and
    this geometry, so a reader that maps voxels to the patient correctly recovers it. ``hu_means`` are the
    organ values drawn for this case, before partial volume and noise (``noise_sd``, HU).
    """

    seed: int
    case: int
    hu: Any  # int16 Hounsfield units
    labels: Any  # uint8, values in ORGANS
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]  # slice, row, column spacing in mm
    direction: Any  # 3x3, columns are the LPS directions of the k, r, c axes
    organ_centres: Mapping[str, tuple[float, float, float]]
    organ_volumes_ml: Mapping[str, float]
    hu_means: Mapping[str, float]
    noise_sd: float
    phase: Phase
    body_part_examined: str  # ABDOMENPELVIS, or CHESTABDPELVIS when the scan reaches the heart

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.labels.shape)

    @property
    def affine(self) -> Any:
        """4x4 matrix from ``(k, r, c, 1)`` to LPS mm."""
        out = np.eye(4)
        out[:3, :3] = np.asarray(self.direction) * np.asarray(self.spacing)
        out[:3, 3] = self.origin
        return out

    def index_to_patient(self, index: Sequence[float]) -> tuple[float, float, float]:
        p = self.affine @ np.array([*index, 1.0])
        return (float(p[0]), float(p[1]), float(p[2]))


_DIRECTION = ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0))  # transposed: the k, r and c axes in LPS


def make_phantom(seed: int, case: int, *, shape: tuple[int, int, int] = (150, 512, 512),
                 spacing: tuple[float, float, float] = (2.5, 0.8, 0.8), table: bool = True) -> Phantom:
    """Render case ``case`` of seed ``seed`` on a grid of ``shape`` (slices, rows, columns) voxels of
    ``spacing`` (slice, row, column) mm, axial, head first supine. The scan starts just below the pubic
    symphysis and runs towards the head, so short coverage (under ~420 mm) keeps the pelvis and abdomen and
    cuts the chest; the anatomy itself depends only on the seed and the case."""
    nz, ny, nx = (int(v) for v in shape)
    dz, dy, dx = (float(v) for v in spacing)
    if min(nz, ny, nx) < 1 or min(dz, dy, dx) <= 0:
        raise InvalidArgumentError(f"shape and spacing must be positive, got {shape} and {spacing}")
    scene = _scene(seed, case, table=table)
    acq = rng(seed, "phantom", case, "scan")
    origin = (round(-(nx - 1) / 2 * dx, 3), round(-(ny - 1) / 2 * dy, 3),
              round(scene.z_floor - float(acq.uniform(5, 30)), 1))
    noise_sd = float(np.clip(acq.uniform(8, 15) * math.sqrt(2.5 / dz), 4, 40))
    x = (origin[0] + dx * np.arange(nx)).astype(np.float32).reshape(1, 1, nx)
    y = (origin[1] + dy * np.arange(ny)).astype(np.float32).reshape(1, ny, 1)
    z = (origin[2] + dz * np.arange(nz)).astype(np.float32).reshape(nz, 1, 1)
    boxes = [index_box(layer.shape.bounds(), origin, (dx, dy, dz), (nx, ny, nz)) for layer in scene.layers]
    hu_out = np.empty((nz, ny, nx), np.int16)
    labels = np.empty((nz, ny, nx), np.uint8)
    n_labels = max(ORGANS) + 1
    sums = np.zeros((n_labels, 4))  # count, sum k, sum r, sum c
    noise_rng = rng(seed, "phantom", case, "noise")
    step = max(1, 4_000_000 // (nx * ny))
    for k0 in range(0, nz, step):
        k1 = min(nz, k0 + step)
        hu = np.full((k1 - k0, ny, nx), -1000.0, np.float32)
        lab = np.zeros((k1 - k0, ny, nx), np.uint8)
        for layer, (c0, c1, r0, r1, b0, b1) in zip(scene.layers, boxes, strict=True):
            a0, a1 = max(b0, k0), min(b1, k1)
            if a0 >= a1 or c0 >= c1 or r0 >= r1:
                continue
            grid = Grid(x[:, :, c0:c1], y[:, r0:r1, :], z[a0:a1], (dx, dy, dz))
            dist = np.broadcast_to(layer.shape.distance(grid), grid.shape)
            frac = np.clip(0.5 - dist, 0.0, 1.0)
            view = hu[a0 - k0:a1 - k0, r0:r1, c0:c1]
            view += frac * (np.float32(layer.hu) - view)
            if layer.label is not None:
                np.copyto(lab[a0 - k0:a1 - k0, r0:r1, c0:c1], np.uint8(layer.label), where=dist <= 0)
        hu += _noise(noise_rng, hu.shape, noise_sd)
        hu_out[k0:k1] = np.clip(np.rint(hu), _INTERCEPT, 3071).astype(np.int16)
        labels[k0:k1] = lab
        _accumulate(sums, lab, k0)
    direction = np.array(_DIRECTION).T
    body_part = "CHESTABDPELVIS" if origin[2] + (nz - 1) * dz >= scene.z_heart else "ABDOMENPELVIS"
    phantom = Phantom(seed, case, hu_out, labels, origin, (dz, dy, dx), direction, {}, {}, scene.hu_means,
                      noise_sd, scene.phase, body_part)
    voxel_ml = dz * dy * dx / 1000
    centres = {o.name: phantom.index_to_patient(sums[o.label, 1:] / sums[o.label, 0])
               for o in ORGANS.values() if sums[o.label, 0] > 0}
    volumes = {o.name: float(sums[o.label, 0] * voxel_ml) for o in ORGANS.values() if sums[o.label, 0] > 0}
    return dataclasses.replace(phantom, organ_centres=MappingProxyType(centres),
                               organ_volumes_ml=MappingProxyType(volumes))


def _accumulate(sums: Any, lab: Any, k0: int) -> None:
    """Add a slab's voxel counts and index sums per label to ``sums`` (label, [n, Σk, Σr, Σc]): one
    histogram per slice, weighted by the row and column index grids."""
    n_labels, (_, ny, nx) = sums.shape[0], lab.shape
    rows = np.repeat(np.arange(ny, dtype=np.float64), nx)
    cols = np.tile(np.arange(nx, dtype=np.float64), ny)
    for k, plane in enumerate(lab, start=k0):
        flat = plane.ravel()
        counts = np.bincount(flat, minlength=n_labels)
        sums[:, 0] += counts
        sums[:, 1] += counts * k
        sums[:, 2] += np.bincount(flat, weights=rows, minlength=n_labels)
        sums[:, 3] += np.bincount(flat, weights=cols, minlength=n_labels)


def _noise(g: Any, shape: tuple[int, ...], sd: float) -> Any:
    """Gaussian noise with the in-plane correlation of filtered back-projection: white noise smoothed by
    [1, 2, 1]/4 along rows and columns (edges repeated), then scaled back to ``sd`` (the filter keeps 0.375
    of it)."""
    w = g.standard_normal(shape, dtype=np.float32)
    for axis in (1, 2):
        out = w * np.float32(2)
        lo, hi, first, last = ([slice(None)] * 3 for _ in range(4))
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        first[axis], last[axis] = slice(0, 1), slice(-1, None)
        out[tuple(hi)] += w[tuple(lo)]
        out[tuple(lo)] += w[tuple(hi)]
        out[tuple(first)] += w[tuple(first)]
        out[tuple(last)] += w[tuple(last)]
        w = out
    w *= np.float32(sd / 0.375 / 16)
    return w


# ----------------------------------------------------------------------------------------------------------
# Writing

@dataclass(frozen=True)
class PhantomCase:
    """The files and the truth of one written case."""

    case: int
    directory: Path
    ct_files: tuple[Path, ...]  # InstanceNumber order: the first file is the most cranial slice
    seg_path: Path
    nifti_path: Path
    labels_path: Path
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    phase: Phase
    organ_centres: Mapping[str, tuple[float, float, float]]
    organ_volumes_ml: Mapping[str, float]
    seconds: float = field(compare=False)


@dataclass(frozen=True)
class PhantomResult:
    """What :func:`generate_phantoms` wrote."""

    out_dir: Path
    seed: int
    cases: tuple[PhantomCase, ...]
    seconds: float = field(compare=False)

    def summary(self) -> str:
        if not self.cases:
            return f"0 phantom cases in {self.out_dir}"
        size = sum(f.stat().st_size for c in self.cases for f in c.directory.rglob("*") if f.is_file())
        slices = [c.shape[0] for c in self.cases]
        thick = [c.spacing[0] for c in self.cases]
        rows, cols = self.cases[0].shape[1:]
        return (f"{len(self.cases)} phantom cases (seed {self.seed}) in {self.out_dir}: {rows}x{cols}, "
                f"{min(slices)}-{max(slices)} slices of {min(thick):g}-{max(thick):g} mm, "
                f"{len(ORGANS)} labels; CT series, labels.nii.gz, seg.dcm, labels.json per case; "
                f"{size / 1e6:.1f} MB in {self.seconds:.1f} s "
                f"({self.seconds / len(self.cases):.1f} s per case)")


@dataclass(frozen=True)
class _Options:
    rows: int
    columns: int
    slices: tuple[int, int]
    slice_thickness: tuple[float, float]
    transfer_syntax: str
    segmentation_type: str
    table: bool


def _range(name: str, value: Any, kind: type) -> tuple[Any, Any]:
    lo, hi = (value, value) if isinstance(value, int | float) else tuple(value)
    lo, hi = kind(lo), kind(hi)
    if not 0 < lo <= hi:
        raise InvalidArgumentError(f"{name} must be positive, as a value or a (low, high) range; "
                                   f"got {value!r}")
    return lo, hi


def generate_phantoms(out_dir: str | Path, *, cases: int, seed: int = 0, rows: int = 512, columns: int = 512,
                      slices: tuple[int, int] | int = (80, 300),
                      slice_thickness: tuple[float, float] | float = (1.0, 5.0),
                      transfer_syntax: str = ExplicitVRLittleEndian, segmentation_type: str = "BINARY",
                      table: bool = True, workers: int = 1,
                      progress: Callable[[int], None] | None = None) -> PhantomResult:
    """Write ``cases`` phantoms to ``out_dir/case-0000/`` …: ``ct/0001.dcm`` … (CT Image Storage, one file
    per slice, numbered head to feet), ``labels.nii.gz`` (uint8 label map, RAS affine), ``seg.dcm``
    (Segmentation referencing every CT instance, one segment per organ) and ``labels.json`` (the label
    table and the case's truth: geometry, organ centres and volumes, drawn HU, noise).

    Each case draws its slice count from ``slices``, then takes the standard thickness within
    ``slice_thickness`` that brings the coverage closest to a drawn 420-650 mm (or the nearest value in
    the range when no standard one falls in it); the field of view fits the body. ``transfer_syntax``
    (a UID or a pydicom keyword) applies to the CT and the SEG, except that a BINARY SEG, whose 1-bit
    frames only JPEG 2000 compresses, stays uncompressed under RLE or JPEG-LS. ``segmentation_type`` is
    ``BINARY`` (the widely read kind) or ``LABELMAP`` (DICOM 2024, one 8-bit frame per slice).
    ``workers`` > 1 renders cases in that many processes; the files are the same. The same seed gives
    byte-identical files. ``progress(1)`` is called as each case is written (a tqdm bar's ``update``).
    """
    if cases < 0:
        raise InvalidArgumentError(f"cases must be 0 or more, got {cases}")
    if min(rows, columns) < 8:
        raise InvalidArgumentError(f"rows and columns must be 8 or more, got {rows} and {columns}")
    if segmentation_type.upper() not in ("BINARY", "LABELMAP"):
        raise InvalidArgumentError(f"segmentation_type must be one of BINARY, LABELMAP; "
                                   f"got {segmentation_type!r}")
    options = _Options(rows, columns, _range("slices", slices, int),
                       _range("slice_thickness", slice_thickness, float), _transfer_syntax(transfer_syntax),
                       segmentation_type.upper(), table)
    try:
        import highdicom  # noqa: F401
        import nibabel  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError("CT phantoms need highdicom and nibabel: "
                                "pip install 'voxlake[synth]'") from exc
    out = Path(out_dir)
    start = time.perf_counter()
    written: dict[int, PhantomCase] = {}
    if workers <= 1 or cases <= 1:
        for case in range(cases):
            written[case] = _generate_case(out, seed, case, options)
            if progress is not None:
                progress(1)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(min(workers, cases), mp_context=ctx) as pool:
            futures = {pool.submit(_generate_case, out, seed, case, options): case for case in range(cases)}
            for future in as_completed(futures):
                written[futures[future]] = future.result()
                if progress is not None:
                    progress(1)
    return PhantomResult(out, seed, tuple(written[c] for c in range(cases)), time.perf_counter() - start)


def _generate_case(out: Path, seed: int, case: int, o: _Options) -> PhantomCase:
    """Choose one case's acquisition, render it and write it."""
    t0 = time.perf_counter()
    g = rng(seed, "phantom", case, "acquisition")
    nz = int(g.integers(o.slices[0], o.slices[1] + 1))
    lo, hi = o.slice_thickness
    coverage = g.uniform(420, 650)
    choices = [t for t in STANDARD_THICKNESSES if lo <= t <= hi]
    choices = choices or [round(float(np.clip(coverage / nz, lo, hi)), 3)]  # no standard one in the range
    dz = min(choices, key=lambda t: (abs(nz * t - coverage), t))
    fov = float(np.clip(_scene(seed, case, table=False).width * g.uniform(1.08, 1.25), 300, 500))
    pixel = round(fov / max(o.rows, o.columns), 4)
    phantom = make_phantom(seed, case, shape=(nz, o.rows, o.columns), spacing=(dz, pixel, pixel),
                           table=o.table)
    return _write_case(phantom, out / f"case-{case:04d}", o.transfer_syntax, o.segmentation_type, t0)


def _transfer_syntax(value: str) -> str:
    """A transfer syntax given by UID or by pydicom keyword (``JPEG2000Lossless``), checked."""
    for ts in TRANSFER_SYNTAXES:
        if value in (ts, ts.keyword) or value.lower() == ts.keyword.lower():
            return ts
    valid = ", ".join(f"{ts.keyword} ({ts})" for ts in TRANSFER_SYNTAXES)
    raise InvalidArgumentError(f"transfer_syntax must be one of {valid}; got {value!r}")


def _ds(value: float) -> str:
    """A decimal string (DS) that is short, exact and stable: at most 4 decimals."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _ct_headers(p: Phantom, transfer_syntax: str) -> list[Any]:
    """One header per slice (no pixel data yet), index k of the phantom first."""
    from pydicom.dataset import Dataset, FileMetaDataset

    seed, case = p.seed, p.case
    g = rng(seed, "phantom", case, "header")
    study_day = np.datetime64("2019-01-01") + int(g.integers(0, 6 * 365))
    study_date = str(study_day).replace("-", "")
    age = int(g.integers(25, 86))
    birth = str(study_day - int(age * 365.25 + g.integers(0, 365))).replace("-", "")
    seconds = int(g.integers(7 * 3600, 19 * 3600))
    study_time = f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"
    acq = seconds + int(g.integers(120, 900))
    acq_time = f"{acq // 3600:02d}{acq // 60 % 60:02d}{acq % 60:02d}"
    nz, ny, nx = p.shape
    dz, dy, dx = p.spacing
    base = Dataset()
    base.SpecificCharacterSet = "ISO_IR 100"
    base.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    base.SOPClassUID = CTImageStorage
    base.StudyDate = base.SeriesDate = base.AcquisitionDate = base.ContentDate = study_date
    base.StudyTime, base.SeriesTime = study_time, acq_time
    base.AcquisitionTime = base.ContentTime = acq_time
    base.AccessionNumber = f"PH{seed % 100000:05d}{case:05d}"
    base.Modality = "CT"
    base.Manufacturer = MANUFACTURER
    base.ReferringPhysicianName = ""
    base.StudyDescription = "CT ABDOMEN PELVIS (SYNTHETIC PHANTOM)"
    base.SeriesDescription = f"{p.phase.value.upper()} {_ds(dz)}mm"
    base.ManufacturerModelName = MODEL
    base.PatientName = f"Phantom^{seed}^{case:04d}"
    base.PatientID = f"PHANTOM-{seed}-{case:04d}"
    base.PatientBirthDate = birth
    base.PatientSex = "MF"[int(g.integers(0, 2))]
    base.PatientAge = f"{age:03d}Y"
    if p.phase is not Phase.NATIVE:
        base.ContrastBolusAgent = "IODINATED CONTRAST"
        base.ContrastBolusRoute = "IV"
    base.BodyPartExamined = p.body_part_examined
    base.SliceThickness = _ds(dz)
    base.KVP = "120"
    base.SpacingBetweenSlices = _ds(dz)
    base.DataCollectionDiameter = "500"
    base.SoftwareVersions = f"{MODEL} {VERSION}"
    base.ReconstructionDiameter = _ds(max(nx * dx, ny * dy))
    base.GantryDetectorTilt = "0"
    base.RotationDirection = "CW"
    base.XRayTubeCurrent = int(g.integers(120, 400))
    base.ConvolutionKernel = "STANDARD"
    base.PatientPosition = "HFS"
    base.StudyInstanceUID = uid(seed, "phantom", case, "study")
    base.SeriesInstanceUID = uid(seed, "phantom", case, "ct-series")
    base.StudyID = "1"
    base.SeriesNumber = 1
    base.AcquisitionNumber = 1
    base.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    base.FrameOfReferenceUID = uid(seed, "phantom", case, "frame-of-reference")
    base.PositionReferenceIndicator = ""
    base.ImageComments = f"Synthetic CT phantom, voxlake seed {seed} case {case}; truth in seg.dcm"
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows, base.Columns = ny, nx
    base.PixelSpacing = [_ds(dy), _ds(dx)]
    base.BitsAllocated, base.BitsStored, base.HighBit, base.PixelRepresentation = 16, 12, 11, 0
    base.WindowCenter, base.WindowWidth = "40", "400"
    base.WindowCenterWidthExplanation = "ABDOMEN"
    base.RescaleIntercept, base.RescaleSlope, base.RescaleType = str(_INTERCEPT), "1", "HU"
    base.BurnedInAnnotation = "NO"
    base.LossyImageCompression = "00"
    headers = []
    for k in range(nz):
        ds = copy.deepcopy(base)
        number = nz - k  # numbered head to feet, the order of a craniocaudal scan
        ds.SOPInstanceUID = uid(seed, "phantom", case, "ct", number)
        ds.InstanceNumber = number
        z = p.origin[2] + k * dz
        ds.ImagePositionPatient = [_ds(p.origin[0]), _ds(p.origin[1]), _ds(z)]
        ds.SliceLocation = _ds(z)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = transfer_syntax
        meta.ImplementationClassUID = UID_ROOT + "4.2"
        meta.ImplementationVersionName = "VOXLAKE_010"
        ds.file_meta = meta
        headers.append(ds)
    return headers


def _write_case(p: Phantom, directory: Path, transfer_syntax: str, segmentation_type: str,
                t0: float) -> PhantomCase:
    """Write the CT slices, then the SEG from their headers, the NIfTI label map and labels.json."""
    from pydicom import dcmwrite
    from pydicom.uid import UID

    ct_dir = directory / "ct"
    ct_dir.mkdir(parents=True, exist_ok=True)
    headers = _ct_headers(p, transfer_syntax)
    files = []
    compressed = UID(transfer_syntax).is_compressed
    for k, ds in enumerate(headers):
        stored = (p.hu[k].astype(np.int32) - _INTERCEPT).astype(np.uint16)
        if compressed:
            ds.compress(transfer_syntax, stored, generate_instance_uid=False)  # pydicom would draw a new UID
        else:
            ds.PixelData = stored.tobytes()
        path = ct_dir / f"{ds.InstanceNumber:04d}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        del ds.PixelData  # highdicom needs the headers only
        files.append(path)
    for stale in set(ct_dir.glob("*.dcm")) - set(files):  # from an earlier run with more slices
        stale.unlink()
    seg = _segmentation(p, headers, transfer_syntax, segmentation_type)
    seg_path = directory / "seg.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    nifti_path = directory / "labels.nii.gz"
    _write_nifti(p, nifti_path)
    labels_path = directory / "labels.json"
    labels_path.write_text(json.dumps(_labels_json(p, headers[0], seg), indent=2) + "\n")
    return PhantomCase(p.case, directory, tuple(sorted(files)), seg_path, nifti_path, labels_path, p.shape,
                       p.spacing, p.phase, dict(p.organ_centres), dict(p.organ_volumes_ml),  # dicts pickle
                       time.perf_counter() - t0)


def _segmentation(p: Phantom, headers: list[Any], transfer_syntax: str, segmentation_type: str) -> Any:
    """The SEG of the label map, one coded segment per organ, with every clock and random value replaced."""
    import highdicom as hd

    seed, case = p.seed, p.case
    algorithm = hd.AlgorithmIdentificationSequence(  # CID 7162: the labels are rasterised shape models
        name=MODEL, version=VERSION, family=Code("123111", "DCM", "Deformable Models"),
        parameters={"seed": str(seed), "case": str(case)})
    descriptions = []
    for o in ORGANS.values():
        desc = hd.seg.SegmentDescription(
            segment_number=o.label, segment_label=o.name, segmented_property_category=o.category,
            segmented_property_type=o.property_type, algorithm_type="AUTOMATIC",
            algorithm_identification=algorithm, tracking_uid=uid(seed, "phantom", case, "segment", o.label),
            tracking_id=o.name, display_color=hd.color.CIELabColor.from_rgb(*o.colour))
        if o.modifier is not None:
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(o.modifier.value, o.modifier.scheme_designator, o.modifier.meaning)]
        descriptions.append(desc)
    seg_syntax = transfer_syntax
    if segmentation_type == "BINARY" and transfer_syntax in (RLELossless, JPEGLSLossless):
        seg_syntax = ExplicitVRLittleEndian  # of the compressed syntaxes only JPEG 2000 takes 1-bit frames
    seg = hd.seg.Segmentation(
        source_images=headers, pixel_array=p.labels, segmentation_type=segmentation_type,
        segment_descriptions=descriptions, series_instance_uid=uid(seed, "phantom", case, "seg-series"),
        series_number=2, sop_instance_uid=uid(seed, "phantom", case, "seg"), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=MODEL, software_versions=VERSION,
        device_serial_number="0", content_description="Ground-truth organ labels of a synthetic CT phantom",
        content_label="ORGAN_TRUTH", content_creator_name="voxlake^phantom", series_description="ORGAN TRUTH",
        transfer_syntax_uid=seg_syntax, content_date=headers[0].ContentDate,
        content_time=headers[0].ContentTime)
    # highdicom stamps the clock and a random dimension organisation UID: replace both.
    seg.InstanceCreationDate, seg.InstanceCreationTime = headers[0].ContentDate, headers[0].ContentTime
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = headers[0].ContentDate + headers[0].ContentTime
    random_uids = [item.DimensionOrganizationUID for item in seg.get("DimensionOrganizationSequence", [])]
    for i, old in enumerate(random_uids):
        _replace_uid(seg, old, uid(seed, "phantom", case, "dimension-organization", i))
    return seg


def _replace_uid(ds: Any, old: str, new: str) -> None:
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.value == old:
            elem.value = new


def _write_nifti(p: Phantom, path: Path) -> None:
    import nibabel as nib

    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine = lps_to_ras @ p.affine[:, [2, 1, 0, 3]]  # NIfTI axes are (column, row, slice)
    image = nib.Nifti1Image(p.labels.transpose(2, 1, 0), affine)
    image.header.set_xyzt_units("mm")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    image.header["descrip"] = b"voxlake phantom organ labels"
    nib.save(image, path)


def _labels_json(p: Phantom, ct: Any, seg: Any) -> dict[str, Any]:
    return {
        "labels": {"0": {"name": "background"}} | {
            str(o.label): {"name": o.name, **o.codes(), "hu": {ph.value: list(o.hu[ph]) for ph in Phase}}
            for o in ORGANS.values()},
        "case": {
            "seed": p.seed, "case": p.case, "phase": p.phase.value,
            "shape": list(p.shape), "spacing": list(p.spacing), "origin": list(p.origin),
            "direction": np.asarray(p.direction).tolist(),
            "organ_centres_lps_mm": {k: [round(v, 3) for v in c] for k, c in p.organ_centres.items()},
            "organ_volumes_ml": {k: round(v, 3) for k, v in p.organ_volumes_ml.items()},
            "hu_means": {k: round(v, 1) for k, v in p.hu_means.items()},
            "noise_sd": round(p.noise_sd, 2),
            "StudyInstanceUID": ct.StudyInstanceUID, "SeriesInstanceUID": ct.SeriesInstanceUID,
            "FrameOfReferenceUID": ct.FrameOfReferenceUID,
            "segmentation": {"SeriesInstanceUID": seg.SeriesInstanceUID,
                             "SOPInstanceUID": seg.SOPInstanceUID},
        },
    }
