"""CPU tests of the GAGAvatar network (smoke preset) and its official-checkpoint layout."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model.config import CameraConfig, LossConfig, ModelConfig, OptimConfig, RasterizerConfig
from model.dinov2 import DinoVisionTransformer, convert_dinov2_state_dict
from model.gagavatar import GAGAvatar
from model.gaussian_heads import ConvGaussianHead, HarmonicEmbedding, MLPGaussianHead, lifting_plane
from model.geometry import euler_to_matrix, look_at_transform, project_points
from model.losses import GAGAvatarLoss
from model.official_checkpoint import (
    CheckpointMismatch,
    export_official_state_dict,
    load_dinov2_weights,
    load_official,
)
from model.optim import build_optimizer
from pipeline.configtools import from_dict, load_preset_dict

# key/shape list of the released module (a copy of the shared spec's official_state_dict.txt)
OFFICIAL_KEYS = Path(__file__).parent / "data" / "official_state_dict.txt"


def smoke_configs() -> dict:
    """The smoke preset's model-side sections (read without the full experiment tree)."""
    data = load_preset_dict("smoke")
    classes = dict(model=ModelConfig, camera=CameraConfig, rasterizer=RasterizerConfig, loss=LossConfig,
                   optim=OptimConfig)
    return {k: from_dict(cls, data.get(k, {})) for k, cls in classes.items()}


CFG = smoke_configs()


def build(seed: int = 0, **model_overrides) -> GAGAvatar:
    torch.manual_seed(seed)
    model_cfg = dataclasses.replace(CFG["model"], **model_overrides)
    return GAGAvatar(model_cfg, CFG["camera"], dataclasses.replace(CFG["rasterizer"], backend="torch"))


def camera(yaw: float, pitch: float = 0.0, batch: int = 1) -> torch.Tensor:
    rot = euler_to_matrix(torch.full((batch,), yaw), torch.full((batch,), pitch), torch.zeros(batch))
    return look_at_transform(9.3, rot)


@pytest.fixture(scope="module")
def batch(flame):
    """Two samples: source images, cameras, and the driving FLAME vertices (×5)."""
    g = torch.Generator().manual_seed(0)
    B = 2
    expression = torch.randn(B, 100, generator=g) * 0.5
    jaw = torch.zeros(B, 6)
    jaw[:, 3] = torch.tensor([0.0, 0.2])
    with torch.no_grad():
        vertices = flame(torch.zeros(B, 300), expression, jaw).vertices
    return dict(
        source=torch.rand(B, 3, 64, 64, generator=g),
        source_T=torch.cat([camera(0.0), camera(0.2)]),
        vertices=vertices,
        target_T=torch.cat([camera(0.1, 0.05), camera(-0.2)]),
        target=torch.rand(B, 3, 64, 64, generator=g),
        bbox=torch.tensor([[0.2, 0.15, 0.8, 0.85], [0.25, 0.2, 0.75, 0.8]]),
    )


@pytest.fixture(scope="module")
def model() -> GAGAvatar:
    return build()


def test_output_shapes(model, batch):
    with torch.no_grad():
        cache = model.reconstruct(batch["source"], batch["source_T"])
        out = model.render(cache, batch["vertices"], batch["target_T"])
    P = CFG["model"].plane_size ** 2
    assert cache.plane_points.shape == (2, P, 3)
    assert cache.dir_encoding.shape == (2, 27)
    assert cache.global_feature.shape == (2, CFG["model"].backbone.embed_dim)
    assert cache.expression.colors.shape == (2, 5023, CFG["model"].gaussian_channels)
    assert cache.lifted.rotations.shape == (2, 2 * P, 4) and cache.lifted_points.shape == (2, 2 * P, 3)
    assert out.coarse.shape == out.refined.shape == (2, 3, 64, 64)
    assert out.features.shape == (2, CFG["model"].gaussian_channels, 64, 64)
    assert out.alpha.shape == (2, 1, 64, 64)
    assert model.num_gaussians == 5023 + 2 * P
    assert torch.equal(out.coarse, out.features[:, :3])
    assert 0 < float(out.refined.min()) and float(out.refined.max()) < 1  # StyleUNet ends in a sigmoid
    # the head is in view: a good share of the image is covered
    assert float(out.alpha.mean()) > 0.3


