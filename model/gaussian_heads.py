"""The Gaussian-predicting parts of GAGAvatar: view-direction encoding, lifting planes, the conv
lifting heads (reconstruction branch, docs/released_model.md, Quirks) and the per-vertex MLP head (expression branch,
docs/released_model.md, Quirks). Parameter names are the released ones (``gaussian_conv.{0,2,4,6}``,
``feature_layers``/``color_layers``/``opacity_layers``/``scale_layers``/``rotation_layers``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.dpt import channels_last_like
from model.geometry import camera_center, camera_forward


@dataclass
class GaussianAttributes:
    """Per-Gaussian attributes, all [B, N, k]: ``colors`` k = channels (0–2 RGB), ``opacities``
    k = 1 in [0,1], ``scales`` k = 3 linear std-devs, ``rotations`` k = 4 (w,x,y,z)."""

    colors: torch.Tensor
    opacities: torch.Tensor
    scales: torch.Tensor
    rotations: torch.Tensor

    @staticmethod
    def cat(parts: list[GaussianAttributes]) -> GaussianAttributes:
        if len(parts) == 1:
            return parts[0]
        return GaussianAttributes(
            colors=torch.cat([p.colors for p in parts], dim=1),
            opacities=torch.cat([p.opacities for p in parts], dim=1),
            scales=torch.cat([p.scales for p in parts], dim=1),
            rotations=torch.cat([p.rotations for p in parts], dim=1),
        )


class HarmonicEmbedding(nn.Module):
    """PyTorch3D ``HarmonicEmbedding(n, omega_0=1, logspace=True, append_input=True)``:
    [..., D] → [..., D·(2n+1)] laid out as [sin(x_d·2^k) for d, k | cos(...) for d, k | x],
    d-major, frequencies 2^0…2^(n−1); cos computed as sin(· + π/2) as PyTorch3D does."""

    def __init__(self, n_harmonic_functions: int = 4) -> None:
        super().__init__()
        self.register_buffer("frequencies", 2.0 ** torch.arange(n_harmonic_functions, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("phase", torch.tensor([0.0, 0.5 * math.pi]), persistent=False)

    def output_dim(self, input_dim: int = 3) -> int:
        return input_dim * (2 * self.frequencies.numel() + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = x[..., None, :, None] * self.frequencies + self.phase[:, None, None]  # [...,2,D,n]
        return torch.cat([torch.sin(angles).flatten(-3), x], dim=-1)


def lifting_plane(transform: torch.Tensor, plane_size: int, focal: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The source camera's lifting plane (``build_points_planes`` of the released loader).

    transform: [B,3,4] tracker [R|T] (PyTorch3D row-vector convention). Returns
    points [B, S², 3]: the S×S grid spanning the image frustum (NDC ±1 at the grid's first/last
    rows and columns, row-major from the image's top-left) on the plane through the world
    origin perpendicular to the optical axis; and forward [B,3]: the optical axis v = R·(0,0,1).
    """
    # camera geometry stays in float32 under autocast: bf16 would move the points by pixels
    with torch.autocast(device_type=transform.device.type, enabled=False):
        transform = transform.float()
        lin = torch.linspace(1.0, -1.0, plane_size, dtype=transform.dtype, device=transform.device)
        # row i ↔ y = lin[i] (top = +1), column j ↔ x = lin[j] (left = +1)
        y, x = torch.meshgrid(lin, lin, indexing="ij")
        rays_cam = torch.stack([x / focal, y / focal, torch.ones_like(x)], dim=-1).reshape(-1, 3)  # [S²,3]
        rays = rays_cam @ transform[:, :3, :3].transpose(-1, -2)  # world dirs R·d, [B,S²,3]
        forward = camera_forward(transform)  # [B,3]
        center = camera_center(transform)  # [B,3]
        distance = (center * forward).sum(-1).abs()  # camera → plane through the origin, along v
        points = center[:, None] + distance[:, None, None] * rays
    return points, forward


