"""Perceptual networks for the training loss, in our own code (no torchvision, no lpips import).

- :class:`AlexNetFeatures`: torchvision's AlexNet ``features`` (parameters ``features.{0,3,6,8,10}``)
  returning relu1…relu5; weights from torchvision's ``alexnet-owt-7be5be79.pth``, lpips'
  ``net.sliceK.N`` layout or the released ``GAGAvatar.pt`` (``percep_loss.net.sliceK.N``).
- :class:`LPIPS`: LPIPS v0.1 with that AlexNet and lpips' learned linear heads
  (``weights/v0.1/alex.pth`` inside the installed lpips package, found without importing it).
- :class:`VGGFaceFeatures` and :class:`FacePerceptualLoss`: the released loss (docs/released_model.md, 'Training recipe').
- :func:`build_perceptual`: what ``LossConfig.perceptual`` asks for.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from model.config import LossConfig
from model.dinov2 import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

ALEX_CHANNELS = (64, 192, 384, 256, 256)
ALEX_RELU_INDICES = (1, 4, 7, 9, 11)  # relu1…relu5 in torchvision's alexnet.features
# torchvision vgg16.features indices of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
VGG_RELU_INDICES = (1, 6, 11, 18, 25)
VGG_CONV_NAMES = {0: "conv1_1", 2: "conv1_2", 5: "conv2_1", 7: "conv2_2", 10: "conv3_1", 12: "conv3_2",
                  14: "conv3_3", 17: "conv4_1", 19: "conv4_2", 21: "conv4_3", 24: "conv5_1", 26: "conv5_2",
                  28: "conv5_3"}
VGGFACE_MEAN = (129.186279296875, 104.76238250732422, 93.59396362304688)  # RGB, 0–255 scale


def _frozen(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


def normalize_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit L2 norm over channels per pixel (lpips' ``normalize_tensor``)."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def tapped_features(layers: nn.Sequential, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
    """Run ``layers`` on ``x``, keeping the outputs of the layers at indices ``taps``."""
    outs = []
    for i, layer in enumerate(layers):
        x = layer(x)
        if i in taps:
            outs.append(x)
    return outs


def _load_file(path: str | Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # the released GAGAvatar.pt
    return state


class AlexNetFeatures(nn.Module):
    """torchvision AlexNet ``features`` up to relu5: [B,3,H,W] → 5 maps (64/192/384/256/256 ch)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return tapped_features(self.features, x, ALEX_RELU_INDICES)


def alexnet_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """AlexNet conv weights as ``features.N.{weight,bias}`` from torchvision's file, lpips'
    ``net.sliceK.N`` / ``sliceK.N`` layout or a GAGAvatar checkpoint (``percep_loss.net.``)."""
    state = _load_file(path)
    out = {}
    for key, value in state.items():
        for prefix in ("percep_loss.net.", "net.", ""):
            if key.startswith(prefix):
                rest = key[len(prefix):]
                break
        parts = rest.split(".")
        if parts[0] == "features":
            name = rest
        elif parts[0].startswith("slice") and len(parts) == 3:
            name = f"features.{parts[1]}.{parts[2]}"
        else:
            continue
        if int(name.split(".")[1]) in (0, 3, 6, 8, 10):
            out[name] = value
    if len(out) != 10:
        raise ValueError(f"{path}: found {len(out)} of the 10 AlexNet conv tensors ({sorted(out)})")
    return out


def build_alexnet(path: str | Path | None) -> AlexNetFeatures:
    """A frozen AlexNet with the weights at ``path``; without one, random weights and a loud warning."""
    net = AlexNetFeatures()
    if path:
        net.load_state_dict(alexnet_state_dict(path))
    else:
        msg = ("loss.alexnet_weights is not set: the perceptual loss uses a RANDOM AlexNet and is NOT "
               "LPIPS / the released perceptual loss. Point it at torchvision's alexnet-owt-7be5be79.pth.")
        log.warning(msg)
        warnings.warn(msg, stacklevel=2)
    return _frozen(net)


