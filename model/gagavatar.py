"""The GAGAvatar network (docs/released_model.md, Architecture): one source image → cached Gaussians → renders per driving frame.

Two steps, so reenactment reconstructs once and renders many times:

- :meth:`GAGAvatar.reconstruct`: source image + source camera → :class:`AvatarCache` (every
  Gaussian attribute of both branches, the lifted plane points, the view-direction encoding —
  nothing that depends on the driving frame);
- :meth:`GAGAvatar.render`: cache + driving FLAME vertices (×5) + target camera →
  :class:`AvatarOutput` (the 32-channel splat, its RGB channels, the StyleUNet output).

``state_dict()`` keys equal the released checkpoint's (docs/released_model.md, Checkpoint layout), minus ``percep_loss.*``:
the network owns neither its loss, nor its perceptual network, nor FLAME.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

import torch
from torch import nn

from model.config import CameraConfig, ModelConfig, RasterizerConfig
from model.dinov2 import load_dinov2_state_dict
from model.dpt import ImageEncoder, resize_antialiased
from model.gaussian_heads import (
    ConvGaussianHead,
    GaussianAttributes,
    HarmonicEmbedding,
    MLPGaussianHead,
    lifting_plane,
)
from model.geometry import intrinsics, transform_to_viewmat
from model.rasterizer import CovarianceFromQuatScale, RenderOutput, render_gaussians
from model.style_unet import StyleUNet


def convs_channels_last_(module: nn.Module) -> nn.Module:
    """Convolution weights of ``module`` in channels-last (NHWC) memory, in place (the same
    Parameter objects; values, shapes and state-dict keys unchanged). cuDNN's bf16 kernels are
    NHWC: with NCHW weights and activations every convolution, forward and backward, pays for
    layout conversions. StyleGAN's modulated weights [1,out,in,k,k] get NHWC strides for the
    [out,in,k,k] slice the convolution reads; other parameters (biases [1,C,1,1], constants)
    are left alone."""
    from model.style_unet import ModulatedConv2d

    with torch.no_grad():
        for m in module.modules():
            w = getattr(m, "weight", None)
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and w is not None and w.dim() == 4:
                w.data = w.data.contiguous(memory_format=torch.channels_last)
            elif isinstance(m, ModulatedConv2d):
                w.data = w.data[0].contiguous(memory_format=torch.channels_last).unsqueeze(0)
    return module


@dataclass
class AvatarCache:
    """Everything :meth:`GAGAvatar.render` needs besides the driving frame. B = batch,
    V = FLAME vertices (5,023), P = plane points (S²), L = lifted points (2P, or P one-plane)."""

    plane_points: torch.Tensor  # [B,P,3] the unlifted plane through the head centre
    view_dir: torch.Tensor  # [B,3] source optical axis v (world)
    dir_encoding: torch.Tensor  # [B,D] harmonic encoding of v (D = 27)
    global_feature: torch.Tensor  # [B,C] DINOv2 patch token 0 of the last block
    expression: GaussianAttributes  # [B,V,·] expression Gaussians (positions come per frame)
    lifted_points: torch.Tensor  # [B,L,3] plane-Gaussian centres, [plane 0 | plane 1]
    lifted: GaussianAttributes  # [B,L,·] plane-Gaussian attributes, same order

    def detach(self) -> AvatarCache:
        """A copy cut from the autograd graph (for reenactment)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, GaussianAttributes):
                v = GaussianAttributes(**{k.name: getattr(v, k.name).detach() for k in fields(v)})
            else:
                v = v.detach()
            out[f.name] = v
        return AvatarCache(**out)


@dataclass
class AvatarOutput:
    """What :meth:`GAGAvatar.render` returns (H = W = ``camera.image_size``)."""

    coarse: torch.Tensor  # [B,3,H,W] splat channels 0–2 (not clamped)
    refined: torch.Tensor  # [B,3,H,W] StyleUNet output in (0,1); the coarse image without renderer
    features: torch.Tensor  # [B,C,H,W] the whole splat, C = gaussian_channels
    alpha: torch.Tensor | None  # [B,1,H,W] accumulated opacity (None from backends without it)
    lifted_points: torch.Tensor  # [B,L,3] every plane-Gaussian centre (lifting loss)
    depth: torch.Tensor | None = None  # [B,1,H,W] when the rasterizer renders depth


