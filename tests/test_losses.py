"""CPU tests of the training losses and the perceptual networks."""

from __future__ import annotations

import dataclasses
import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from model.config import LossConfig
from model.gagavatar import AvatarOutput
from model.losses import GAGAvatarLoss, crop_boxes, expand_bbox, nearest_sq_distances, ssim
from model.perceptual import (
    LPIPS,
    AlexNetFeatures,
    FacePerceptualLoss,
    VGGFaceFeatures,
    alexnet_state_dict,
    build_alexnet,
    build_perceptual,
    lpips_weights_path,
    vggface_state_dict,
)

HAS_LPIPS = importlib.util.find_spec("lpips") is not None
EXACT = "donot_use_mm_for_euclid_dist"  # the reference: no |a|²−2ab+|b|² cancellation


def test_lifting_distance_equals_brute_force_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    vertices = torch.randn(2, 53, 3, generator=g) * 0.5
    points = (torch.randn(2, 301, 3, generator=g) * 0.6 + torch.tensor([0.0, 0.0, 8.0])).requires_grad_()
    points_ref = points.detach().clone().requires_grad_()
    # small chunks: several query and point chunks, ragged ends (53 = 3·16 + 5, 301 = 4·64 + 45)
    d = nearest_sq_distances(vertices + torch.tensor([0.0, 0.0, 8.0]), points, query_chunk=16, point_chunk=64)
    (d.mean() * 10).backward()
    ref = torch.cdist(vertices + torch.tensor([0.0, 0.0, 8.0]), points_ref, compute_mode=EXACT).pow(2).min(dim=-1).values
    (ref.mean() * 10).backward()
    torch.testing.assert_close(d, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(points.grad, points_ref.grad, atol=1e-6, rtol=1e-5)
    assert int((points.grad.abs().sum(-1) > 0).sum()) > 10  # only the nearest points get gradient


def test_lifting_loss_term_is_weighted_mean():
    g = torch.Generator().manual_seed(1)
    verts, pts = torch.randn(1, 40, 3, generator=g), torch.randn(1, 200, 3, generator=g)
    out = _output(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), pts)
    cfg = LossConfig(perceptual="none", image_weight=0, box_weight=0, lifting_weight=10.0, lifting_chunk_size=7,
                     lifting_point_chunk_size=33)
    terms = GAGAvatarLoss(cfg)(out, torch.rand(1, 3, 16, 16), torch.tensor([[0.1, 0.1, 0.9, 0.9]]), verts)
    expected = 10 * torch.cdist(verts, pts, compute_mode=EXACT).pow(2).min(-1).values.mean()
    torch.testing.assert_close(terms["lifting"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms["total"], terms["lifting"])


def test_expand_bbox_matches_released_rule():
    box = torch.tensor([[0.30, 0.20, 0.70, 0.60], [0.0, 0.0, 0.4, 0.4]])
    out = expand_bbox(box, 1.1)
    torch.testing.assert_close(out[0], torch.tensor([0.28, 0.18, 0.72, 0.62]))  # square side 0.44
    # near the border the square shrinks around its centre (0.2, 0.2) to side 0.4
    torch.testing.assert_close(out[1], torch.tensor([0.0, 0.0, 0.4, 0.4]))


def test_crop_boxes_sample_the_box_bilinearly():
    H = W = 32
    xs = (torch.arange(W) + 0.5) / W
    ramp = xs.view(1, 1, 1, W).expand(2, 3, H, W).clone()  # value = normalised x of the pixel centre
    full = crop_boxes(ramp, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2), 32)
    torch.testing.assert_close(full, ramp)
    crop = crop_boxes(ramp, torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.5, 0.0, 1.0, 0.5]]), 16)
    expected0 = 0.25 + (torch.arange(16) + 0.5) / 16 * 0.5
    torch.testing.assert_close(crop[0, 0, 3], expected0, atol=1e-5, rtol=0)
    assert crop.shape == (2, 3, 16, 16)
    # differentiable w.r.t. the image
    img = torch.rand(1, 3, 8, 8, requires_grad=True)
    crop_boxes(img, torch.tensor([[0.1, 0.2, 0.6, 0.7]]), 12).sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0