def test_gradients_reach_every_trainable_parameter_and_not_the_backbone(batch):
    model = build(seed=1, renderer=dataclasses.replace(CFG["model"].renderer, noise=True))
    model.train()
    loss = GAGAvatarLoss(CFG["loss"])
    out = model(batch["source"], batch["source_T"], batch["vertices"], batch["target_T"])
    terms = loss(out, batch["target"], batch["bbox"], batch["vertices"])
    assert float(terms["lifting"].detach()) > 0
    terms["total"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert no_grad == []
    backbone = list(model.base_model.dino_model.parameters())
    assert backbone and all(not p.requires_grad and p.grad is None for p in backbone)
    assert not model.base_model.dino_model.training  # frozen: stays in eval mode under .train()
    # unused-by-design parameters exist (checkpoint keys) but are frozen, so DDP sees no unused ones
    frozen_extra = {n for n, p in model.named_parameters() if not p.requires_grad and "dino_model" not in n}
    assert any(n.startswith("base_model.refinenet.0.resConfUnit1.") for n in frozen_extra)
    assert any(n.startswith("upsampler.toRGB.") for n in frozen_extra)


def test_cached_render_equals_forward_per_frame(model, batch, flame):
    """Reconstruct once, render two different driving frames; each equals a full forward."""
    other = flame(torch.zeros(2, 300), torch.randn(2, 100, generator=torch.Generator().manual_seed(5))).vertices
    frames = [(batch["vertices"], batch["target_T"]), (other.detach(), torch.cat([camera(0.3), camera(-0.1, 0.1)]))]
    with torch.no_grad():
        cache = model.reconstruct(batch["source"], batch["source_T"])
        renders = [model.render(cache, v, T) for v, T in frames]
        for (v, T), cached in zip(frames, renders):
            full = model(batch["source"], batch["source_T"], v, T)
            assert (cached.refined - full.refined).abs().max() < 1e-5
            assert (cached.features - full.features).abs().max() < 1e-5
    assert (renders[0].features - renders[1].features).abs().max() > 1e-3  # the two frames differ


def test_harmonic_embedding_matches_pytorch3d_layout():
    x = torch.tensor([[0.3, -0.7, 0.9]])
    enc = HarmonicEmbedding(4)(x)
    freqs = torch.tensor([1.0, 2.0, 4.0, 8.0])
    phases = (x[0][:, None] * freqs).flatten()  # d-major: x0·1, x0·2, x0·4, x0·8, x1·1, …
    expected = torch.cat([phases.sin(), phases.cos(), x[0]])
    assert enc.shape == (1, 27)
    torch.testing.assert_close(enc[0], expected, atol=1e-6, rtol=0)


def test_lifting_plane_matches_released_construction_and_spans_the_image():
    T = torch.cat([camera(0.3, -0.1), camera(-0.5, 0.2)])
    S, focal = 7, 12.0
    points, forward = lifting_plane(T, S, focal)
    for b in range(2):  # the released build_points_planes, written out with column vectors
        R, t = T[b, :, :3], T[b, :, 3:]
        x, y = torch.meshgrid(torch.linspace(1, -1, S), torch.linspace(1, -1, S), indexing="xy")
        d = torch.stack([x / focal, y / focal, torch.ones_like(x)], -1).reshape(-1, 3)
        rays = (R @ d.T).T
        v = R @ torch.tensor([0.0, 0.0, 1.0])
        origin = (-(R @ t))[:, 0]
        expected = origin + (origin * v).sum().abs() * rays
        torch.testing.assert_close(points[b], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(forward[b], v)
    # grid corners land on the image corners, row-major from the top-left
    px = project_points(points, T, focal, 64, 64)
    torch.testing.assert_close(px[:, 0], torch.zeros(2, 2), atol=1e-3, rtol=0)
    torch.testing.assert_close(px[:, S - 1], torch.tensor([[64.0, 0.0]] * 2), atol=1e-3, rtol=0)
    torch.testing.assert_close(px[:, -1], torch.full((2, 2), 64.0), atol=1e-3, rtol=0)
    # the plane passes through the world origin, perpendicular to the optical axis
    assert ((points * forward[:, None]).sum(-1)).abs().max() < 1e-4


def test_lifted_points_move_along_the_optical_axis(model, batch):
    with torch.no_grad():
        cache = model.reconstruct(batch["source"], batch["source_T"])
    P = cache.plane_points.shape[1]
    offset = cache.lifted_points - torch.cat([cache.plane_points, cache.plane_points], 1)
    along = (offset * cache.view_dir[:, None]).sum(-1)
    torch.testing.assert_close(offset, along[..., None] * cache.view_dir[:, None], atol=1e-5, rtol=0)
    assert float(along[:, :P].min()) >= 0 and float(along[:, :P].max()) <= 1  # plane 0: away from the camera
    assert float(along[:, P:].max()) <= 0 and float(along[:, P:].min()) >= -1  # plane 1: towards it


def test_conv_head_colour_quirk_and_mlp_rotation_norm():
    torch.manual_seed(0)
    feats, enc = torch.randn(1, 8, 6, 6) * 5, torch.randn(1, 27)
    quirk = ConvGaussianHead(8, 27, 16, 32, 0.05, official_color_quirk=True)
    with torch.no_grad():
        quirk.gaussian_conv[-1].bias.add_(3.0)  # push raw colours above 1 so the sigmoid is visible
        attrs, t = quirk(feats, enc)
    colors = attrs.colors.reshape(1, 6, 6, 32)  # row-major plane grid
    assert float(colors[:, :, :3].max()) < 1 and float(colors[:, :, 3:].max()) > 1  # pixel columns 0–2 only
    assert float(attrs.scales.max()) <= 0.05 and 0 <= float(t.min()) and float(t.max()) <= 1
    torch.testing.assert_close(attrs.rotations.norm(dim=-1), torch.ones(1, 36))
    rgb = ConvGaussianHead(8, 27, 16, 32, 0.05, official_color_quirk=False)
    rgb.load_state_dict(quirk.state_dict())
    with torch.no_grad():
        c = rgb(feats, enc)[0].colors
    assert float(c[..., :3].max()) < 1 and float(c[..., 3:].max()) > 1
    mlp = MLPGaussianHead(16, 16, 27, 8, 32, 0.05, rotation_norm="official")
    with torch.no_grad():
        rot = mlp(torch.randn(2, 50, 16), torch.randn(2, 27)).rotations
    # the released normalisation runs over the vertex axis: unit columns, short quaternions
    torch.testing.assert_close(rot.pow(2).sum(1), torch.ones(2, 4))
    assert float(rot.norm(dim=-1).max()) < 0.9


def test_dinov2_intermediate_layers_and_pos_embed_interpolation():
    cfg = dataclasses.replace(CFG["model"].backbone, input_size=98, pretrained_size=70)
    torch.manual_seed(0)
    vit = DinoVisionTransformer(cfg).eval()
    x = torch.randn(2, 3, 98, 98)
    with torch.no_grad():
        maps = vit.get_intermediate_layers(x, 4)
        # reference: run the blocks by hand with DINOv2's interpolation (scale factor with 0.1 offset)
        tokens = vit.patch_embed(x)
        grid = vit.pos_embed[:, 1:].reshape(1, 5, 5, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=(7.1 / 5, 7.1 / 5), mode="bicubic", align_corners=False)
        pos = torch.cat([vit.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 49, -1)], 1)
        h = torch.cat([vit.cls_token.expand(2, -1, -1), tokens], 1) + pos
        outs = []
        for blk in vit.blocks:
            h = blk(h)
            outs.append(vit.norm(h))
    assert len(maps) == 4 and all(m.shape == (2, cfg.embed_dim, 7, 7) for m in maps)
    for m, ref in zip(maps, outs[-4:]):
        torch.testing.assert_close(m.flatten(2).transpose(1, 2), ref[:, 1:], atol=1e-5, rtol=0)
    # the global feature is the top-left *patch* token (token 1), not the class token
    torch.testing.assert_close(maps[-1][:, :, 0, 0], outs[-1][:, 1])


def test_dinov2_weights_load_from_official_and_timm_layouts(tmp_path):
    model = build()
    vit = model.base_model.dino_model
    state = {k: torch.randn_like(v) for k, v in vit.state_dict().items()}
    torch.save(state, tmp_path / "official.pth")
    load_dinov2_weights(model, tmp_path / "official.pth")
    torch.testing.assert_close(vit.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])
    # timm: same names, no mask_token, a head; and the chunked "blocks.0.N" layout
    timm = {(re.sub(r"^blocks\.", "blocks.0.", k)): v + 1 for k, v in state.items() if k != "mask_token"}
    timm["head.weight"] = torch.zeros(3, 3)
    converted = convert_dinov2_state_dict(timm)
    assert set(converted) == set(state) and not converted["mask_token"].any()
    torch.save({"model": timm}, tmp_path / "timm.pth")
    load_dinov2_weights(model, tmp_path / "timm.pth")
    torch.testing.assert_close(vit.norm.weight, state["norm.weight"] + 1)
    torch.save({"blocks.0.norm1.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatch):
        load_dinov2_weights(model, tmp_path / "bad.pth")


def test_ablation_switches_change_the_computation(model, batch):
    args = (batch["source"], batch["source_T"], batch["vertices"], batch["target_T"])
    with torch.no_grad():
        base = model(*args)
        # one plane: half the lifted points, no gs_generator_l1 keys
        one = build(lifting="one_plane")
        assert not any(k.startswith("gs_generator_l1.") for k in one.state_dict())
        out_one = one(*args)
        assert out_one.lifted_points.shape[1] * 2 == base.lifted_points.shape[1]
        assert (out_one.features - base.features).abs().max() > 1e-3
        # w/o global feature: the MLP's first layer takes only the vertex embedding
        nog = build(expression=dataclasses.replace(CFG["model"].expression, global_feature=False))
        assert nog.gs_generator_g.feature_layers[0].in_features == CFG["model"].expression.embed_dim
        shared = {k: v for k, v in model.state_dict().items() if k != "gs_generator_g.feature_layers.0.weight"}
        nog.load_state_dict(shared, strict=False)
        nog.gs_generator_g.feature_layers[0].weight.copy_(
            model.gs_generator_g.feature_layers[0].weight[:, : CFG["model"].expression.embed_dim])
        out_nog = nog(*args)
        assert (out_nog.features - base.features).abs().max() > 1e-4
        # w/o neural renderer: no upsampler module, refined is the coarse image
        nor = build(renderer=dataclasses.replace(CFG["model"].renderer, enabled=False))
        assert nor.upsampler is None and not any(k.startswith("upsampler.") for k in nor.state_dict())
        nor.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("upsampler.")})
        out_nor = nor(*args)
        assert out_nor.refined is out_nor.coarse
        torch.testing.assert_close(out_nor.features, base.features)
        # w/o lifting loss: the lifting term is 0 and the total drops by exactly it
        full = GAGAvatarLoss(CFG["loss"])(base, batch["target"], batch["bbox"], batch["vertices"])
        nol = GAGAvatarLoss(dataclasses.replace(CFG["loss"], lifting_weight=0.0))(
            base, batch["target"], batch["bbox"], batch["vertices"])
    assert float(nol["lifting"]) == 0 and float(full["lifting"]) > 0
    assert math.isclose(float(full["total"] - nol["total"]), float(full["lifting"]), rel_tol=1e-5)


