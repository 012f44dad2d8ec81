import pytest
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


def _renderer(noise):
    from model.config import RendererConfig
    from model.style_unet import StyleConv, StyleUNet

    torch.manual_seed(0)
    cfg = RendererConfig(base_channels=4, max_channels=8, style_dim=16, style_mlp_layers=2, noise=noise)
    net = StyleUNet(5, 32, cfg).eval()
    with torch.no_grad():
        for m in net.modules():  # noise strengths start at 0 (StyleGAN): make the noise visible
            if isinstance(m, StyleConv):
                m.weight.fill_(0.5)
    return net


def test_stored_noise_renders_are_bit_identical_and_random_noise_renders_differ():
    x = torch.rand(2, 5, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stored = _renderer("stored")
        a, b = stored(x), stored(x)
        assert torch.equal(a, b)
        random = _renderer(True)
        assert not torch.equal(random(x), random(x))
        off = _renderer(False)
        assert not torch.equal(off(x), a)  # the stored maps are really added
        # "stored" reads the decoder's buffers (the released checkpoint's noises.noiseN)
        stored.stylegan_decoder.noises.noise3.add_(1.0)
        assert not torch.equal(stored(x), a)
    assert stored.stylegan_decoder.style_convs[0].weight.requires_grad  # noise strengths still train
    assert not off.stylegan_decoder.style_convs[0].weight.requires_grad


def test_renderer_noise_config_value():
    from pipeline.config import load_config

    assert load_config("smoke", ["model.renderer.noise=stored"]).model.renderer.noise == "stored"
    with pytest.raises(ValueError, match="noise"):
        load_config("smoke", ["model.renderer.noise=fixed"])


def test_halving_is_the_2x2_average_the_bilinear_resize_gives():
    from model.style_unet import _resample

    x = torch.randn(2, 3, 16, 12, dtype=torch.float64)
    want = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
    assert (_resample(x, 0.5) - want).abs().max() < 1e-12
    assert (_resample(x, 2) - F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)).abs().max() == 0