def _output(coarse: torch.Tensor, refined: torch.Tensor, lifted: torch.Tensor) -> AvatarOutput:
    return AvatarOutput(coarse=coarse, refined=refined, features=coarse, alpha=None, lifted_points=lifted)


def test_image_and_box_terms_and_renderer_off_doubling():
    g = torch.Generator().manual_seed(2)
    gt, c, r = (torch.rand(2, 3, 24, 24, generator=g) for _ in range(3))
    bbox = torch.tensor([[0.2, 0.2, 0.8, 0.8], [0.1, 0.3, 0.6, 0.9]])
    verts, pts = torch.randn(2, 10, 3, generator=g), torch.randn(2, 30, 3, generator=g)
    cfg = LossConfig(perceptual="none", box_size=24, lifting_weight=0.0, ssim_weight=0.5)
    loss = GAGAvatarLoss(cfg)
    terms = loss(_output(c, r, pts), gt, bbox, verts)
    torch.testing.assert_close(terms["image"], 0.5 * ((c - gt).abs().mean() + (r - gt).abs().mean()))
    boxes = expand_bbox(bbox, 1.1)
    gc = crop_boxes(gt, boxes, 24)
    expected_box = 0.5 * ((crop_boxes(c, boxes, 24) - gc).abs().mean() + (crop_boxes(r, boxes, 24) - gc).abs().mean())
    torch.testing.assert_close(terms["box"], expected_box)
    torch.testing.assert_close(terms["ssim"], 0.5 * 0.5 * ((1 - ssim(c, gt)).mean() + (1 - ssim(r, gt)).mean()))
    assert set(terms) == {"image", "box", "perceptual", "lifting", "ssim", "total"}
    torch.testing.assert_close(terms["total"], terms["image"] + terms["box"] + terms["ssim"])
    # renderer off: refined *is* coarse; the terms equal those of two identical images
    same = loss(_output(c, c, pts), gt, bbox, verts)
    twin = loss(_output(c, c.clone(), pts), gt, bbox, verts)
    for k in ("image", "box", "ssim", "total"):
        torch.testing.assert_close(same[k], twin[k])


def test_ssim_is_one_for_identical_images():
    x = torch.rand(2, 3, 20, 20)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    assert float(ssim(x, torch.rand(2, 3, 20, 20)).max()) < 0.5


