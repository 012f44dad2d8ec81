"""StyleUNet neural renderer (docs/released_model.md, Architecture): a UNet encoder/decoder whose bottleneck gives a style
code and whose decoder levels give SFT scale/shift maps for a StyleGAN2 generator
(GFPGAN-style "CSFT"). Output: sigmoid RGB at the input size.

Released key names: ``conv_body_first``, ``conv_body_down.N.{conv1,conv2,skip}``,
``final_conv``, ``conv_body_up.N.*``, ``toRGB.N`` (present, never used), ``final_linear``,
``condition_scale/condition_shift.N.{0,2}`` and ``stylegan_decoder.{style_mlp.{1,3,…},
constant_input.weight, style_conv1, to_rgb1, style_convs.N, to_rgbs.N, noises.noiseN}``.

Widths for an output of size S at resolution r: UNet min(max_channels, base_channels·S/r)
(paper: 16 at 512 … 256 at ≤32), StyleGAN decoder twice that (32 … 512) — the SFT maps of a
UNet level (2× its width) modulate the decoder level of the same resolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import RendererConfig
from model.resize import bilinear_resize


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Bilinear ×2 (align_corners=False), the released ``F.interpolate(scale_factor=2)``."""
    return bilinear_resize(x, (2 * x.shape[-2], 2 * x.shape[-1]), align_corners=False)


