"""Image metrics on [0,1] images: PSNR and SSIM (Wang et al.; Gaussian window σ=1.5, 11 taps,
population covariance, computed where the window lies inside the image — scikit-image's
``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=1)`` and torchmetrics' SSIM give the same numbers)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """[B,C,H,W] × 2 → [B] peak signal-to-noise ratio in dB."""
    mse = (prediction.float() - target.float()).square().flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def _gaussian_window(sigma: float, truncate: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5,
         truncate: float = 3.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """[B,C,H,W] × 2 → [B] mean SSIM over channels and valid window positions."""
    x, y = prediction.double(), target.double()
    c = x.shape[1]
    w = _gaussian_window(sigma, truncate, x.device, x.dtype)
    kx = w.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    ky = w.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable valid convolution
        return F.conv2d(F.conv2d(t, kx, groups=c), ky, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1).to(prediction.dtype)


def build_lpips_metric(alexnet_weights: str | None, lpips_weights: str | None = None) -> tuple[torch.nn.Module, str]:
    """LPIPS v0.1 (AlexNet) as an evaluation metric, and the line that names it in results.
    Without ``alexnet_weights`` (torchvision's ``alexnet-owt-7be5be79.pth``) the backbone is random
    and the name says so: such numbers are not comparable with anyone's LPIPS."""
    import warnings

    from .perceptual import LPIPS, build_alexnet, lpips_weights_path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # build_alexnet's random-weights warning: the name below says it
        net = LPIPS(build_alexnet(alexnet_weights), lpips_weights)
    heads = lpips_weights or str(lpips_weights_path())
    if alexnet_weights:
        return net, f"LPIPS v0.1 AlexNet (backbone {alexnet_weights}; linear heads {heads})"
    return net, ("LPIPS with a RANDOM AlexNet backbone — not comparable (set eval.alexnet_weights or "
                 "loss.alexnet_weights to torchvision's alexnet-owt-7be5be79.pth)")
