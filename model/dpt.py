"""The DPT-style feature decoder (docs/released_model.md, Architecture) and the image encoder that puts it on DINOv2.

:class:`ImageEncoder` is the released ``base_model``: its state-dict keys are
``dino_model.*`` (the ViT) beside the decoder's own ``projects.{0..3}``,
``resize_layers.{0,1,3}`` (index 2 is an identity), ``layer_rn.{0..3}`` (no bias),
``refinenet.{0..3}.{resConfUnit1,resConfUnit2,out_conv}`` and ``output_conv``; it subclasses
:class:`DPTDecoder` so those keys sit at the top level, as in the official module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import BackboneConfig, DecoderConfig
from model.dinov2 import IMAGENET_MEAN, IMAGENET_STD, DinoVisionTransformer
from model.resize import bilinear_resize


def channels_last_like(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last memory when ``reference`` (4-D) is laid out that way, else ``x``:
    a concatenation of tensors of two layouts would come out in the default layout, and every
    convolution after it would pay for a conversion."""
    if reference.dim() == 4 and not reference.is_contiguous() and reference.is_contiguous(
            memory_format=torch.channels_last):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def resize_antialiased(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize with antialiasing (torchvision's tensor ``resize(antialias=True)``)."""
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x)))), 3×3 convs with bias, no normalisation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """Adds the refined skip (``resConfUnit1``; unused by the coarsest block, whose weights still
    exist in the checkpoint), refines (``resConfUnit2``), upsamples bilinearly with
    align_corners=True to ``size`` (×2 when None) and mixes with a 1×1 ``out_conv``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(channels, channels, 1)
        self.resConfUnit1 = ResidualConvUnit(channels)
        self.resConfUnit2 = ResidualConvUnit(channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                size: tuple[int, int] | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            size = (2 * x.shape[-2], 2 * x.shape[-1])
        x = bilinear_resize(x, size, align_corners=True)
        return self.out_conv(x)


class DPTDecoder(nn.Module):
    """Four ViT maps [B,C,g,g] → [B, feature_dim, 8g, 8g] (g = 37: 296²).

    Level i: 1×1 projection to ``reassemble_channels[i]``, resampled to 4g / 2g / g / ⌈g/2⌉
    (transposed conv ×4, transposed conv ×2, identity, 3×3 conv stride 2), the normalised input
    image resized (antialiased) to that size concatenated *in front* (+3 channels, no gradient),
    3×3 conv without bias to ``fusion_dim``. Fused coarse to fine, ×2, then a 3×3 output conv.
    """

    def __init__(self, in_dim: int, config: DecoderConfig) -> None:
        super().__init__()
        c = tuple(config.reassemble_channels)
        if len(c) != 4:
            raise ValueError(f"decoder.reassemble_channels needs 4 values, got {c}")
        hidden = config.fusion_dim
        self.projects = nn.ModuleList(nn.Conv2d(in_dim, ch, 1) for ch in c)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(c[0], c[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(c[1], c[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(c[3], c[3], kernel_size=3, stride=2, padding=1),
        ])
        self.layer_rn = nn.ModuleList(nn.Conv2d(ch + 3, hidden, 3, padding=1, bias=False) for ch in c)
        self.refinenet = nn.ModuleList(FeatureFusionBlock(hidden) for _ in range(4))
        # the coarsest block has no skip input: its resConfUnit1 exists (checkpoint keys) but is
        # never used, so it is frozen (DDP needs every trainable parameter to get a gradient)
        self.refinenet[0].resConfUnit1.requires_grad_(False)
        self.output_conv = nn.Conv2d(hidden, config.feature_dim, 3, padding=1)

    def decode(self, vit_maps: list[torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """vit_maps: 4 × [B,C,g,g]; images: [B,3,H,W] ImageNet-normalised → [B,F,8g,8g]."""
        images = images.detach()
        levels = []
        for i, fmap in enumerate(vit_maps):
            x = self.resize_layers[i](self.projects[i](fmap))
            guide = channels_last_like(resize_antialiased(images, x.shape[-2], x.shape[-1]).to(x.dtype), x)
            levels.append(self.layer_rn[i](torch.cat([guide, x], dim=1)))
        path = self.refinenet[0](levels[3], size=levels[2].shape[-2:])
        path = self.refinenet[1](path, levels[2], size=levels[1].shape[-2:])
        path = self.refinenet[2](path, levels[1], size=levels[0].shape[-2:])
        path = self.refinenet[3](path, levels[0])
        return self.output_conv(path)


class ImageEncoder(DPTDecoder):
    """The released ``base_model``: frozen DINOv2 + DPT decoder.

    ``forward(images [B,3,H,W] in [0,1], H = W = backbone.input_size)`` returns the local
    feature map [B, feature_dim, plane, plane] (bilinear, align_corners=True, when the decoder's
    8g differs from ``plane_size``) and the global feature [B, C]: token 0 of the last block's
    *patch* tokens after the final norm — the top-left patch, not the class token (docs/released_model.md, Architecture).
    """

    def __init__(self, backbone: BackboneConfig, decoder: DecoderConfig) -> None:
        super().__init__(backbone.embed_dim, decoder)
        self.dino_model = DinoVisionTransformer(backbone)
        self.frozen = backbone.frozen
        if self.frozen:
            self.dino_model.requires_grad_(False)
            self.dino_model.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        if self.frozen:
            self.dino_model.eval()  # a frozen backbone never switches to training behaviour
        return self

    def forward(self, images: torch.Tensor, plane_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        # a frozen ViT needs no activations kept for backward (its input needs no gradient)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            vit_maps = self.dino_model.get_intermediate_layers(images, 4)
        global_feature = vit_maps[-1][:, :, 0, 0]
        local = self.decode(vit_maps, images)
        if local.shape[-1] != plane_size or local.shape[-2] != plane_size:
            local = bilinear_resize(local, (plane_size, plane_size), align_corners=True)
        return local, global_feature