@pytest.mark.skipif(not HAS_LPIPS, reason="needs the lpips package's weight files (pip install --no-deps lpips)")
def test_lpips_loads_the_learned_linear_heads_and_is_zero_only_for_identical_images():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="RANDOM AlexNet"):
        alex = build_alexnet(None)
    net = LPIPS(alex)
    state = torch.load(lpips_weights_path(), map_location="cpu", weights_only=True)
    for k, ch in enumerate((64, 192, 384, 256, 256)):
        assert net.lins[k].weight.shape == (1, ch, 1, 1)
        torch.testing.assert_close(net.lins[k].weight, state[f"lin{k}.model.1.weight"])
    # a known value of lpips 0.1's released AlexNet heads
    assert math.isclose(float(net.lins[0].weight.sum()), 2.3495, abs_tol=1e-3)
    assert all(not p.requires_grad for p in net.parameters())
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    assert net(x, x).abs().max() == 0
    d = net(x, y)
    assert d.shape == (2,) and float(d.min()) > 0
    # gradients flow to the images, not to the frozen network
    x.requires_grad_()
    net(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_alexnet_weights_load_from_torchvision_lpips_and_released_layouts(tmp_path):
    torch.manual_seed(0)
    ref = AlexNetFeatures()
    tv = {f"features.{i}.{p}": t for i in (0, 3, 6, 8, 10) for p, t in ref.features[i].state_dict().items()}
    tv["classifier.1.weight"] = torch.zeros(4096, 9216)
    torch.save(tv, tmp_path / "alexnet-owt.pth")
    slices = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    lp = {f"net.slice{slices[i]}.{i}.{p}": t for i in slices for p, t in ref.features[i].state_dict().items()}
    lp["lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)
    torch.save(lp, tmp_path / "lpips_full.pth")
    released = {f"percep_loss.{k}": v for k, v in lp.items() if k.startswith("net.")}
    released["head_base"] = torch.zeros(5023, 256)
    torch.save({"model": released, "meta_cfg": {}}, tmp_path / "GAGAvatar.pt")
    x = torch.rand(1, 3, 67, 67)
    for name in ("alexnet-owt.pth", "lpips_full.pth", "GAGAvatar.pt"):
        net = build_alexnet(tmp_path / name)
        assert alexnet_state_dict(tmp_path / name).keys() == {k for k in tv if k.startswith("features.")}
        for a, b in zip(net(x), ref(x)):
            torch.testing.assert_close(a, b)
    assert [t.shape[1] for t in ref(x)] == [64, 192, 384, 256, 256]


def test_official_face_perceptual_loss(tmp_path):
    torch.manual_seed(0)
    vgg = VGGFaceFeatures()
    dag = {}
    for idx, name in {0: "conv1_1", 2: "conv1_2", 5: "conv2_1", 7: "conv2_2", 10: "conv3_1", 12: "conv3_2",
                      14: "conv3_3", 17: "conv4_1", 19: "conv4_2", 21: "conv4_3", 24: "conv5_1"}.items():
        dag[f"{name}.weight"] = vgg.features[idx].weight.detach().clone()
        dag[f"{name}.bias"] = vgg.features[idx].bias.detach().clone()
    torch.save(dag, tmp_path / "vgg_face_dag.pth")
    assert set(vggface_state_dict(tmp_path / "vgg_face_dag.pth")) == set(vgg.state_dict())
    with pytest.warns(UserWarning):
        loss = FacePerceptualLoss(build_alexnet(None), vgg)
    x, y = torch.rand(2, 3, 48, 48), torch.rand(2, 3, 48, 48)
    assert loss(x, x).abs().max() == 0 and float(loss(x, y).min()) > 0
    # the AlexNet part alone, written out: Σ_l w_l · mean_hw Σ_c |n(a) − n(b)|
    alex_only = FacePerceptualLoss(loss.net)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    fa, fb = loss.net((x - mean) / std), loss.net((y - mean) / std)
    expected = sum(w * (F.normalize(a, dim=1, eps=0) - F.normalize(b, dim=1, eps=0)).abs().sum(1).mean((1, 2))
                   for w, a, b in zip((0.1, 0.1, 1, 1, 1), fa, fb))
    torch.testing.assert_close(alex_only(x, y), expected, atol=1e-5, rtol=1e-4)
    cfg = dataclasses.replace(LossConfig(), perceptual="official", vggface_weights=str(tmp_path / "vgg_face_dag.pth"))
    with pytest.warns(UserWarning):
        built = build_perceptual(cfg)
    assert isinstance(built, FacePerceptualLoss) and built.vggface is not None
    assert build_perceptual(dataclasses.replace(cfg, perceptual="none")) is None


def test_fused_nearest_search_block_equals_brute_force():
    """The broadcast form that CUDA compiles into one reduction picks the same neighbours."""
    from model.losses import _block_min

    torch.manual_seed(1)
    q, p = torch.randn(2, 50, 3), torch.randn(2, 700, 3)
    _, idx = _block_min(q, p, p.pow(2).sum(-1))
    assert torch.equal(idx, torch.cdist(q, p).argmin(-1))


def test_nearest_search_is_named_and_falls_back_to_chunks_on_cpu():
    torch.manual_seed(2)
    q, p = torch.randn(2, 40, 3), torch.randn(2, 300, 3)
    expected = nearest_sq_distances(q, p, search="chunked")
    for search in ("fused", "triton"):  # CUDA searches: on CPU the chunked one answers
        torch.testing.assert_close(nearest_sq_distances(q, p, search=search), expected, rtol=0, atol=0)
    torch.testing.assert_close(expected, torch.cdist(q, p).pow(2).min(-1).values, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown nearest-neighbour search 'faiss'"):
        nearest_sq_distances(q, p, search="faiss")
