"""Surface meshes: marching cubes in patient mm, outward faces, binary STL round trip, on shapes whose
area and volume are known analytically."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("skimage")

from voxlake.ai.meshes import Mesh, MeshFormatError, read_stl, surface_mesh, write_stl

# voxel (k, j, i) → LPS: k along +z at 2.5 mm, j along +y at 0.8 mm, i along -x at 0.7 mm (a flip)
AFFINE = np.array([[0.0, 0.0, -0.7, 40.0], [0.0, 0.8, 0.0, -20.0], [2.5, 0.0, 0.0, -300.0], [0, 0, 0, 1]])


def _ellipsoid(shape: tuple[int, int, int], radii_mm: tuple[float, float, float]) -> np.ndarray:
    """Voxels whose centres lie inside an ellipsoid of semi-axes (z, y, x) mm about the grid centre."""
    spacing = (2.5, 0.8, 0.7)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    inside = sum(((g - (n - 1) / 2) * s / r) ** 2 for g, n, s, r in zip(grids, shape, spacing, radii_mm, strict=True))
    return inside <= 1.0


def _ellipsoid_area(a: float, b: float, c: float) -> float:
    p = 1.6075  # Knud Thomsen's approximation, within 1.1 %
    return 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)


def test_mesh_of_an_ellipsoid_has_its_analytic_volume_and_area():
    radii = (40.0, 30.0, 25.0)
    mesh = surface_mesh(_ellipsoid((40, 90, 90), radii), AFFINE)
    assert mesh.volume_ml == pytest.approx(4 / 3 * math.pi * np.prod(radii) / 1000, rel=0.03)
    assert mesh.surface_mm2 == pytest.approx(_ellipsoid_area(*radii), rel=0.03)


def test_mesh_without_smoothing_is_the_voxel_staircase_with_too_much_area():
    radii = (40.0, 30.0, 25.0)
    mesh = surface_mesh(_ellipsoid((40, 90, 90), radii), AFFINE, smooth=0)
    assert mesh.volume_ml == pytest.approx(4 / 3 * math.pi * np.prod(radii) / 1000, rel=0.03)
    assert 1.05 < mesh.surface_mm2 / _ellipsoid_area(*radii) < 1.25


def test_mesh_of_a_voxel_cube_is_a_box_half_a_voxel_beyond_the_outer_centres():
    mask = np.zeros((8, 20, 20), bool)
    mask[2:6, 5:15, 3:13] = True  # 4 x 10 x 10 voxels → 10 x 8 x 7 mm
    mesh = surface_mesh(mask, AFFINE, smooth=0)
    lo, hi = mesh.bbox_mm
    expected_lo = [40.0 - 0.7 * 12.5, -20.0 + 0.8 * 4.5, -300.0 + 2.5 * 1.5]
    expected_hi = [40.0 - 0.7 * 2.5, -20.0 + 0.8 * 14.5, -300.0 + 2.5 * 5.5]
    assert lo == pytest.approx(expected_lo, abs=1e-6) and hi == pytest.approx(expected_hi, abs=1e-6)
    # chamfered edges and corners make it a little smaller than the 10 x 8 x 7 mm box
    assert 0.85 * 0.56 < mesh.volume_ml < 0.56


def test_faces_point_outward_whatever_the_handedness_of_the_affine():
    mask = _ellipsoid((20, 40, 40), (20.0, 12.0, 10.0))
    for affine in (AFFINE, np.diag([0.7, 0.8, 2.5, 1.0])):
        mesh = surface_mesh(mask, affine)
        assert mesh.signed_volume_mm3 > 0
        t = mesh.triangles
        normals = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
        outward = np.einsum("ij,ij->i", normals, t.mean(axis=1) - mesh.vertices.mean(axis=0))
        assert (outward > 0).mean() > 0.95


def test_a_label_touching_the_volume_edge_still_gives_a_closed_surface():
    mask = np.ones((4, 10, 10), bool)
    mesh = surface_mesh(mask, np.diag([1.0, 1.0, 1.0, 1.0]), smooth=0)
    assert 0.85 * 0.4 < mesh.volume_ml < 0.4  # 4 x 10 x 10 mm³, chamfered


def test_step_two_is_close_to_full_resolution():
    mask = _ellipsoid((40, 90, 90), (40.0, 30.0, 25.0))
    full, coarse = surface_mesh(mask, AFFINE), surface_mesh(mask, AFFINE, step=2)
    assert len(coarse.faces) < len(full.faces) / 3
    assert coarse.volume_ml == pytest.approx(full.volume_ml, rel=0.05)


def test_step_two_without_smoothing_still_closes_a_label_at_the_volume_edge():
    for shape in ((5, 11, 9), (6, 10, 8)):
        coarse = surface_mesh(np.ones(shape, bool), np.eye(4), step=2, smooth=0)
        # closed: every edge is shared by exactly two faces
        edges = np.sort(coarse.faces[:, [[0, 1], [1, 2], [2, 0]]].reshape(-1, 2), axis=1)
        _, counts = np.unique(edges, axis=0, return_counts=True)
        assert len(coarse.faces) > 0 and set(counts.tolist()) == {2}


@pytest.mark.parametrize("offset", [0, 1])
def test_a_speck_between_the_coarse_grid_points_still_gets_a_surface_at_step_two(offset):
    """A weak model's stray voxels: at step 2 the grid may miss them, which must not fail the run."""
    mask = np.zeros((20, 20, 20), bool)
    mask[9 + offset:12 + offset, 9 + offset:12 + offset, 9 + offset:12 + offset] = True  # 3x3x3 voxels
    mesh = surface_mesh(mask, AFFINE, step=2)
    assert len(mesh.faces) > 0 and mesh.volume_ml > 0


def test_empty_mask_gives_an_empty_mesh():
    mesh = surface_mesh(np.zeros((3, 4, 5), bool), AFFINE)
    assert len(mesh.faces) == 0 and mesh.surface_mm2 == 0.0


def test_stl_parses_back_to_the_same_triangles_and_has_the_binary_size(tmp_path):
    mesh = surface_mesh(_ellipsoid((20, 40, 40), (20.0, 12.0, 10.0)), AFFINE)
    path = write_stl(mesh, tmp_path / "m.stl")
    assert path.stat().st_size == 84 + 50 * len(mesh.faces)
    back = read_stl(path)
    assert np.allclose(back.triangles, mesh.triangles, atol=1e-4)
    assert back.volume_ml == pytest.approx(mesh.volume_ml, rel=1e-5)
    normals = np.frombuffer(path.read_bytes()[84:], np.dtype([("n", "<f4", 3), ("v", "<f4", 9), ("a", "<u2")]))["n"]
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-4)


def test_truncated_stl_is_refused_naming_the_file(tmp_path):
    path = write_stl(Mesh(np.eye(3), np.array([[0, 1, 2]])), tmp_path / "t.stl")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(MeshFormatError, match=r"t\.stl"):
        read_stl(path)