class ConvGaussianHead(nn.Module):
    """Lifting head: features [B,F,S,S] + direction encoding → per pixel one Gaussian
    (``channels`` colour, 1 opacity, 3 scale, 4 rotation) and a lifting distance t ∈ [0,1].

    ``gaussian_conv``: 3×3 (F+D→h), ReLU, 3×3, ReLU, 3×3, ReLU, 1×1 (h→channels+9).
    ``official_color_quirk``: the released head applies the colour sigmoid to the first three
    *pixel columns* of every colour channel (``[..., :3]`` on a B×C×H×W tensor) and leaves the
    rest unbounded; its weights were trained that way. Otherwise: sigmoid on channels 0–2.
    """

    def __init__(self, in_dim: int, dir_dim: int, hidden: int, channels: int, max_scale: float,
                 official_color_quirk: bool) -> None:
        super().__init__()
        self.channels = channels
        self.max_scale = max_scale
        self.official_color_quirk = official_color_quirk
        self.gaussian_conv = nn.Sequential(
            nn.Conv2d(in_dim + dir_dim, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, channels + 9, 1),
        )

    def forward(self, features: torch.Tensor, dir_encoding: torch.Tensor) -> tuple[GaussianAttributes, torch.Tensor]:
        """features [B,F,S,S], dir_encoding [B,D] → attributes [B,S²,·] (row-major) and t [B,S²,1]."""
        B, _, H, W = features.shape
        enc = dir_encoding[:, :, None, None].to(features.dtype).expand(-1, -1, H, W)
        out = self.gaussian_conv(channels_last_like(torch.cat([features, enc], dim=1), features))
        C = self.channels
        colors = out[:, :C]
        if self.official_color_quirk:
            first_columns = torch.arange(W, device=out.device) < 3
            colors = torch.where(first_columns, torch.sigmoid(colors), colors)
        else:
            colors = torch.cat([torch.sigmoid(colors[:, :3]), colors[:, 3:]], dim=1)
        params = torch.cat([
            colors,
            torch.sigmoid(out[:, C:C + 1]),
            torch.sigmoid(out[:, C + 1:C + 4]) * self.max_scale,
            F.normalize(out[:, C + 4:C + 8], dim=1),
            torch.sigmoid(out[:, C + 8:C + 9]),
        ], dim=1)
        params = params.permute(0, 2, 3, 1).reshape(B, H * W, C + 9)  # a view when channels-last
        attrs = GaussianAttributes(
            colors=params[..., :C], opacities=params[..., C:C + 1],
            scales=params[..., C + 1:C + 4], rotations=params[..., C + 4:C + 8],
        )
        return attrs, params[..., C + 8:]


class MLPGaussianHead(nn.Module):
    """Expression head: per-vertex inputs [B,V,in] → one Gaussian per vertex.

    ``feature_layers``: Linear in→h, ReLU, h→h, ReLU, h→h, ReLU, h→h; then the direction
    encoding is appended and four heads (Linear h+D→head_hidden, ReLU, Linear →k) give colour
    (sigmoid on channels 0–2), opacity (sigmoid), scale (max_scale·sigmoid) and rotation.
    ``rotation_norm="official"`` L2-normalises the [B,V,4] rotations over the *vertex* axis
    (``F.normalize``'s default dim=1), as the released model does; "per_gaussian" per quaternion.
    """

    def __init__(self, in_dim: int, hidden: int, dir_dim: int, head_hidden: int, channels: int,
                 max_scale: float, rotation_norm: str) -> None:
        super().__init__()
        self.max_scale = max_scale
        self.rotation_dim = 1 if rotation_norm == "official" else -1
        self.feature_layers = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden),
        )

        def head(k: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(hidden + dir_dim, head_hidden), nn.ReLU(), nn.Linear(head_hidden, k))

        self.color_layers = head(channels)
        self.opacity_layers = head(1)
        self.scale_layers = head(3)
        self.rotation_layers = head(4)

    def forward(self, inputs: torch.Tensor, dir_encoding: torch.Tensor) -> GaussianAttributes:
        """inputs [B,V,in], dir_encoding [B,D] → attributes [B,V,·]."""
        x = self.feature_layers(inputs)
        x = torch.cat([x, dir_encoding[:, None].to(x.dtype).expand(-1, x.shape[1], -1)], dim=-1)
        colors = self.color_layers(x)
        colors = torch.cat([torch.sigmoid(colors[..., :3]), colors[..., 3:]], dim=-1)
        return GaussianAttributes(
            colors=colors,
            opacities=torch.sigmoid(self.opacity_layers(x)),
            scales=torch.sigmoid(self.scale_layers(x)) * self.max_scale,
            rotations=F.normalize(self.rotation_layers(x), dim=self.rotation_dim),
        )