def lpips_weights_path() -> Path:
    """lpips' ``weights/v0.1/alex.pth`` inside the installed package (not imported: it needs
    torchvision)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the lpips package is not installed (pip install --no-deps lpips), and "
                                "loss.lpips_weights is not set")
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / "alex.pth"


class LPIPS(nn.Module):
    """LPIPS v0.1 (AlexNet): Σ_l mean_hw w_l·(n(φ_l(x)) − n(φ_l(y)))², n = channel normalisation,
    inputs scaled like lpips (``normalize=True``: [0,1] → [−1,1], then its ScalingLayer)."""

    def __init__(self, alexnet: AlexNetFeatures, linear_weights: str | Path | None = None) -> None:
        super().__init__()
        self.net = alexnet
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in ALEX_CHANNELS)
        state = torch.load(linear_weights or lpips_weights_path(), map_location="cpu", weights_only=True)
        for k, lin in enumerate(self.lins):
            lin.weight.data.copy_(state[f"lin{k}.model.1.weight"])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        _frozen(self)

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # frozen: always in eval mode

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y [B,3,H,W] in [0,1] → [B] distances."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x, y = x.float(), y.float()
            fx = self.net((2 * x - 1 - self.shift) / self.scale)
            fy = self.net((2 * y - 1 - self.shift) / self.scale)
            total = x.new_zeros(x.shape[0])
            for lin, a, b in zip(self.lins, fx, fy):
                total = total + lin((normalize_channels(a) - normalize_channels(b)).pow(2)).mean(dim=(1, 2, 3))
        return total


class VGGFaceFeatures(nn.Module):
    """torchvision vgg16 ``features`` up to relu5_1 (``features.{0,2,5,…,24}``; conv5_2/5_3 are
    loaded when present but unused); VGG-Face input normalisation inside."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for block, (ch, n) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 1))):
            for _ in range(n):
                layers += [nn.Conv2d(in_ch, ch, 3, padding=1), nn.ReLU()]
                in_ch = ch
            if block < 4:
                layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)  # 26 layers: 0 … 25 (relu5_1)
        self.register_buffer("mean", torch.tensor(VGGFACE_MEAN).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return tapped_features(self.features, x * 255.0 - self.mean, VGG_RELU_INDICES)


def vggface_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """VGG-Face conv weights as ``features.N`` from ``vgg_face_dag.pth`` (``conv1_1.weight``…),
    a torchvision-style ``features.N`` file or a GAGAvatar checkpoint (``percep_loss.vggface.network.N``)."""
    state = _load_file(path)
    out = {}
    for idx, name in VGG_CONV_NAMES.items():
        if idx > 24:
            continue
        for cand in (f"{name}.", f"features.{idx}.", f"percep_loss.vggface.network.{idx}."):
            if f"{cand}weight" in state:
                out[f"features.{idx}.weight"] = state[f"{cand}weight"]
                out[f"features.{idx}.bias"] = state[f"{cand}bias"]
                break
        else:
            raise ValueError(f"{path}: no VGG-Face weights for {name} (features.{idx})")
    return out


class FacePerceptualLoss(nn.Module):
    """The released ``FacePerceptualLoss`` (L1 variant, weighted): Σ_l w_l·mean_{b,hw} Σ_c
    |n(φ_l(x)) − n(φ_l(y))| over AlexNet relu1–5 on ImageNet-normalised inputs, w = [0.1, 0.1,
    1, 1, 1], plus 0.5·w_l × the same over VGG-Face relu1_1…relu5_1 when ``vggface`` is given."""

    weights = (0.1, 0.1, 1.0, 1.0, 1.0)

    def __init__(self, alexnet: AlexNetFeatures, vggface: VGGFaceFeatures | None = None) -> None:
        super().__init__()
        self.net = alexnet
        self.vggface = vggface
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        _frozen(self)

    def train(self, mode: bool = True) -> FacePerceptualLoss:
        return super().train(False)

    @staticmethod
    def _distance(fx: list[torch.Tensor], fy: list[torch.Tensor], weights: tuple[float, ...]) -> torch.Tensor:
        total = fx[0].new_zeros(fx[0].shape[0])
        for w, a, b in zip(weights, fx, fy):
            d = (normalize_channels(a) - normalize_channels(b)).abs().sum(dim=1).mean(dim=(1, 2))
            total = total + w * d
        return total

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y [B,3,H,W] in [0,1] → [B] (their batch mean is the released scalar)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x, y = x.float(), y.float()
            total = self._distance(self.net((x - self.mean) / self.std), self.net((y - self.mean) / self.std),
                                   self.weights)
            if self.vggface is not None:
                total = total + self._distance(self.vggface(x), self.vggface(y), tuple(0.5 * w for w in self.weights))
        return total


def build_perceptual(config: LossConfig) -> nn.Module | None:
    """The perceptual network ``config.perceptual`` names (frozen), or None for "none".
    Called with images x, y [B,3,H,W] in [0,1] it returns [B] distances."""
    if config.perceptual == "none":
        return None
    alexnet = build_alexnet(config.alexnet_weights)
    if config.perceptual == "lpips":
        return LPIPS(alexnet, config.lpips_weights)
    vggface = None
    if config.vggface_weights:
        vggface = VGGFaceFeatures()
        vggface.load_state_dict(vggface_state_dict(config.vggface_weights))
    return FacePerceptualLoss(alexnet, vggface)
