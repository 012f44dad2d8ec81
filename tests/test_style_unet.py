import torch
import torch.nn.functional as F

from model.style_unet import ModulatedConv2d


def grouped_reference(m: ModulatedConv2d, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """StyleGAN2's fused form: a per-sample modulated (and demodulated) weight, one grouped conv."""
    b, c = x.shape[:2]
    w = m.weight * m.modulation(style).view(b, 1, c, 1, 1)
    if m.demodulate:
        w = w * torch.rsqrt(w.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
    if m.upsample:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    h, wd = x.shape[-2:]
    out = F.conv2d(x.reshape(1, b * c, h, wd), w.reshape(b * m.out_ch, c, *w.shape[-2:]), padding=m.padding, groups=b)
    return out.view(b, m.out_ch, h, wd)


def test_batched_modulated_conv_equals_the_grouped_form():
    torch.manual_seed(0)
    for upsample in (False, True):
        for demodulate, kernel in ((True, 3), (False, 1)):
            m = ModulatedConv2d(8, 6, kernel, 16, demodulate, upsample).double()
            x, style = torch.randn(3, 8, 10, 10, dtype=torch.float64), torch.randn(3, 16, dtype=torch.float64)
            assert (m(x, style) - grouped_reference(m, x, style)).abs().max() < 1e-12
