"""Bilinear resizing whose backward is fast under torch.compile.

Inductor compiles ``F.interpolate(mode="bilinear")`` into index arithmetic whose backward scatters
into the input gradient with atomic adds; in the training step these scatters took 34 ms of the
144 ms an H200 spent per step (bench/results/train_profile_h200.json). Resizing is linear and
separable, so the same weights applied as two small matrices (one per axis) give the same output,
and a backward made of two matrix products. Where nothing is compiled, or no gradient is needed
(inference), ``F.interpolate`` itself runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# below bf16/fp16, matmuls of fp32 inputs may run in TF32 (10-bit mantissa): keep interpolate exact
_MATMUL_DTYPES = (torch.bfloat16, torch.float16)


def interpolation_matrix(n_in: int, n_out: int, align_corners: bool, device: torch.device,
                         dtype: torch.dtype) -> torch.Tensor:
    """[n_out, n_in]: row j holds the weights ``F.interpolate(mode="bilinear")`` gives the inputs
    of output j along one axis (made by interpolating the identity: PyTorch's own weights)."""
    eye = torch.eye(n_in, device=device, dtype=torch.promote_types(dtype, torch.float32)).view(n_in, 1, n_in, 1)
    rows = F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=align_corners)
    return rows.view(n_in, n_out).T.to(dtype)


def _by_matrices(x: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    B, C, H, W = x.shape
    rows = interpolation_matrix(H, size[0], align_corners, x.device, x.dtype)  # [H2,H]
    cols = interpolation_matrix(W, size[1], align_corners, x.device, x.dtype)  # [W2,W]
    if x.is_contiguous(memory_format=torch.channels_last):
        t = x.permute(0, 2, 3, 1)  # [B,H,W,C], contiguous
        t = torch.matmul(rows, t.reshape(B, H, W * C)).view(B, size[0], W, C)  # along H
        t = torch.matmul(cols, t.reshape(B * size[0], W, C))  # along W: [B·H2, W2, C]
        return t.view(B, size[0], size[1], C).permute(0, 3, 1, 2)  # channels-last [B,C,H2,W2]
    return torch.matmul(torch.matmul(rows, x), cols.T)


def bilinear_resize(x: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=align_corners)`` for x [B,C,H,W];
    when compiled with a gradient in bf16/fp16, as two matrix products (see the module's note)."""
    size = (int(size[0]), int(size[1]))
    if torch.compiler.is_compiling() and torch.is_grad_enabled() and x.requires_grad and x.dtype in _MATMUL_DTYPES:
        return _by_matrices(x, size, align_corners)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
