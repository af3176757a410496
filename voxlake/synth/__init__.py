"""Synthetic DICOM with ground truth: cohorts, CT phantoms with organ labels, injected PHI with an
answer key, and header-realistic archives at scale.

Everything is deterministic for a given seed: random numbers come from ``numpy.random.Generator``
objects derived from the seed and a name (:func:`rng`), and UIDs from :func:`uid`, never from
the clock or the machine. Heavy imports (numpy, highdicom, nibabel, Pillow) happen inside the
generators, so ``import voxlake`` stays light; they come with ``pip install 'voxlake[synth]'``.
"""

from __future__ import annotations

import hashlib
from typing import Any

#: pydicom's registered root, which pydicom offers for generated UIDs.
UID_ROOT = "1.2.826.0.1.3680043.8.498."


def uid(seed: int, *parts: object) -> str:
    """A UID determined by the seed and the parts (e.g. ``uid(7, "study", 3)``): same inputs,
    same UID; different inputs, different UIDs (a 128-bit hash, as in PS3.5 B.2)."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return UID_ROOT + str(int.from_bytes(digest[:16], "big"))[: 64 - len(UID_ROOT)]


def rng(seed: int, *parts: object) -> Any:
    """A numpy Generator determined by the seed and the parts, independent of call order."""
    import numpy as np

    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))