def _resample(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear resampling by 2 or ½ (align_corners=False, no antialiasing). Halving samples
    every output pixel at the centre of a 2×2 input block with weights ½·½: exactly a 2×2 average
    pool, which is one cheap kernel (and backward) instead of a general interpolation."""
    if scale == 2:
        return upsample2x(x)
    if scale == 0.5 and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0:
        return F.avg_pool2d(x, 2)
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


@torch.no_grad()
def _kaiming(module: nn.Module, bias_fill: float, **kwargs) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, **kwargs)
            if m.bias is not None:
                m.bias.fill_(bias_fill)


class ResBlock(nn.Module):
    """conv3×3 → lrelu → bilinear ×``scale`` → conv3×3 → lrelu, plus a 1×1 (no bias) skip of
    the resampled input."""

    def __init__(self, in_ch: int, out_ch: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _resample(_leaky(self.conv1(x)), self.scale)
        out = _leaky(self.conv2(out))
        return out + self.skip(_resample(x, self.scale))


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated conv (no bias): weight [1,out,in,k,k] scaled per sample by
    ``modulation(style)`` over input channels, optionally demodulated, optional bilinear ×2
    upsampling of the input.

    Computed as StyleGAN2's non-fused form: modulate the input, one ordinary conv with the shared
    weight for the whole batch, then scale the output by the demodulation factor. The same maths
    as building a [B,out,in,k,k] weight for a grouped conv, but batched training runs dense convs."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, style_dim: int, demodulate: bool,
                 upsample: bool) -> None:
        super().__init__()
        self.out_ch = out_ch
        self.demodulate = demodulate
        self.upsample = upsample
        self.padding = kernel // 2
        self.modulation = nn.Linear(style_dim, in_ch)
        _kaiming(self.modulation, bias_fill=1.0, a=0, mode="fan_in", nonlinearity="linear")
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel, kernel) / math.sqrt(in_ch * kernel**2))
        # Σ_k w² [out,in] in float32, set for inference when the weight is stored in bf16
        # (model.reenactment); None: computed from the weight on every call
        self.register_buffer("weight_sq_sum", None, persistent=False)
        # inference (model.reenactment, small_kernels): the demodulation sums as an elementwise
        # product + sum, which inductor fuses, instead of a float32 matrix-vector product per layer
        self.demod_reduction = False

    @torch.no_grad()
    def pad_output_channels(self, multiple: int) -> None:
        """Inference: zero output channels up to a multiple of ``multiple``, sliced off after the
        conv (a 1×1 conv to 3 channels is a GEMM with N = 3 on a GPU: cuBLAS's slow align-1 path)."""
        pad = -self.weight.shape[1] % multiple
        if pad:
            w = self.weight.data
            self.weight.data = torch.cat([w, w.new_zeros(1, pad, *w.shape[2:])], dim=1)

    def forward(self, x: torch.Tensor, style: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """``scale``: ``modulation(style)`` when already computed (the decoder's fused modulation)."""
        B, C = x.shape[:2]
        scale = self.modulation(style) if scale is None else scale  # [B,in]
        weight = self.weight[0]  # [out,in,k,k]
        if self.upsample:
            x = upsample2x(x)
        out = F.conv2d(x * scale.view(B, C, 1, 1).to(x.dtype), weight.to(x.dtype), padding=self.padding)
        if out.shape[1] != self.out_ch:  # zero channels added by pad_output_channels
            out = out[:, :self.out_ch]
        if self.demodulate:
            # Σ_{in,k} (w·s)² = s² · Σ_k w²  → [B,out], in ≥ fp32 even under autocast
            dtype = torch.promote_types(scale.dtype, torch.float32)
            with torch.autocast(device_type=x.device.type, enabled=False):
                sq = self.weight_sq_sum if self.weight_sq_sum is not None else weight.to(dtype).square().sum((2, 3))
                sq, s2 = sq[:self.out_ch].to(dtype), scale.to(dtype).square()
                demod = torch.rsqrt(((s2[:, None, :] * sq).sum(-1) if self.demod_reduction else s2 @ sq.T) + 1e-8)
            out = out * demod.view(B, self.out_ch, 1, 1).to(out.dtype)
        return out


class StyleConv(nn.Module):
    """Modulated conv ·√2, + ``weight``·noise, + bias, leaky ReLU 0.2. The noise term and the bias
    are added in the activations' dtype (under bf16 autocast they would otherwise promote every
    activation of the decoder to float32)."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, demodulate=True, upsample=upsample)
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.bias = nn.Parameter(torch.zeros(1, out_ch, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | bool,
                scale: torch.Tensor | None = None) -> torch.Tensor:
        """``noise``: a [1 or B,1,H,W] map (the stored noise), True (fresh N(0,1) per call) or
        False (none)."""
        out = self.modulated_conv(x, style, scale) * math.sqrt(2.0)
        if noise is True:
            noise = torch.randn_like(out[:, :1])
        if noise is not False:
            out = out + (self.weight * noise).to(out.dtype)
        # the bias through a 1-D view: with a [1,C,1,1] parameter added to a channels-last
        # activation, inductor's compiled backward (CUDA, torch 2.11) returns its gradient as [C]
        # and autograd refuses the step
        return _leaky(out + self.bias.view(-1).to(out.dtype).view(1, -1, 1, 1))


class ToRGB(nn.Module):
    """1×1 modulated conv (no demodulation) + bias, plus the bilinearly upsampled skip."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_ch, out_ch, 1, style_dim, demodulate=False, upsample=False)
        self.bias = nn.Parameter(torch.zeros(1, out_ch, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None,
                scale: torch.Tensor | None = None) -> torch.Tensor:
        out = self.modulated_conv(x, style, scale) + self.bias
        if skip is not None:
            out = out + upsample2x(skip)
        return out


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class LeakyReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _leaky(x)


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.weight.expand(batch, -1, -1, -1)


class ToRGBNoSkip(ToRGB):
    """The first ToRGB (4×4): same parameters, no skip input."""

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None,
                scale: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x, style, None, scale)


class StyleGAN2GeneratorCSFT(nn.Module):
    """StyleGAN2 generator from a 4×4 constant, one style code for every layer, SFT after the
    first conv of each resolution ≥ 8: ``out = out·scale + shift``."""

    def __init__(self, size: int, out_ch: int, style_dim: int, num_mlp: int, widths: dict[int, int]) -> None:
        super().__init__()
        log_size = int(math.log2(size))
        self.num_layers = 2 * (log_size - 2) + 1
        mlp: list[nn.Module] = [PixelNorm()]
        for _ in range(num_mlp):
            mlp += [nn.Linear(style_dim, style_dim), LeakyReLU()]
        self.style_mlp = nn.Sequential(*mlp)
        _kaiming(self.style_mlp, bias_fill=0.0, a=0.2, mode="fan_in", nonlinearity="leaky_relu")
        self.constant_input = ConstantInput(widths[4])
        self.style_conv1 = StyleConv(widths[4], widths[4], style_dim, upsample=False)
        self.to_rgb1 = ToRGBNoSkip(widths[4], out_ch, style_dim)
        self.noises = nn.Module()
        for i in range(self.num_layers):
            # the released model draws fresh noise at every call (randomize_noise=True); these 15
            # fixed maps are its randomize_noise=False path (renderer.noise: stored)
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise{i}", torch.randn(1, 1, r, r))
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = widths[4]
        for k in range(3, log_size + 1):
            ch = widths[2**k]
            self.style_convs.append(StyleConv(in_ch, ch, style_dim, upsample=True))
            self.style_convs.append(StyleConv(ch, ch, style_dim, upsample=False))
            self.to_rgbs.append(ToRGB(ch, out_ch, style_dim))
            in_ch = ch
        # inference only (fuse_modulations): every layer's style modulation as one matmul
        self.fused_modulation: nn.Linear | None = None
        self.modulation_sizes: list[int] = []

    def modulated_convs(self) -> list[ModulatedConv2d]:
        """Every modulated conv in the order forward() applies them."""
        layers: list[nn.Module] = [self.style_conv1, self.to_rgb1]
        for level, to_rgb in enumerate(self.to_rgbs):
            layers += [self.style_convs[2 * level], self.style_convs[2 * level + 1], to_rgb]
        return [m.modulated_conv for m in layers]

    @torch.no_grad()
    def fuse_modulations(self) -> None:
        """For inference: the layers' modulation Linears (26 at 512²) stacked into one, so a frame
        computes every layer's scale in one matmul instead of 26 small ones. The per-layer
        Linears stay (unused while fused)."""
        linears = [m.modulation for m in self.modulated_convs()]
        weight = torch.cat([lin.weight for lin in linears])
        fused = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
        fused.weight.copy_(weight)
        fused.bias.copy_(torch.cat([lin.bias for lin in linears]))
        self.fused_modulation = fused.requires_grad_(False)
        self.modulation_sizes = [lin.out_features for lin in linears]

    def layer_noise(self, noise: bool | str) -> list[torch.Tensor | bool]:
        """Per style-conv layer (style_conv1, then style_convs in order): the stored map
        ``noises.noise{i}`` when ``noise == "stored"``, else ``noise`` (True random, False none)."""
        if noise == "stored":
            return [getattr(self.noises, f"noise{i}") for i in range(self.num_layers)]
        return [bool(noise)] * self.num_layers

    def forward(self, style: torch.Tensor, conditions: list[tuple[torch.Tensor, torch.Tensor]],
                noise: bool | str) -> torch.Tensor:
        """style [B, style_dim]; conditions: (scale, shift) per resolution 8…size; ``noise``: True
        (random), False (none) or "stored" → [B,out,size,size]."""
        noises = self.layer_noise(noise)
        w = self.style_mlp(style)
        # per modulated conv, in modulated_convs() order: its scale, or None (its own Linear computes it)
        mods = (list(self.fused_modulation(w).split(self.modulation_sizes, dim=1)) if self.fused_modulation is not None
                else [None] * (2 + 3 * len(self.to_rgbs)))
        out = self.style_conv1(self.constant_input(w.shape[0]).to(w.dtype), w, noises[0], mods[0])
        skip = self.to_rgb1(out, w, scale=mods[1])
        for level, to_rgb in enumerate(self.to_rgbs):
            m = mods[2 + 3 * level:5 + 3 * level]
            out = self.style_convs[2 * level](out, w, noises[2 * level + 1], m[0])
            scale, shift = conditions[level]
            out = out * scale + shift
            out = self.style_convs[2 * level + 1](out, w, noises[2 * level + 2], m[1])
            skip = to_rgb(out, w, skip, m[2])
        return skip


class StyleUNet(nn.Module):
    """Splat features [B, in_ch, S, S] → RGB [B, 3, S, S] in (0,1). S a power of two ≥ 8."""

    def __init__(self, in_ch: int, size: int, config: RendererConfig, out_ch: int = 3) -> None:
        super().__init__()
        log_size = int(math.log2(size))
        if 2**log_size != size or size < 8:
            raise ValueError(f"StyleUNet needs a power-of-two size ≥ 8, got {size}")
        self.size = size
        self.noise = config.noise
        unet = {2**k: min(config.max_channels, config.base_channels * size // 2**k) for k in range(2, log_size + 1)}
        style = {r: 2 * c for r, c in unet.items()}
        self.conv_body_first = nn.Conv2d(in_ch, unet[size], 1)
        self.conv_body_down = nn.ModuleList(
            ResBlock(unet[2**k], unet[2 ** (k - 1)], 0.5) for k in range(log_size, 2, -1)
        )
        self.final_conv = nn.Conv2d(unet[4], unet[4], 3, padding=1)
        self.conv_body_up = nn.ModuleList(
            ResBlock(unet[2 ** (k - 1)], unet[2**k], 2.0) for k in range(3, log_size + 1)
        )
        self.toRGB = nn.ModuleList(nn.Conv2d(unet[2**k], 3, 1) for k in range(3, log_size + 1))
        self.toRGB.requires_grad_(False)  # in the released checkpoint, never used: frozen (DDP)
        self.final_linear = nn.Linear(unet[4] * 16, config.style_dim)
        self.stylegan_decoder = StyleGAN2GeneratorCSFT(size, out_ch, config.style_dim, config.style_mlp_layers, style)

        def sft(ch: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(ch, 2 * ch, 3, padding=1))

        self.condition_scale = nn.ModuleList(sft(unet[2**k]) for k in range(3, log_size + 1))
        self.condition_shift = nn.ModuleList(sft(unet[2**k]) for k in range(3, log_size + 1))
        if not self.noise:
            # without noise injection the noise strengths get no gradient: frozen (DDP)
            for m in self.stylegan_decoder.modules():
                if isinstance(m, StyleConv):
                    m.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor, noise: bool | str | None = None) -> torch.Tensor:
        """x [B,in_ch,S,S]; ``noise`` overrides ``config.renderer.noise`` (True: fresh random noise
        injection, False: none, "stored": the decoder's fixed noise maps) → [B,3,S,S]."""
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            raise ValueError(f"StyleUNet built for {self.size}², got {tuple(x.shape[-2:])}")
        noise = self.noise if noise is None else noise
        feat = _leaky(self.conv_body_first(x))
        skips = []
        for block in self.conv_body_down:
            feat = block(feat)
            skips.append(feat)
        feat = _leaky(self.final_conv(feat))
        style = self.final_linear(feat.flatten(1))
        conditions = []
        for i, block in enumerate(self.conv_body_up):
            feat = block(feat + skips[-1 - i])
            conditions.append((self.condition_scale[i](feat), self.condition_shift[i](feat)))
        return torch.sigmoid(self.stylegan_decoder(style, conditions, noise))
