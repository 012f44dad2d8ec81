"""Configs of the model library. The defaults are the released GAGAvatar's numbers (docs/released_model.md, Constants);
the ``smoke``, ``debug`` and ``demo`` presets (``pipeline/presets/``) shrink them. Nothing else restates them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class CameraConfig:
    """The tracker's camera convention (docs/released_model.md, Tracker convention): PyTorch3D NDC focal, square crops."""

    focal: float = 12.0  # NDC units: fx = focal * image_size / 2 pixels
    image_size: int = 512  # tracker crop, training target and render resolution


@dataclass(frozen=True)
class FlameConfig:
    """FLAME 2020 head model. ``path``: ``generic_model.pkl`` (FLAME 2020) or GAGAvatar's
    ``FLAME_with_eye.pt``; ``None`` uses the project's generated stand-in head (same formats)."""

    path: str | None = None
    landmark_embedding: str | None = None  # DECA's landmark_embedding.npy, for generic_model.pkl only
    n_shape: int = 300
    n_expression: int = 100
    scale: float = 5.0  # GAGAvatar multiplies FLAME vertices by 5


@dataclass(frozen=True)
class RasterizerConfig:
    backend: Literal["auto", "torch", "gsplat", "inria"] = "auto"
    # torch reference: Gaussians per chunk when compositing (bounds memory on CPU)
    torch_chunk_size: int = 4096
    near_plane: float = 0.01
    far_plane: float = 100.0
    # False: rotation matrices from the raw quaternion, as the released model's rasterizer
    # (graphdeco's computeCov3D) builds them; True: normalise each quaternion first (gsplat).
    normalize_quats: bool = False
    render_depth: bool = True  # expected depth Σwz/Σw as RenderOutput.depth (one more channel)
    # torch reference: square pixel tiles, and the most (tile pixel × Gaussian) pairs evaluated
    # in one compositing step; each step is recomputed in backward when more than one is needed.
    torch_tile_size: int = 8
    torch_max_elements: int = 1 << 25
    torch_recompute: bool = True


