"""graphdeco-inria ``diff-gaussian-rasterization`` backend (the released GAGAvatar's rasterizer).

Two builds are known: GAGAvatar's 32-channel fork ``diff_gaussian_rasterization_32d``
(github xg-chu/diff-gaussian-rasterization) and the upstream 3-channel
``diff_gaussian_rasterization``. The channel count is a compile-time constant (NUM_CHANNELS in
cuda_rasterizer/config.h), so C must equal the build's. Neither takes a batch: one call per
sample, and the camera goes in as Python floats, hence one host copy of Ks per call.

Camera: the 3DGS convention — ``viewmatrix`` is the transposed world→view matrix (the OpenCV
``viewmats`` transposed), ``projmatrix = viewmatrix @ Pᵀ`` with P the symmetric perspective
matrix of tan(fov/2) = W / (2·fx), and the principal point is the image centre. graphdeco puts
pixel centres at integers and its 2D means at fx·x/z + W/2 − ½, which is exactly gsplat's
fx·x/z + cx with centres at +½ when cx = W/2: there is no half-pixel shift for a centred
principal point, and any other principal point is refused.

Quaternions: graphdeco's computeCov3D does not normalise them, which is the API's default
semantic; with ``normalize_quats`` they are normalised here first.
"""

from __future__ import annotations

import importlib
import importlib.util
import math

import torch
import torch.nn.functional as F

from model.config import RasterizerConfig
from model.rasterizer.common import RenderOutput, SplatInputs, upper_triangle

# module name → NUM_CHANNELS of its build (a module attribute NUM_CHANNELS, if any, wins)
KNOWN_BUILDS: dict[str, int] = {
    "diff_gaussian_rasterization_32d": 32,
    "diff_gaussian_rasterization": 3,
}


def find_module(channels: int) -> str | None:
    """The importable build whose channel count is ``channels``, or None (imports nothing)."""
    for name, n in KNOWN_BUILDS.items():
        if n == channels and importlib.util.find_spec(name) is not None:
            return name
    return None


def _projection(tanfovx: float, tanfovy: float, znear: float, zfar: float, like: torch.Tensor) -> torch.Tensor:
    """3DGS ``getProjectionMatrix`` for a symmetric frustum: [4,4], maps view z to [0,1]."""
    P = torch.zeros(4, 4, dtype=like.dtype, device=like.device)
    P[0, 0] = 1.0 / tanfovx
    P[1, 1] = 1.0 / tanfovy
    P[3, 2] = 1.0
    P[2, 2] = zfar / (zfar - znear)
    P[2, 3] = -(zfar * znear) / (zfar - znear)
    return P


def camera_settings(
    viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int, near: float, far: float
) -> dict:
    """graphdeco's camera arguments for one OpenCV world→camera ``viewmat`` [4,4] and pixel
    intrinsics ``K`` [3,3] (one host copy of K): tanfovx, tanfovy, viewmatrix, projmatrix, campos."""
    fx, fy, cx, cy = (float(v) for v in K.detach().double().cpu()[[0, 1, 0, 1], [0, 1, 2, 2]])
    if not (math.isclose(cx, width / 2, abs_tol=1e-3) and math.isclose(cy, height / 2, abs_tol=1e-3)):
        raise ValueError(
            f"the inria backend needs the principal point at the image centre ({width / 2}, {height / 2}), "
            f"got ({cx}, {cy})"
        )
    tanfovx, tanfovy = width / (2 * fx), height / (2 * fy)
    view = viewmat.detach().float().transpose(0, 1).contiguous()  # row-vector convention: p @ view
    proj = view @ _projection(tanfovx, tanfovy, near, far, view).T
    campos = torch.linalg.inv(viewmat.detach().float())[:3, 3].contiguous()
    return dict(tanfovx=tanfovx, tanfovy=tanfovy, viewmatrix=view, projmatrix=proj.contiguous(), campos=campos)


def render(inp: SplatInputs, config: RasterizerConfig) -> RenderOutput:
    """Shapes as in :class:`SplatInputs`; CUDA float32 tensors. Returns alpha = depth = None
    (the fork returns only the image and radii)."""
    C, W, H = inp.channels, inp.width, inp.height
    name = find_module(C)
    if name is None:
        builds = ", ".join(f"{m} ({n} channels)" for m, n in KNOWN_BUILDS.items())
        raise ValueError(
            f"no diff-gaussian-rasterization build for {C} channels is importable; known builds: {builds}. "
            "The channel count is fixed at compile time (NUM_CHANNELS); see docs/rasterizer.md."
        )
    mod = importlib.import_module(name)
    built = int(getattr(mod, "NUM_CHANNELS", KNOWN_BUILDS[name]))
    if built != C:
        raise ValueError(f"{name} was built for {built} channels but features have {C}")
    if not inp.means.is_cuda:
        raise RuntimeError("the inria backend needs CUDA tensors; use backend='torch' on CPU")

    fields = set(mod.GaussianRasterizationSettings._fields)
    images = []
    for b in range(inp.batch):  # the kernels take no batch and the camera as Python floats
        settings = dict(
            image_height=H, image_width=W, bg=inp.background.float().contiguous(), scale_modifier=1.0,
            sh_degree=0, prefiltered=False, debug=False,
            **camera_settings(inp.viewmats[b], inp.Ks[b], W, H, config.near_plane, config.far_plane),
        )
        if "antialiasing" in fields:  # newer upstream builds
            settings["antialiasing"] = False
        rasterizer = mod.GaussianRasterizer(
            raster_settings=mod.GaussianRasterizationSettings(**{k: v for k, v in settings.items() if k in fields})
        )
        means = inp.means[b].contiguous()
        geometry: dict[str, torch.Tensor | None] = {"scales": None, "rotations": None, "cov3D_precomp": None}
        if inp.covariances is not None:
            geometry["cov3D_precomp"] = upper_triangle(inp.covariances[b]).contiguous()
        else:
            q = inp.quats[b]
            geometry["rotations"] = (F.normalize(q, dim=-1) if config.normalize_quats else q).contiguous()
            geometry["scales"] = inp.scales[b].contiguous()
        out = rasterizer(
            means3D=means,
            means2D=torch.zeros_like(means, requires_grad=True),  # screen-space grad holder
            opacities=inp.opacities[b].unsqueeze(-1).contiguous(),
            shs=None,
            colors_precomp=inp.features[b].contiguous(),
            **geometry,
        )
        images.append(out[0] if isinstance(out, (tuple, list)) else out)  # [C,H,W]
    return RenderOutput(image=torch.stack(images), alpha=None, depth=None, backend="inria")
