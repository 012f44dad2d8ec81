"""Real-time reenactment: reconstruct once from a source, then per driving frame only FLAME,
the rasterizer and the neural renderer (docs/released_model.md, Architecture, the released ``forward_expression``).

    reenactor = Reenactor(model, flame, ReenactOptions.fast())      # or ReenactOptions() (eager fp32)
    reenactor.set_source(image, shape, transform)                  # [S,3,H,W], [S,300], [S,3,4]
    out = reenactor(expression, pose, eyes, transform)             # driver codes [B,·] → AvatarOutput

What is cached at :meth:`Reenactor.set_source`: every Gaussian attribute of both branches, merged
in the model's order [expression | lifted], their world covariances (built once, the released
rasterizer's way for the official quaternion quirk), the lifted centres, and the source's FLAME
shape. Per frame: FLAME vertices from the *source* shape + the driver's expression/jaw/eyes (as
the official inference does), the driver's camera, splatting, StyleUNet. In eager fp32 mode the
result equals ``model(source_image, source_transform, vertices, target_transform)``.

Several streams at once: ``set_source`` takes S sources, and a call renders B driver frames in
one batch, frame i from source ``sources[i]`` (default ``i mod S``: one source driven B ways, or
B sources each with its driver). The Gaussians of each frame's source are gathered once into
per-frame buffers when the assignment changes, not per frame.

Optimised mode (:meth:`ReenactOptions.fast`, CUDA, static shapes):
- the FLAME + camera work is one captured CUDA graph writing into static buffers (the vertices go
  straight into the first V rows of a preallocated ``means`` buffer whose other rows hold the
  lifted centres), so there is no per-frame concatenation or allocation; FLAME is one matrix
  product and elementwise transforms (:class:`SourceFlame`), ``torch.compile``d with ``compile``;
- the rasterizer (gsplat when available) runs eagerly in float32 on unit quaternions + scales
  that reproduce the precomputed covariances exactly (``splat_quats``: one eigendecomposition per
  source); gsplat sizes its tile-intersection buffers from a device count, which is a host sync
  inside gsplat — the only one per frame;
- the StyleUNet (78% of the released frame time, docs/released_model.md, Where the released code
  spends its time) runs in bf16 from a copy with bf16 NHWC weights and its 26 style modulations
  stacked into one matmul (:func:`inference_renderer`), its ToRGB 1×1 convs padded to 8 output
  channels (``small_kernels``, :func:`small_kernel_renderer_`),
  optionally ``torch.compile``d, captured as a second CUDA graph on a static bf16 input buffer;
  pipelined, on several streams in turn (consecutive frames' renderers overlap).
The graphs are captured for the batch size and source assignment of the first call and
recaptured when those change. Outputs of the optimised mode are views of static buffers,
overwritten by the next frame: clone what you keep. Nothing per frame calls ``.item()`` or moves
data to the host.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .flame import FlameModel
from .gagavatar import AvatarOutput, GAGAvatar
from .gaussian_heads import GaussianAttributes
from .geometry import axis_angle_to_matrix, intrinsics
from .rasterizer import quat_scale_from_covariance, render_gaussians
from .style_unet import ConstantInput, ModulatedConv2d, StyleConv

CUDA_GRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class ReenactOptions:
    """How the per-frame work runs. Defaults: eager fp32 (the reference)."""

    precision: Literal["fp32", "bf16"] = "fp32"  # autocast dtype of the neural renderer (and reconstruction)
    channels_last: bool = False  # StyleUNet activations and conv weights in NHWC (tensor cores like it)
    cuda_graphs: bool = False  # capture FLAME+camera and the StyleUNet as CUDA graphs (CUDA, batch 1)
    compile: bool = False  # torch.compile the StyleUNet and FLAME (inductor) before capturing them
    # inductor mode. "max-autotune-no-cudagraphs" tunes the StyleUNet's kernels: 319 vs 295 FPS
    # pipelined on an H100, but ~8 min of warm-up instead of ~1 (bench/results/reenact_fps_h100.json)
    compile_mode: str = "default"
    # CUDA graphs only: the neural renderer of frame k runs on another stream while frame k+1 is
    # splatted (gsplat's host sync then waits for the splatting alone). Throughput, not latency;
    # a frame's output is ready only after synchronize().
    pipelined: bool = False
    # pipelined only: renderer graphs on this many streams, frame k on stream k mod n, so the
    # small low-resolution kernels of consecutive frames' StyleUNets share the GPU (H200: 369 FPS
    # on 1, 410 on 2, 426 on 3, no more on 4–8). A frame's output lives until n frames later.
    renderer_streams: int = 1
    # bf16 only: the neural renderer runs on a copy whose weights are cast to bf16 once (and whose
    # demodulation sums Σw² are computed once, from the float32 weights), instead of autocast
    # casting them on every frame; the same numbers (tests/test_reenact.py), the model untouched.
    # (Not inductor's freezing, which does the same inside torch.compile: its constants outlive a
    # change of weights, because a later torch.compile of the same module reuses the cached code.)
    bf16_weights: bool = False
    # draw the cached Gaussians from unit quaternions + scales (the raw-quaternion covariances
    # re-expressed once per source by eigendecomposition) instead of passing covariances every
    # frame: the rasterizer builds Σ inside its projection kernel (for gsplat, also no per-frame
    # covariance gather, which indexes with a host list: a stream wait)
    splat_quats: bool = False
    # the StyleUNet copy's small matrix products reshaped for the GPU (:func:`small_kernel_renderer_`):
    # the ToRGBs' 1×1 convs zero-padded from 3 to 8 output channels (with N = 3 cuBLAS takes its
    # align-1 path: ~85 µs a frame for the 8 ToRGBs on an H200), and with ``compile`` each layer's
    # demodulation Σ_i s_i²·Σw² an elementwise product + sum that inductor fuses (not a float32
    # GEMV per layer)
    small_kernels: bool = False
    backend: str | None = None  # rasterizer backend; None: the model's config ("auto": gsplat on CUDA)

    def __post_init__(self) -> None:
        if self.renderer_streams < 1:
            raise ValueError(f"ReenactOptions.renderer_streams must be ≥ 1, got {self.renderer_streams}")
        if self.compile_mode in CUDA_GRAPH_COMPILE_MODES:
            raise ValueError(f"ReenactOptions.compile_mode={self.compile_mode!r} makes inductor capture its own CUDA "
                             "graphs, which the Reenactor already captures (cuda_graphs); use 'default' or "
                             "'max-autotune-no-cudagraphs'")

    @classmethod
    def fast(cls, compile: bool = False, pipelined: bool = False, compile_mode: str = "default",
             renderer_streams: int = 3) -> ReenactOptions:
        """The real-time path: bf16 (weights cast once), channels-last, CUDA graphs (+ torch.compile,
        + pipelining on ``renderer_streams`` streams when asked)."""
        return cls(precision="bf16", channels_last=True, cuda_graphs=True, compile=compile, pipelined=pipelined,
                   splat_quats=True, compile_mode=compile_mode, renderer_streams=renderer_streams, bf16_weights=True,
                   small_kernels=True)


def _channels_last_(module: nn.Module) -> None:
    """NHWC conv weights, in place. Module.to(memory_format=...) refuses the StyleGAN decoder's
    5-D modulated-conv weights [1,out,in,k,k]; those get NHWC strides for their [out,in,k,k]
    slice, which is what the convolution uses."""
    for p in module.parameters():
        if p.dim() == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
        elif p.dim() == 5 and p.shape[0] == 1:
            p.data = p.data[0].contiguous(memory_format=torch.channels_last).unsqueeze(0)


@torch.no_grad()
def _bf16_weights_(renderer: nn.Module) -> None:
    """In place: the parameters that bf16 autocast would cast on every call (conv and linear
    weights and biases, the modulated convs' weights, the constant input, the style convs' biases,
    which are cast before use) become bf16; the demodulation sums are taken from the float32
    weights first. What stays float32 is what is used in float32: noise strengths and maps, the
    ToRGB biases (added to a float32 skip)."""
    for m in renderer.modules():
        if isinstance(m, ModulatedConv2d):
            m.weight_sq_sum = m.weight[0].float().square().sum((2, 3))
            m.weight.data = m.weight.data.bfloat16()
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            for p in (m.weight, m.bias):
                if p is not None:
                    p.data = p.data.bfloat16()
        elif isinstance(m, ConstantInput):
            m.weight.data = m.weight.data.bfloat16()
        if isinstance(m, StyleConv):
            m.bias.data = m.bias.data.bfloat16()


def small_kernel_renderer_(renderer: nn.Module, multiple: int = 8, demod_reduction: bool = True) -> None:
    """In place, inference only (the Reenactor's copy): every modulated conv's output channels
    zero-padded to a multiple of ``multiple`` (the ToRGBs' 3 → 8: on a GPU their 1×1 convs are
    cuBLAS GEMMs, align-1 for N = 3) and its demodulation computed by ``demod_reduction``
    (:class:`~model.style_unet.ModulatedConv2d`). Before ``_bf16_weights_`` and ``_channels_last_``,
    which then convert the padded weights."""
    for m in renderer.modules():
        if isinstance(m, ModulatedConv2d):
            m.pad_output_channels(multiple)
            m.demod_reduction = demod_reduction


def inference_renderer(renderer: nn.Module, options: ReenactOptions) -> nn.Module:
    """The StyleUNet as the per-frame path runs it: the module itself, or a copy with NHWC weights
    and/or bf16 weights, its style modulations fused into one matmul, with ``small_kernels`` its
    ToRGB convs padded and its demodulations reshaped (the model is not changed)."""
    if not (options.channels_last or (options.bf16_weights and options.precision == "bf16") or options.small_kernels):
        return renderer
    renderer = copy.deepcopy(renderer).eval().requires_grad_(False)
    renderer.stylegan_decoder.fuse_modulations()  # one matmul for every layer's style modulation
    if options.small_kernels:
        small_kernel_renderer_(renderer, demod_reduction=options.compile)
    if options.channels_last:
        _channels_last_(renderer)
    if options.bf16_weights and options.precision == "bf16":
        _bf16_weights_(renderer)
    return renderer


def _autocast(device: torch.device, precision: str, cache: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast or nothing. ``cache=False`` inside CUDA-graph capture: autocast's cache of
    casted weights must not outlive the captured region (PyTorch's CUDA-graph notes)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


class SourceFlame(nn.Module):
    """FLAME with fixed (source) shapes, for the per-frame work: the shape blends and the rest
    joints of S sources are computed once by :meth:`set_shape`; :meth:`forward` skins the
    expression, jaw and eyes. Same LBS as :class:`model.flame.FlameModel` (which concatenates shape and expression
    coefficients; equal up to float rounding), without landmarks, and with no host→device copy
    (FlameModel indexes joints with a Python list), so it can be captured in a CUDA graph."""

    def __init__(self, flame: FlameModel) -> None:
        super().__init__()
        n_s = flame.n_shape
        self.scale, self.parents = flame.scale, list(flame.parents)
        exp_dirs = flame.shapedirs[:, :, n_s:]  # [V,3,E]
        joint_exp_dirs = torch.einsum("jv,vce->jce", flame.j_regressor, exp_dirs)  # [J,3,E]
        E, J = exp_dirs.shape[-1], joint_exp_dirs.shape[0]
        # rows: the E expression coefficients, then the 9(J−1) pose features; columns: the 3V vertex
        # offsets, then the 3J rest-joint offsets (which the pose does not move)
        blend_dirs = torch.cat([
            torch.cat([exp_dirs.reshape(-1, E).T, joint_exp_dirs.reshape(-1, E).T], dim=1),
            torch.cat([flame.posedirs, flame.posedirs.new_zeros(flame.posedirs.shape[0], 3 * J)], dim=1),
        ])
        buffers = {
            "v_template": flame.v_template, "shape_dirs": flame.shapedirs[:, :, :n_s], "blend_dirs": blend_dirs,
            "j_regressor": flame.j_regressor, "lbs_weights": flame.lbs_weights,
            "v_shaped": flame.v_template[None].clone(), "joints": (flame.j_regressor @ flame.v_template)[None],
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.detach().clone(), persistent=False)

    @torch.no_grad()
    def set_shape(self, shape: torch.Tensor) -> None:
        """shape [S, n_shape]; written in place when S is unchanged (captured graphs read these
        buffers), else the buffers are replaced."""
        v = self.v_template + torch.einsum("bk,vck->bvc", shape.to(self.v_template), self.shape_dirs)
        joints = torch.einsum("jv,bvc->bjc", self.j_regressor, v)
        if v.shape == self.v_shaped.shape:
            self.v_shaped.copy_(v)
            self.joints.copy_(joints)
        else:
            self.v_shaped, self.joints = v, joints

    def forward(self, expression: torch.Tensor, pose: torch.Tensor, eyes: torch.Tensor,
                source_index: torch.Tensor | None = None) -> torch.Tensor:
        """expression [B,E], pose [B,6] (global, jaw), eyes [B,6], each frame's source
        ``source_index`` [B] (None: the one source, or frame i ↔ source i) → vertices [B,V,3] ×scale.

        One matrix product per frame (the expression and pose blendshapes and the expression's
        joint offsets, stacked in ``blend_dirs``); the kinematic chain and the skinning are
        elementwise products of 3×3/3×4 transforms (no tiny matmul kernels, exact float32)."""
        b = expression.shape[0]
        e = expression.to(self.blend_dirs.dtype)
        v_shaped, joints = self.v_shaped, self.joints
        if source_index is not None:
            v_shaped, joints = v_shaped.index_select(0, source_index), joints.index_select(0, source_index)
        neck = torch.zeros_like(pose[:, :3])
        full_pose = torch.cat([pose[:, :3], neck, pose[:, 3:], eyes], dim=1).to(e.dtype).view(b, -1, 3)
        rot = axis_angle_to_matrix(full_pose)  # [B,J,3,3]
        eye3 = torch.eye(3, dtype=e.dtype, device=e.device)
        blends = torch.cat([e, (rot[:, 1:] - eye3).reshape(b, -1)], dim=1) @ self.blend_dirs  # [B, 3V + 3J]
        n = v_shaped.shape[1] * 3
        v_posed = v_shaped + blends[:, :n].view(b, -1, 3)
        rest = joints + blends[:, n:].view(b, -1, 3)  # [B,J,3]
        # forward kinematics with integer parent indices (no index tensor to upload)
        rots, trans = [rot[:, 0]], [rest[:, 0]]
        for j, parent in enumerate(self.parents):
            if j == 0:
                continue
            rp = rots[parent]
            rots.append((rp[..., :, :, None] * rot[:, j, None, :, :]).sum(-2))
            trans.append((rp * (rest[:, j] - rest[:, parent])[..., None, :]).sum(-1) + trans[parent])
        rot_w, t_w = torch.stack(rots, dim=1), torch.stack(trans, dim=1)  # [B,J,3,3], [B,J,3]
        t_skin = t_w - (rot_w * rest[..., None, :]).sum(-1)  # transforms that act on rest-pose points
        skin = torch.cat([rot_w, t_skin[..., None]], dim=-1)  # [B,J,3,4]
        blend = (self.lbs_weights[None, :, :, None, None] * skin[:, None]).sum(2)  # [B,V,3,4]
        return ((blend[..., :3] * v_posed[:, :, None, :]).sum(-1) + blend[..., 3]) * self.scale


def viewmat_from_transform(transform: torch.Tensor, flip: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
    """:func:`model.geometry.transform_to_viewmat` without building constants on the host:
    transform [B,3,4], flip [3] = (−1, −1, 1), bottom [1,1,4] = (0, 0, 0, 1) → [B,4,4]."""
    rot, trans = transform[..., :3], transform[..., 3:]
    top = torch.cat([flip[:, None] * rot.transpose(-1, -2), flip[:, None] * trans], dim=-1)  # [B,3,4]
    return torch.cat([top, bottom.expand(transform.shape[0], 1, 4)], dim=1)


class _Graph:
    """A callable captured once as a CUDA graph (after warm-up on a side stream); replay()
    reruns it on whatever its static input buffers hold."""

    def __init__(self, fn: Callable[[], torch.Tensor | tuple], warmup: int = 3) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):  # lazy inits, cuDNN autotuning and compilation stay out of the graph
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = fn()

    def replay(self):
        self.graph.replay()
        return self.output


class Reenactor:
    """Source avatars, many driving frames. ``model`` and ``flame`` must be on the same device;
    both are put in eval mode. With ``channels_last`` or ``bf16_weights`` the StyleUNet runs from
    a converted copy (:func:`inference_renderer`): weights loaded into the model afterwards need a
    new Reenactor."""

    def __init__(self, model: GAGAvatar, flame: FlameModel, options: ReenactOptions | None = None) -> None:
        self.options = options or ReenactOptions()
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.flame = SourceFlame(flame).to(self.device)
        opts = self.options
        # the graphed path's FLAME: with compile, inductor fuses its ~90 small kernels into a few
        self._flame_fn = torch.compile(self.flame, dynamic=False) if opts.compile and opts.cuda_graphs else self.flame
        if opts.cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"ReenactOptions.cuda_graphs needs a CUDA model (this one is on {self.device}); "
                             "use ReenactOptions() on CPU")
        self.size = model.camera.image_size
        self.num_vertices = model.config.num_vertices
        # depth is not needed here: one channel less to splat
        self.raster_config = dataclasses.replace(model.rasterizer, render_depth=False)
        if opts.splat_quats:  # every cached quaternion is unit: normalising changes nothing
            self.raster_config = dataclasses.replace(self.raster_config, normalize_quats=True)
        self.backend = self._resolve_backend(opts.backend or model.rasterizer.backend, model.config.gaussian_channels)
        self.Ks = intrinsics(model.camera.focal, self.size, self.size, (1,), device=self.device)
        self._flip = torch.tensor([-1.0, -1.0, 1.0], device=self.device)  # PyTorch3D → OpenCV x/y
        self._bottom = torch.tensor([[[0.0, 0.0, 0.0, 1.0]]], device=self.device)
        self.renderer = None if model.upsampler is None else inference_renderer(model.upsampler, opts)
        self._renderer_fn = self.renderer
        if self.renderer is not None and opts.compile:
            self._renderer_fn = torch.compile(self.renderer, mode=opts.compile_mode, dynamic=False)
        self._cache: dict[str, torch.Tensor] | None = None  # per source [S, ...]
        self._slots: dict[str, Any] | None = None  # per frame of a batch [B, ...], gathered from _cache
        self._frame_graph: _Graph | None = None
        self._renderer_graphs: list[_Graph] = []  # one per renderer stream, each on its own input buffer
        self._features_in: list[torch.Tensor] = []
        self._recon_graph: _Graph | None = None
        self._recon_failed = False
        self._eager_stages: set[str] = set()  # stages whose graph capture failed
        self._render_streams: list[torch.cuda.Stream] = []  # pipelined mode
        self._render_done: list[torch.cuda.Event] = []
        self._frame_count = 0  # pipelined: frame k goes to renderer stream k mod renderer_streams
        self.notes: list[str] = []  # fallbacks taken (e.g. a graph that could not be captured)

    def _resolve_backend(self, name: str, channels: int) -> str:
        """"auto" resolved once here (the registry would look for packages on every frame)."""
        if name != "auto":
            return name
        from .rasterizer import available_backends

        avail = available_backends(self.device, channels)
        return "gsplat" if "gsplat" in avail else "inria" if "inria" in avail else "torch"

    # ------------------------------------------------------------------ source

    @property
    def num_sources(self) -> int:
        return 0 if self._cache is None else self._cache["lifted_points"].shape[0]

    @torch.no_grad()
    def set_source(self, image: torch.Tensor, shape: torch.Tensor, transform: torch.Tensor) -> None:
        """S sources: images [S,3,H,W] in [0,1], FLAME shapes [S,n_shape], cameras [S,3,4]."""
        S = image.shape[0]
        if shape.shape[0] != S or transform.shape[0] != S:
            raise ValueError(f"set_source: {S} images but {shape.shape[0]} shapes and {transform.shape[0]} cameras")
        dev = self.device
        image, transform = image.to(dev).float(), transform.to(dev).float()
        if self.options.cuda_graphs:
            cache = self._graphed_reconstruct(image, transform)
        else:
            with _autocast(dev, self.options.precision):
                cache = self.model.reconstruct(image, transform)
        attrs = GaussianAttributes.cat([cache.expression, cache.lifted])
        new = {
            **self._cached_shapes(attrs),
            "opacities": attrs.opacities.float().squeeze(-1),
            "colors": attrs.colors.float(),
            "lifted_points": cache.lifted_points.float(),
        }
        self.flame.set_shape(shape.to(dev).float().reshape(S, -1))
        if not self.options.cuda_graphs or self._cache is None or self.num_sources != S:
            self._cache = new
            self._drop_slots()
        else:  # the graphs read the per-frame buffers: refill cache and buffers in place, they stay valid
            for key, value in new.items():
                self._cache[key].copy_(value)
            if self._slots is not None:
                self._fill_slots(self._slots)

    def _cached_shapes(self, attrs: GaussianAttributes) -> dict[str, torch.Tensor]:
        """The Gaussians' shapes as the per-frame rasterizer call takes them. The released
        rasterizer builds R from the raw quaternion (docs/released_model.md, Quirks), so the covariances are built
        once; with ``splat_quats`` they are re-expressed as unit quaternions + scales."""
        rotations, scales = attrs.rotations.float(), attrs.scales.float()
        if not self.options.splat_quats:
            return {"covariances": self.model.covariance(rotations, scales)}
        if not self.model.covariance.normalize:  # the expression Gaussians' quaternions are not unit
            V = self.num_vertices
            q, s = quat_scale_from_covariance(self.model.covariance(rotations[:, :V], scales[:, :V]))
            rotations, scales = torch.cat([q, rotations[:, V:]], 1), torch.cat([s, scales[:, V:]], 1)
        return {"quats": F.normalize(rotations, dim=-1), "scales": scales}

    # ------------------------------------------------------------------ per-frame buffers

    SLOT_KEYS = ("quats", "scales", "covariances", "opacities", "colors", "lifted_points")

    def _drop_slots(self) -> None:
        """Forget the per-frame buffers and the graphs that read them (recaptured on next use);
        the current stream first waits for renderers still replaying them (their memory is freed)."""
        self.synchronize()
        self._slots, self._frame_graph = None, None
        self._renderer_graphs, self._features_in = [], []

    def _slots_for(self, batch: int, sources: tuple[int, ...] | None) -> dict[str, Any]:
        """Per-frame Gaussians for a batch whose frame i comes from source ``sources[i]``
        (default i mod S), gathered once per assignment: [B, N, ·] buffers, ``means`` [B,N,3]
        whose first V rows each frame's vertices overwrite, and ``index`` [B] (None for S = 1)."""
        cache = self._require_source()
        S = self.num_sources
        sources = tuple(i % S for i in range(batch)) if sources is None else tuple(int(i) for i in sources)
        if len(sources) != batch or not all(0 <= i < S for i in sources):
            raise ValueError(f"sources must give each of the {batch} frames a source in 0…{S - 1}, got {sources}")
        key = (batch, sources)
        if self._slots is not None and self._slots["key"] == key:
            return self._slots
        self._drop_slots()
        # one host→device copy per new assignment, not per frame
        index = torch.tensor(sources, dtype=torch.long, device=self.device)
        slots: dict[str, Any] = {"key": key, "index": None if S == 1 else index, "gather": index}
        for k in self.SLOT_KEYS:
            if k in cache:
                slots[k] = cache[k].index_select(0, index)
        V = self.num_vertices
        slots["means"] = torch.cat([slots["lifted_points"].new_zeros(batch, V, 3), slots["lifted_points"]], dim=1)
        self._slots = slots
        return slots

    def _fill_slots(self, slots: dict[str, Any]) -> None:
        """Refill the per-frame buffers in place from a new source cache (same assignment)."""
        for k in self.SLOT_KEYS:
            if k in slots:
                torch.index_select(self._cache[k], 0, slots["gather"], out=slots[k])
        slots["means"][:, self.num_vertices:].copy_(slots["lifted_points"])

    def _shape_args(self, slots: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        return {"quats": slots.get("quats"), "scales": slots.get("scales"), "covariances": slots.get("covariances")}

    def _graphed_reconstruct(self, image: torch.Tensor, transform: torch.Tensor):
        """model.reconstruct as a CUDA graph captured on the first sources (static input
        buffers; sources of another count or size recapture). The one-shot latency then has no
        launch gaps. Falls back to eager (noted in ``self.notes``) if the capture fails."""
        if self._recon_failed:
            with _autocast(self.device, self.options.precision):
                return self.model.reconstruct(image, transform)
        if self._recon_graph is None or self._recon_inputs[0].shape != image.shape:
            self._recon_inputs = (image.clone(), transform.clone())
            static_image, static_transform = self._recon_inputs

            def reconstruct():
                with _autocast(self.device, self.options.precision, cache=False):
                    return self.model.reconstruct(static_image, static_transform)

            try:
                self._recon_graph = _Graph(reconstruct, warmup=2)
            except RuntimeError as exc:  # keep working without the graph, and say so
                self._recon_failed = True
                self.notes.append(f"reconstruction graph capture failed, eager instead: {exc}")
                with _autocast(self.device, self.options.precision):
                    return self.model.reconstruct(image, transform)
        self._recon_inputs[0].copy_(image)
        self._recon_inputs[1].copy_(transform)
        return self._recon_graph.replay()

    @property
    def has_source(self) -> bool:
        return self._cache is not None

    def _require_source(self) -> dict[str, torch.Tensor]:
        if self._cache is None:
            raise RuntimeError("Reenactor: call set_source(image, shape, transform) before rendering frames")
        return self._cache

    # ------------------------------------------------------------------ per frame

    def vertices(self, expression: torch.Tensor, pose: torch.Tensor, eyes: torch.Tensor,
                 sources: tuple[int, ...] | None = None) -> torch.Tensor:
        """FLAME ×5 vertices [B,V,3] of the frames' source shapes with the drivers' expression
        [B,E], pose [B,6] (global, jaw) and eyes [B,6]."""
        slots = self._slots_for(expression.shape[0], sources)
        return self.flame(expression, pose, eyes, slots["index"])

    def _viewmat(self, transform: torch.Tensor) -> torch.Tensor:
        return viewmat_from_transform(transform.float(), self._flip, self._bottom)

    def _splat(self, means: torch.Tensor, transform: torch.Tensor, slots: dict[str, Any]):
        b = means.shape[0]
        shapes = self._shape_args(slots)
        with torch.autocast(device_type=self.device.type, enabled=False):
            return render_gaussians(
                means, shapes["quats"], shapes["scales"], slots["opacities"], slots["colors"],
                self._viewmat(transform), self.Ks.expand(b, 3, 3), self.size, self.size,
                covariances=shapes["covariances"], backend=self.backend, config=self.raster_config,
            )

    def _refine(self, features: torch.Tensor) -> torch.Tensor:
        if self._renderer_fn is None:
            return features[:, :3]
        x = features.contiguous(memory_format=torch.channels_last) if self.options.channels_last else features
        with _autocast(self.device, self.options.precision):
            return self._renderer_fn(x).float()

    @torch.no_grad()
    def __call__(self, expression: torch.Tensor, pose: torch.Tensor, eyes: torch.Tensor,
                 transform: torch.Tensor, sources: tuple[int, ...] | None = None) -> AvatarOutput:
        """Driver codes expression [B,E], pose [B,6], eyes [B,6] and camera [B,3,4] → AvatarOutput
        (coarse [B,3,S,S], refined [B,3,S,S] in (0,1), features, alpha); frame i shows source
        ``sources[i]`` (default i mod the number of sources)."""
        if self.options.cuda_graphs:
            return self._graphed(expression, pose, eyes, transform, sources)
        slots = self._slots_for(expression.shape[0], sources)
        verts = self.flame(expression, pose, eyes, slots["index"]).float()
        means = torch.cat([verts, slots["lifted_points"]], dim=1)
        out = self._splat(means, transform, slots)
        return AvatarOutput(coarse=out.image[:, :3], refined=self._refine(out.image), features=out.image,
                            alpha=out.alpha, lifted_points=slots["lifted_points"], depth=out.depth)

    # ------------------------------------------------------------------ CUDA graphs

    def _capture(self, name: str, fn: Callable[[], Any]) -> _Graph | None:
        """_Graph(fn), or None with a note when capture fails (that stage then runs eagerly)."""
        try:
            return _Graph(fn)
        except RuntimeError as exc:
            self.notes.append(f"{name} graph capture failed, eager instead: {exc}")
            return None

    def _graphed(self, expression: torch.Tensor, pose: torch.Tensor, eyes: torch.Tensor,
                 transform: torch.Tensor, sources: tuple[int, ...] | None) -> AvatarOutput:
        B, V = expression.shape[0], self.num_vertices
        slots = self._slots_for(B, sources)  # a new batch size or assignment drops the graphs
        if self._frame_graph is None and "frame" not in self._eager_stages:
            self._inputs = {
                "expression": expression.detach().clone().float(), "pose": pose.detach().clone().float(),
                "eyes": eyes.detach().clone().float(), "transform": transform.detach().clone().float(),
            }
            inp = self._inputs

            def frame() -> torch.Tensor:
                slots["means"][:, :V].copy_(self._flame_fn(inp["expression"], inp["pose"], inp["eyes"], slots["index"]))
                return self._viewmat(inp["transform"])

            self._frame_graph = self._capture("FLAME/camera", frame)
            if self._frame_graph is None:
                self._eager_stages.add("frame")
        if self._frame_graph is not None:
            for key, value in (("expression", expression), ("pose", pose), ("eyes", eyes), ("transform", transform)):
                self._inputs[key].copy_(value)
            viewmat = self._frame_graph.replay()
        else:
            slots["means"][:, :V].copy_(self.flame(expression, pose, eyes, slots["index"]))
            viewmat = self._viewmat(transform)
        shapes = self._shape_args(slots)
        with torch.autocast(device_type=self.device.type, enabled=False):
            out = render_gaussians(
                slots["means"], shapes["quats"], shapes["scales"], slots["opacities"], slots["colors"], viewmat,
                self.Ks.expand(B, 3, 3), self.size, self.size, covariances=shapes["covariances"],
                backend=self.backend, config=self.raster_config,
            )
        features = out.image
        if self.renderer is None:
            refined = features[:, :3]
        elif "renderer" in self._eager_stages:
            refined = self._refine(features)
        else:
            wanted = self.options.renderer_streams if self.options.pipelined else 1
            while len(self._renderer_graphs) < wanted:  # one more graph, on its own input buffer
                if not self._capture_renderer(features):
                    self._eager_stages.add("renderer")
                    return self._graphed(expression, pose, eyes, transform, sources)
            refined = self._replay_renderer(features)
        return AvatarOutput(coarse=features[:, :3], refined=refined, features=features, alpha=out.alpha,
                            lifted_points=slots["lifted_points"], depth=out.depth)

    @property
    def _renderer_graph(self) -> _Graph | None:
        """The first renderer graph (the only one unless pipelined on several streams)."""
        return self._renderer_graphs[0] if self._renderer_graphs else None

    def _capture_renderer(self, features: torch.Tensor) -> bool:
        """Capture one more renderer graph reading a new static input buffer; False if capture failed."""
        fmt = torch.channels_last if self.options.channels_last else torch.contiguous_format
        dtype = torch.bfloat16 if self.options.precision == "bf16" else torch.float32
        static = torch.empty_like(features, dtype=dtype, memory_format=fmt)
        static.copy_(features)

        def refine() -> torch.Tensor:
            with _autocast(self.device, self.options.precision, cache=False):
                return self._renderer_fn(static).float()

        graph = self._capture("neural renderer", refine)
        if graph is None:
            return False
        self._renderer_graphs.append(graph)
        self._features_in.append(static)
        return True

    def _replay_renderer(self, features: torch.Tensor) -> torch.Tensor:
        if not self.options.pipelined:
            self._features_in[0].copy_(features)  # one kernel: float32 NCHW → bf16 NHWC
            return self._renderer_graphs[0].replay()
        n = self.options.renderer_streams
        while len(self._render_streams) < n:
            self._render_streams.append(torch.cuda.Stream())
            self._render_done.append(torch.cuda.Event())
            self._render_done[-1].record()
        k = self._frame_count % n
        self._frame_count += 1
        stream, done = self._render_streams[k], self._render_done[k]
        current = torch.cuda.current_stream()
        current.wait_event(done)  # the renderer of frame −n has read this input buffer
        self._features_in[k].copy_(features)
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            refined = self._renderer_graphs[k].replay()
            done.record()
        return refined

    def synchronize(self) -> None:
        """Make the current stream wait for the pipelined renderers (no host sync): after this,
        the last frames' ``refined`` may be read on the current stream."""
        current = torch.cuda.current_stream() if self._render_streams else None
        for stream in self._render_streams:
            current.wait_stream(stream)

    # ------------------------------------------------------------------ helpers

    @torch.no_grad()
    def render_params(self, params: torch.Tensor, sources: tuple[int, ...] | None = None) -> AvatarOutput:
        """Driver frames as flat tracked parameters [B,428] (model.frame_params layout;
        their shape codes are ignored: the sources' are used)."""
        from .frame_params import split_params

        p = split_params(params.to(self.device).float())
        return self(p["expression"], p["pose"], p["eyes"], p["transform_matrix"], sources)
