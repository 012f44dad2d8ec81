"""DINOv2 ViT in our own code, with the parameter names of the official ``dinov2_vitb14``.

State-dict keys (ViT-B/14): ``cls_token`` [1,1,C], ``pos_embed`` [1,1+G²,C] (G = 37 for 518²
pretraining), ``mask_token`` [1,C], ``patch_embed.proj`` (conv k=s=14), ``blocks.N.{norm1,
attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``, ``norm``. timm's
``vit_base_patch14_dinov2`` uses the same names without ``mask_token``;
:func:`load_dinov2_state_dict` reads either (and the chunked ``blocks.K.N`` layout) from a local
file. Nothing is downloaded.

Numerics follow facebookresearch/dinov2 (hub defaults for ViT-B/14): LayerNorm eps 1e-6, exact
GELU, layer scale, no dropout / drop-path, and bicubic positional-embedding interpolation with
DINOv2's 0.1 offset in the scale factor when the token grid differs from the stored one.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from model.config import BackboneConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PatchEmbed(nn.Module):
    """[B,3,H,W] → [B, (H/p)·(W/p), C] tokens, row-major over the patch grid."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B,heads,N,d]
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block with layer scale on both residual branches."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT without registers. Only the feature path GAGAvatar uses is implemented:
    :meth:`get_intermediate_layers` (``mask_token`` exists for checkpoint compatibility only)."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        C, p = config.embed_dim, config.patch_size
        if config.embed_dim % config.num_heads:
            raise ValueError(f"embed_dim {C} is not divisible by num_heads {config.num_heads}")
        self.patch_size = p
        self.embed_dim = C
        grid = config.pretrained_size // p
        self.patch_embed = PatchEmbed(p, C)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, C))
        self.mask_token = nn.Parameter(torch.zeros(1, C))
        self.blocks = nn.ModuleList(Block(C, config.num_heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(C, eps=1e-6)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # DINOv2's own initialisation (only matters without pretrained weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, grid_h: int, grid_w: int, dtype: torch.dtype) -> torch.Tensor:
        """Positional embedding [1, 1 + grid_h·grid_w, C] for a token grid of that size."""
        n_stored = self.pos_embed.shape[1] - 1
        if grid_h * grid_w == n_stored and grid_h == grid_w:
            return self.pos_embed.to(dtype)
        side = int(math.sqrt(n_stored))
        pos = self.pos_embed.float()
        patch_pos = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        # DINOv2 passes a scale factor with a 0.1 offset (not an output size): the offset changes
        # the sampling positions, so it is kept for bit-compatible features
        patch_pos = F.interpolate(
            patch_pos,
            scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side),
            mode="bicubic",
            align_corners=False,
        )
        if patch_pos.shape[-2:] != (grid_h, grid_w):
            raise RuntimeError(f"pos-embed interpolation gave {tuple(patch_pos.shape[-2:])}, wanted {(grid_h, grid_w)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat([pos[:, :1], patch_pos], dim=1).to(dtype)

    def prepare_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] (ImageNet-normalised, H and W multiples of the patch) → [B, 1+N, C]."""
        B, _, H, W = images.shape
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(B, -1, -1).to(x.dtype), x], dim=1)
        return x + self.interpolate_pos_encoding(H // self.patch_size, W // self.patch_size, x.dtype)

    def get_intermediate_layers(self, images: torch.Tensor, n: int = 4) -> list[torch.Tensor]:
        """Outputs of the last ``n`` blocks, each through the final LayerNorm, class token
        stripped, as [B, C, H/p, W/p] maps (token 0 = the top-left patch). The maps are views of
        the token tensors, channels-last in memory (no transpose copy; the convolutions that read
        them run channels-last)."""
        B, _, H, W = images.shape
        h, w = H // self.patch_size, W // self.patch_size
        x = self.prepare_tokens(images)
        first = len(self.blocks) - n
        outputs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i >= first:
                outputs.append(self.norm(x)[:, 1:].reshape(B, h, w, -1).permute(0, 3, 1, 2))
        return outputs


# ----------------------------------------------------------------------------- weights

_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")


def convert_dinov2_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official (plain or chunked ``blocks.K.N``) or timm ``vit_*_dinov2`` keys → ours.

    timm differences handled: no ``mask_token`` (zeros are filled in: only used for masked
    pretraining), an identity/absent ``head`` and ``fc_norm``/``norm_pre`` that are identities
    in the DINOv2 configs. A ``backbone.``/``module.`` prefix is stripped.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone.", "base_model.dino_model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        # a classifier head, and norms that are identities in the DINOv2 configs
        if key.startswith(("head.", "fc_norm.", "norm_pre.")):
            continue
        out[_CHUNKED_BLOCK.sub(r"blocks.\1.", key)] = value
    if "mask_token" not in out and "cls_token" in out:
        out["mask_token"] = out["cls_token"].new_zeros(1, out["cls_token"].shape[-1])
    return out


def load_dinov2_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a DINOv2 ViT state dict (``.pth``/``.pt`` or ``.safetensors``), official or timm
    layout, and return it in ours (= the official names)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # optional dependency, only for this format

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    return convert_dinov2_state_dict(state)
