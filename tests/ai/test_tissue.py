"""The ``ct-tissue`` model on real CT.

The 134-slice CT (TCIA Pancreas-CT-CB_001) covers about 40 cm from the heart base to the pelvis of
an adult man, so: body 20-50 L (a torso section of about 800 cm² over 40 cm is about 32 L); lungs
only their bases, in the upper part of the volume, 0.5-5 L; bone (spine, pelvis, ribs) 0.5-3 L;
fat and muscle/soft tissue several litres each (5-25 L)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.ai.conftest import TOTALSEG
from tests.conftest import need
from voxlake.ai.model import SegmentationModel
from voxlake.ai.tissue import LABELS, CTTissueModel, tissue_masks


@pytest.fixture(scope="module")
def ct_labels(ct_volume) -> np.ndarray:
    return CTTissueModel().predict(ct_volume)


def _litres(labels: np.ndarray, value: int, volume) -> float:
    return float((labels == value).sum()) * volume.voxel_ml / 1000.0


def test_ct_tissue_is_a_segmentation_model_with_fixed_labels():
    model = CTTissueModel()
    assert isinstance(model, SegmentationModel)
    assert (model.name, model.version) == ("ct-tissue", "1")
    assert model.labels == {1: "body", 2: "lungs", 3: "bone", 4: "fat", 5: "muscle"}


def test_label_map_has_the_volume_shape_and_only_known_labels(ct_volume, ct_labels):
    assert ct_labels.shape == ct_volume.shape
    assert ct_labels.dtype == np.uint8
    assert set(np.unique(ct_labels)) <= {0, *LABELS}


def test_body_volume_of_the_abdominal_ct_is_plausible(ct_volume, ct_labels):
    body = float((ct_labels > 0).sum()) * ct_volume.voxel_ml / 1000.0
    assert 20.0 < body < 50.0


def test_lung_bases_are_found_in_the_upper_part_of_the_abdominal_ct(ct_volume, ct_labels):
    assert 0.5 < _litres(ct_labels, 2, ct_volume) < 5.0
    k = np.nonzero(ct_labels == 2)[0]
    # Slices ascend along +z (feet to head): the lungs lie in the top half, near the heart base.
    assert np.mean(k >= ct_volume.shape[0] // 2) > 0.95
    assert k.max() == ct_volume.shape[0] - 1


def test_bone_fat_and_muscle_volumes_are_plausible(ct_volume, ct_labels):
    assert 0.5 < _litres(ct_labels, 3, ct_volume) < 3.0
    assert 5.0 < _litres(ct_labels, 4, ct_volume) < 25.0
    assert 5.0 < _litres(ct_labels, 5, ct_volume) < 25.0


def test_the_ct_couch_and_outside_air_are_not_body(ct_volume, ct_labels):
    above = ct_volume.array > -500
    # The couch lies below the patient (rows near the bottom of the image): dense but not body.
    couch_rows = slice(420, 512)
    assert above[:, couch_rows].sum() > 10_000
    assert not ct_labels[:, couch_rows].any()
    assert not ct_labels[:, :, :5].any() and not ct_labels[:, :5].any()


def test_masks_are_disjoint_and_inside_the_body(ct_volume):
    masks = tissue_masks(ct_volume.array[90:110], ct_volume.spacing)
    classes = ["lungs", "bone", "fat", "muscle"]
    total = sum(masks[c].astype(np.int8) for c in classes)
    assert total.max() == 1
    for c in classes:
        assert not (masks[c] & ~masks["body"]).any()


def test_lungs_agree_with_totalsegmentator_on_its_torso_ct():
    """TotalSegmentator's own example: a torso CT (3 mm) with its 'fast' label map, where the
    lungs are the lobes (labels lung_*). Measured Dice 0.94 (122 vs 111 ml: lung bases)."""
    nib = pytest.importorskip("nibabel")
    ct_file = need(TOTALSEG / "example_ct.nii.gz")
    names = json.loads(need(TOTALSEG / "labels_total_v2.json").read_text())
    # NIfTI (x, y, z) → (slice, row, column) so that slices are axial.
    hu = np.asarray(nib.load(ct_file).dataobj).transpose(2, 1, 0).astype(np.float32)
    truth = np.asarray(nib.load(TOTALSEG / "example_seg_fast_force_split.nii.gz").dataobj).transpose(2, 1, 0)
    masks = tissue_masks(hu, (3.0, 3.0, 3.0))
    lungs = np.isin(truth, [int(k) for k, v in names.items() if v.startswith("lung_")])
    dice = 2 * (masks["lungs"] & lungs).sum() / (masks["lungs"].sum() + lungs.sum())
    assert dice > 0.85
    # Every organ TotalSegmentator found lies inside our body.
    assert (masks["body"] | (truth == 0)).all()
