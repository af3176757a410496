"""What a segmentation model is to voxlake: a name, a version, labels, and a function from a
:class:`~voxlake.ai.volume.Volume` to a label map of the same shape."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from voxlake.ai.volume import Volume


@runtime_checkable
class SegmentationModel(Protocol):
    """``labels`` maps each label value (1, 2, ...; 0 is background) to its name, e.g.
    ``{1: "body", 2: "lung"}``. ``predict`` returns an integer array of ``volume.shape`` holding
    those values (one label per voxel)."""

    name: str
    version: str
    labels: dict[int, str]

    def predict(self, volume: Volume) -> np.ndarray: ...