@dataclass(frozen=True)
class BackboneConfig:
    """DINOv2 ViT (official ``dinov2_vitb14`` names). ``weights``: a local state dict file, in the
    official or timm layout (``model.dinov2.load_dinov2_state_dict``); None keeps random weights."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 14
    input_size: int = 518  # 37 patches of 14; the source image is resized (antialiased) to this
    # image size the stored positional embedding was trained for (518 → [1, 1 + 37², C]); other
    # input sizes interpolate it bicubically, as DINOv2 does
    pretrained_size: int = 518
    mlp_ratio: float = 4.0
    weights: str | None = None
    frozen: bool = True  # no gradients, always in eval mode (the released model freezes DINOv2)


@dataclass(frozen=True)
class DecoderConfig:
    """DPT-style decoder from the last four ViT blocks to the local feature map (docs/released_model.md, Architecture)."""

    reassemble_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    fusion_dim: int = 256  # layer_rn / refinenet width
    feature_dim: int = 256  # output_conv channels = the lifting heads' input


@dataclass(frozen=True)
class ExpressionConfig:
    """Expression Gaussians: one per FLAME vertex (docs/released_model.md, Quirks)."""

    global_feature: bool = True  # ablation "w/o global feature": the MLP sees only the vertex embedding
    embed_dim: int = 256  # head_base width
    hidden_dim: int = 256  # feature_layers width
    # "official": normalise the [B,V,4] rotation output across vertices as the released model does
    # (docs/released_model.md, Quirks); "per_gaussian": normalise each quaternion (for models trained from scratch).
    rotation_norm: Literal["official", "per_gaussian"] = "official"


@dataclass(frozen=True)
class RendererConfig:
    """StyleUNet neural renderer (splat features → RGB, docs/released_model.md, Architecture). Widths per resolution r of an
    output of size S: UNet min(max_channels, base_channels·S/r), StyleGAN decoder twice that."""

    enabled: bool = True  # ablation "w/o neural renderer": the coarse splat is the output
    base_channels: int = 16  # UNet width at full resolution
    max_channels: int = 256  # UNet width cap (StyleGAN decoder: 2×)
    style_dim: int = 512
    style_mlp_layers: int = 8
    # StyleGAN noise injection. true: fresh random noise at every call, inference included (the
    # released model's randomize_noise=True); "stored": the decoder's 15 fixed noise maps
    # (stylegan_decoder.noises.noiseN, its randomize_noise=False path: bit-reproducible renders);
    # false: none (the noise strengths are then frozen)
    noise: Literal[True, False, "stored"] = True


@dataclass(frozen=True)
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    expression: ExpressionConfig = field(default_factory=ExpressionConfig)
    renderer: RendererConfig = field(default_factory=RendererConfig)
    # "one_plane" (ablation): a single lifting head, stored as gs_generator_l0, lifting towards the
    # side named by one_plane_side ("front": towards the camera, the visible surface, like plane 1;
    # "back": away from it, like plane 0)
    lifting: Literal["dual", "one_plane"] = "dual"
    one_plane_side: Literal["front", "back"] = "front"
    plane_size: int = 296  # lifting plane points per side (meta_cfg DATASET.POINT_PLANE_SIZE)
    gaussian_channels: int = 32  # splatted feature channels; 0–2 are the coarse RGB
    head_hidden_dim: int = 128
    harmonic_functions: int = 4  # view-direction encoding: 3·(2·4) + 3 = 27 dims
    num_vertices: int = 5023
    max_scale: float = 0.05  # Gaussian scales are max_scale·sigmoid(·)
    # "official": the released lifting heads apply the colour sigmoid to the first 3 pixel
    # *columns* of all channels (docs/released_model.md, Quirks), needed for its weights; "rgb": to channels 0–2
    plane_color_activation: Literal["official", "rgb"] = "official"


@dataclass(frozen=True)
class LossConfig:
    """Training losses (docs/released_model.md, Training recipe). Every weight 0 disables its term."""

    image_weight: float = 1.0  # 0.5 * (L1 coarse + L1 refined) on the full image
    box_weight: float = 1.0  # same on the head box crops
    box_expand: float = 1.1
    box_size: int = 512  # crops are resized to this before L1/perceptual
    # "lpips": LPIPS-AlexNet; "official": the released FacePerceptualLoss (AlexNet, + VGG-Face
    # when vggface_weights is given); "none"
    perceptual: Literal["lpips", "official", "none"] = "lpips"
    perceptual_weight: float = 0.01
    alexnet_weights: str | None = None  # torchvision alexnet-owt-7be5be79.pth (or GAGAvatar.pt)
    vggface_weights: str | None = None  # vgg_face_dag.pth (or GAGAvatar.pt); "official" only
    lpips_weights: str | None = None  # lpips' weights/v0.1/alex.pth; None: from the lpips package
    lifting_weight: float = 10.0  # 0 disables the lifting loss (ablation)
    lifting_chunk_size: int = 1024  # FLAME vertices per nearest-neighbour chunk
    # on CUDA: "triton", one tiled Triton kernel (model/nearest_triton.py); "fused", one
    # torch.compile'd reduction (no [B,V,P] distance tensor; 16 ms of a training step on an H100);
    # "chunked": matmul blocks (always used on CPU). All three are exhaustive (exact nearest point).
    lifting_search: Literal["fused", "chunked", "triton"] = "triton"
    lifting_point_chunk_size: int = 16384  # lifted points per nearest-neighbour chunk
    ssim_weight: float = 0.0  # weight of 0.5·[(1−SSIM coarse) + (1−SSIM refined)], full image


@dataclass(frozen=True)
class OptimConfig:
    """Adam with the released parameter groups and linear decay (docs/released_model.md, Training recipe)."""

    lr: float = 1.0e-4
    style_lr: float = 1.0e-5  # params whose names contain style_mlp or final_linear
    betas: tuple[float, float] = (0.0, 0.99)
    eps: float = 1.0e-8
    weight_decay: float = 0.0
    decay_steps: int = 200_000
    final_lr_factor: float = 0.1
    grad_clip: float = 0.0  # 0 disables clipping