def test_optimizer_groups_and_schedule():
    model = build()
    optim_cfg = dataclasses.replace(OptimConfig(), decay_steps=10)
    opt, sched = build_optimizer(model, optim_cfg)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["default"]["lr"] == 1e-4 and groups["style"]["lr"] == 1e-5
    assert opt.defaults["betas"] == (0.0, 0.99)
    names = {id(p): n for n, p in model.named_parameters()}
    style = {names[id(p)] for p in groups["style"]["params"]}
    assert style and all("style_mlp" in n or "final_linear" in n for n in style)
    assert "upsampler.final_linear.weight" in style
    everything = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert everything == trainable  # frozen parameters (DINOv2, unused heads) are left out
    for _ in range(10):
        opt.step()
        sched.step()
    assert math.isclose(groups["default"]["lr"], 1e-5, rel_tol=1e-6)
    assert math.isclose(groups["style"]["lr"], 1e-6, rel_tol=1e-6)


def _official_shapes() -> dict[str, list[int]]:
    shapes = {}
    for line in OFFICIAL_KEYS.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _dtype = line.split("\t")
        shapes[key] = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
    return shapes


def test_paper_state_dict_has_the_official_layout_and_round_trips():
    torch.manual_seed(0)
    model = GAGAvatar(ModelConfig(), CameraConfig(), RasterizerConfig())
    exported = export_official_state_dict(model)
    assert len(exported) == 561 and sum(v.numel() for v in exported.values()) == 169_616_198
    assert list(exported["base_model.dino_model.pos_embed"].shape) == [1, 1370, 768]
    assert list(exported["upsampler.stylegan_decoder.noises.noise14"].shape) == [1, 1, 512, 512]
    official = _official_shapes()
    assert len(official) == 561
    assert sorted(set(official) - set(exported)) == [] and sorted(set(exported) - set(official)) == []
    wrong = {k: (official[k], list(v.shape)) for k, v in exported.items() if list(v.shape) != official[k]}
    assert wrong == {}
    # a released-style file: the state dict, the perceptual nets we skip, and meta_cfg
    state = {k: v.clone() for k, v in exported.items()}
    state["head_base"] += 1.0
    state["percep_loss.net.slice1.0.weight"] = torch.zeros(64, 3, 11, 11)
    loaded = load_official({"model": state, "meta_cfg": {"DATASET": {"POINT_PLANE_SIZE": 296}}}, model=model)
    assert loaded is model
    torch.testing.assert_close(model.head_base, state["head_base"])


def test_load_official_names_missing_and_unexpected_keys():
    model = build()
    state = export_official_state_dict(model)
    del state["gs_generator_l0.gaussian_conv.6.bias"]
    state["gs_generator_l2.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatch) as err:
        load_official({"model": state, "meta_cfg": {}}, model=model)
    assert "gs_generator_l0.gaussian_conv.6.bias" in str(err.value) and "gs_generator_l2.weight" in str(err.value)
    state = export_official_state_dict(model)
    state["head_base"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointMismatch, match="head_base"):
        load_official(state, model=model)


def test_load_official_builds_with_the_checkpoint_plane_size():
    model = build()
    state = export_official_state_dict(model)
    loaded = load_official({"model": state, "meta_cfg": {"DATASET": {"POINT_PLANE_SIZE": 24}}}, config=CFG["model"],
                           camera=CFG["camera"], rasterizer=CFG["rasterizer"])
    assert loaded.config.plane_size == 24
    torch.testing.assert_close(loaded.head_base, model.head_base)
