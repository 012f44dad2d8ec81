import math

import pytest
import torch

from model import geometry as g

torch.manual_seed(0)


def random_rotations(n: int) -> torch.Tensor:
    return g.axis_angle_to_matrix(torch.randn(n, 3, dtype=torch.float64) * 1.2)


def test_axis_angle_round_trip():
    aa = torch.randn(500, 3, dtype=torch.float64)
    aa = aa / aa.norm(dim=-1, keepdim=True) * torch.rand(500, 1, dtype=torch.float64) * 3.0  # angles < π
    back = g.matrix_to_axis_angle(g.axis_angle_to_matrix(aa))
    assert torch.allclose(back, aa, atol=1e-5)
    tiny = torch.tensor([[1e-9, -2e-9, 3e-9]], dtype=torch.float64)
    assert torch.allclose(g.matrix_to_axis_angle(g.axis_angle_to_matrix(tiny)), tiny, atol=1e-12)


def test_matrices_are_rotations_and_match_closed_form():
    r = random_rotations(100)
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(r @ r.transpose(-1, -2), eye.expand_as(r), atol=1e-10)
    assert torch.allclose(torch.linalg.det(r), torch.ones(100, dtype=torch.float64), atol=1e-10)
    rz = g.axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))
    assert torch.allclose(rz @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0.0, 1, 0], dtype=torch.float64), atol=1e-12)


def test_6d_quaternion_euler_round_trips():
    r = random_rotations(200)
    assert torch.allclose(g.rotation_6d_to_matrix(g.matrix_to_rotation_6d(r)), r, atol=1e-5)
    assert torch.allclose(g.quaternion_to_matrix(g.matrix_to_quaternion(r)), r, atol=1e-5)
    ypr = (torch.rand(200, 3, dtype=torch.float64) - 0.5) * torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(g.matrix_to_euler(g.euler_to_matrix(*ypr.unbind(-1))), ypr, atol=1e-5)


def _scene():
    yaw, pitch, roll = torch.tensor([0.4, -0.3]), torch.tensor([0.1, 0.2]), torch.tensor([0.05, -0.1])
    tm = g.look_at_transform(torch.tensor([9.3, 8.0]), g.euler_to_matrix(yaw, pitch, roll), torch.tensor([[0.1, -0.2, 0.0], [0.0, 0.1, 0.3]]))
    points = torch.randn(2, 50, 3) * 0.5
    return tm, points


def test_camera_conversion_projects_the_same_pixels_both_ways():
    tm, points = _scene()
    width = height = 512
    uv_p3d = g.project_points(points, tm, 12.0, width, height)
    uv_cv = g.project_points_opencv(points, g.transform_to_viewmat(tm), g.intrinsics(12.0, width, height, (2,)))
    assert torch.allclose(uv_p3d, uv_cv, atol=1e-3)
    assert torch.allclose(g.viewmat_to_transform(g.transform_to_viewmat(tm)), tm, atol=1e-6)


def test_camera_conventions_known_points():
    tm = g.look_at_transform(9.3)[None]
    k = g.intrinsics(12.0, 512, 512, (1,))
    assert k[0, 0, 0].item() == pytest.approx(12.0 * 256)
    # the world origin lands at the image centre; the subject's left (+x) on the image right; up is up
    pts = torch.tensor([[[0.0, 0, 0], [0.1, 0, 0], [0, 0.1, 0]]])
    uv = g.project_points(pts, tm, 12.0, 512, 512)[0]
    assert torch.allclose(uv[0], torch.tensor([256.0, 256.0]))
    assert uv[1, 0] > 256 and uv[2, 1] < 256
    assert uv[1, 0] - 256 == pytest.approx(12 * 256 * 0.1 / 9.3, rel=1e-5)
    assert torch.allclose(g.camera_center(tm), torch.tensor([[0.0, 0.0, 9.3]]), atol=1e-6)
    assert torch.allclose(g.camera_forward(tm), torch.tensor([[0.0, 0.0, -1.0]]))


def test_matches_pytorch3d_where_installed():
    p3d = pytest.importorskip("pytorch3d.renderer")
    tm, points = _scene()
    cams = p3d.PerspectiveCameras(focal_length=12.0, R=tm[:, :3, :3], T=tm[:, :3, 3], image_size=((512, 512),) * 2, in_ndc=True)
    screen = cams.transform_points_screen(points)[..., :2]
    # PyTorch3D puts pixel centres at integers, we at +0.5: at most half a pixel apart
    assert torch.allclose(screen, g.project_points(points, tm, 12.0, 512, 512), atol=0.51)