class GAGAvatar(nn.Module):
    """GAGAvatar (docs/released_model.md, Architecture). Gaussians are merged as [expression | plane 0 | plane 1] and splatted
    by :func:`model.rasterizer.render_gaussians` into ``gaussian_channels`` channels on a black
    background; with ``expression.rotation_norm == "official"`` covariances are built from the raw
    (non-unit) quaternions, as the released rasterizer does.

    Ablations (config switches): ``lifting="one_plane"`` (one head ``gs_generator_l0`` lifting
    towards ``one_plane_side``; no ``gs_generator_l1``), ``expression.global_feature=False``
    (the MLP sees only ``head_base``), ``renderer.enabled=False`` (no ``upsampler``; refined is
    the coarse image).
    """

    def __init__(self, model: ModelConfig | None = None, camera: CameraConfig | None = None,
                 rasterizer: RasterizerConfig | None = None) -> None:
        super().__init__()
        model = model or ModelConfig()
        self.config = model
        self.camera = camera or CameraConfig()
        self.rasterizer = rasterizer or RasterizerConfig()
        C = model.gaussian_channels
        if C < 3:
            raise ValueError(f"gaussian_channels must be ≥ 3 (0–2 are RGB), got {C}")
        self.base_model = ImageEncoder(model.backbone, model.decoder)
        if model.backbone.weights:
            self.base_model.dino_model.load_state_dict(load_dinov2_state_dict(model.backbone.weights))
        self.harmo_encoder = HarmonicEmbedding(model.harmonic_functions)
        # the released rasterizer builds R from the raw quaternion: the expression rotations,
        # normalised over vertices, are far from unit length (docs/released_model.md, Quirks)
        self.covariance = CovarianceFromQuatScale(normalize=model.expression.rotation_norm != "official")
        dir_dim = self.harmo_encoder.output_dim(3)
        exp = model.expression
        self.head_base = nn.Parameter(torch.randn(model.num_vertices, exp.embed_dim))
        mlp_in = exp.embed_dim + (model.backbone.embed_dim if exp.global_feature else 0)
        self.gs_generator_g = MLPGaussianHead(
            mlp_in, exp.hidden_dim, dir_dim, model.head_hidden_dim, C, model.max_scale, exp.rotation_norm
        )

        def conv_head() -> ConvGaussianHead:
            return ConvGaussianHead(
                model.decoder.feature_dim, dir_dim, model.head_hidden_dim, C, model.max_scale,
                official_color_quirk=model.plane_color_activation == "official",
            )

        self.gs_generator_l0 = conv_head()
        self.gs_generator_l1 = conv_head() if model.lifting == "dual" else None
        self.upsampler = (
            StyleUNet(C, self.camera.image_size, model.renderer) if model.renderer.enabled else None
        )

    @property
    def num_gaussians(self) -> int:
        planes = 2 if self.gs_generator_l1 is not None else 1
        return self.config.num_vertices + planes * self.config.plane_size**2

    # ------------------------------------------------------------------ reconstruction

    def reconstruct(self, source_image: torch.Tensor, source_transform: torch.Tensor) -> AvatarCache:
        """source_image [B,3,H,W] in [0,1] (resized, antialiased, to the backbone input size),
        source_transform [B,3,4] tracker [R|T] → :class:`AvatarCache`."""
        cfg = self.config
        size = cfg.backbone.input_size
        images = resize_antialiased(source_image, size, size)
        local, global_feature = self.base_model(images, cfg.plane_size)
        plane_points, view_dir = lifting_plane(source_transform, cfg.plane_size, self.camera.focal)
        dir_encoding = self.harmo_encoder(view_dir)

        B = source_image.shape[0]
        vertex_inputs = self.head_base[None].expand(B, -1, -1)
        if cfg.expression.global_feature:
            g = global_feature[:, None].expand(-1, cfg.num_vertices, -1)
            vertex_inputs = torch.cat([vertex_inputs, g.to(vertex_inputs.dtype)], dim=-1)
        expression = self.gs_generator_g(vertex_inputs, dir_encoding)

        attrs0, t0 = self.gs_generator_l0(local, dir_encoding)
        v = view_dir[:, None]
        if self.gs_generator_l1 is not None:
            attrs1, t1 = self.gs_generator_l1(local, dir_encoding)
            # plane 0 is pushed away from the camera (back of the head), plane 1 pulled towards it
            lifted_points = torch.cat([plane_points + t0 * v, plane_points - t1 * v], dim=1)
            lifted = GaussianAttributes.cat([attrs0, attrs1])
        else:
            sign = -1.0 if cfg.one_plane_side == "front" else 1.0
            lifted_points, lifted = plane_points + sign * t0 * v, attrs0
        return AvatarCache(
            plane_points=plane_points, view_dir=view_dir, dir_encoding=dir_encoding,
            global_feature=global_feature, expression=expression,
            lifted_points=lifted_points, lifted=lifted,
        )

    # ------------------------------------------------------------------ rendering

    def splat(self, cache: AvatarCache, expression_vertices: torch.Tensor,
              target_transform: torch.Tensor, render_depth: bool | None = None) -> RenderOutput:
        """Rasterize [expression | lifted] Gaussians seen from ``target_transform`` [B,3,4];
        returns the rasterizer's RenderOutput (float32, outside autocast). ``render_depth``
        overrides ``rasterizer.render_depth`` (training needs no depth: one channel less)."""
        H = W = self.camera.image_size
        B = expression_vertices.shape[0]
        attrs = GaussianAttributes.cat([cache.expression, cache.lifted])
        device = expression_vertices.device
        with torch.autocast(device_type=device.type, enabled=False):
            means = torch.cat([expression_vertices.float(), cache.lifted_points.float()], dim=1)
            cov = self.covariance(attrs.rotations.float(), attrs.scales.float())
            viewmats = transform_to_viewmat(target_transform.float())
            Ks = intrinsics(self.camera.focal, W, H, (B,), dtype=torch.float32, device=device)
            config = self.rasterizer
            if render_depth is not None and render_depth != config.render_depth:
                config = dataclasses.replace(config, render_depth=render_depth)
            return render_gaussians(
                means, None, None, attrs.opacities.float(), attrs.colors.float(), viewmats, Ks, W, H,
                covariances=cov, config=config,
            )

    def render(self, cache: AvatarCache, expression_vertices: torch.Tensor,
               target_transform: torch.Tensor, render_depth: bool | None = None) -> AvatarOutput:
        """cache from :meth:`reconstruct`; expression_vertices [B,V,3] FLAME (×5) vertices of the
        driving expression; target_transform [B,3,4] → :class:`AvatarOutput` (``render_depth``:
        see :meth:`splat`)."""
        if expression_vertices.shape[1] != self.config.num_vertices:
            raise ValueError(f"expected {self.config.num_vertices} expression vertices, got {expression_vertices.shape[1]}")
        out = self.splat(cache, expression_vertices, target_transform, render_depth)
        features = out.image
        coarse = features[:, :3]
        refined = self.upsampler(features) if self.upsampler is not None else coarse
        return AvatarOutput(
            coarse=coarse, refined=refined, features=features, alpha=out.alpha,
            lifted_points=cache.lifted_points, depth=out.depth,
        )

    def forward(self, source_image: torch.Tensor, source_transform: torch.Tensor,
                target_vertices: torch.Tensor, target_transform: torch.Tensor,
                render_depth: bool | None = None) -> AvatarOutput:
        """Training path: ``render(reconstruct(source_image, source_transform), target_vertices,
        target_transform, render_depth)``. Shapes as in those two methods."""
        return self.render(self.reconstruct(source_image, source_transform), target_vertices, target_transform,
                           render_depth)
