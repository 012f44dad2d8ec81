"""GPU tests of the network and the perceptual loss (skipped without CUDA, see conftest.py).

``LPIPS_EQUALITY_OUT`` (env): where the LPIPS comparison writes its report (default: pytest's
tmp dir), e.g. ``bench/results/lpips_equality.txt``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from model.config import CameraConfig, LossConfig, ModelConfig, OptimConfig, RasterizerConfig
from model.gagavatar import GAGAvatar
from model.losses import GAGAvatarLoss
from model.optim import build_optimizer
from model.perceptual import LPIPS, AlexNetFeatures

pytestmark = pytest.mark.gpu


def _has(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@pytest.fixture(scope="module")
def paper_model() -> GAGAvatar:
    torch.manual_seed(0)
    return GAGAvatar(ModelConfig(), CameraConfig(), RasterizerConfig(backend="gsplat")).cuda()


@pytest.mark.skipif(not _has("gsplat"), reason="needs gsplat")
def test_paper_preset_forward_backward_bf16_gsplat_batch8(paper_model):
    from bench.model_step import synthetic_batch, train_step

    device = torch.device("cuda")
    model = paper_model.train()
    with pytest.warns(UserWarning, match="RANDOM AlexNet"):
        loss_fn = GAGAvatarLoss(LossConfig()).to(device)
    optimizer, scheduler = build_optimizer(model, OptimConfig())
    data = synthetic_batch(8, 512, device)
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(data["source"], data["source_T"], data["vertices"], data["target_T"])
    assert out.refined.shape == (8, 3, 512, 512) and out.features.shape == (8, 32, 512, 512)
    assert out.lifted_points.shape == (8, 2 * 296 * 296, 3)
    assert float(out.alpha.detach().mean()) > 0.2
    del out
    terms = train_step(model, loss_fn, optimizer, scheduler, data, "bf16")
    assert all(torch.isfinite(v) for v in terms.values()), terms
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in model.base_model.dino_model.parameters())
    print("peak GiB", torch.cuda.max_memory_allocated() / 2**30, {k: float(v) for k, v in terms.items()})


@pytest.mark.skipif(not _has("gsplat"), reason="needs gsplat")
def test_paper_cached_render_equals_forward_with_gsplat(paper_model):
    from bench.model_step import synthetic_batch

    model = paper_model.eval()
    model.upsampler.noise = False  # deterministic StyleUNet for the comparison
    try:
        data = synthetic_batch(2, 512, "cuda", seed=3)
        other = synthetic_batch(2, 512, "cuda", seed=4)
        with torch.no_grad():
            cache = model.reconstruct(data["source"], data["source_T"])
            for frame in (data, other):
                cached = model.render(cache, frame["vertices"], frame["target_T"])
                full = model(data["source"], data["source_T"], frame["vertices"], frame["target_T"])
                diff = float((cached.refined - full.refined).abs().max())
                print("cached vs forward max|diff|", diff)
                assert diff < 1e-5
                assert float((cached.features - full.features).abs().max()) < 1e-5
    finally:
        model.upsampler.noise = True


@pytest.mark.skipif(not (_has("lpips") and _has("torchvision")), reason="needs lpips and torchvision")
def test_lpips_equals_the_lpips_package(tmp_path):
    import lpips

    torch.manual_seed(0)
    # pretrained=True reads the linear heads from the wheel; pnet_rand=True builds torchvision's
    # AlexNet without downloading its ImageNet weights — we copy them into ours instead
    ref = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, pnet_tune=False, verbose=False).cuda().eval()
    ours_alex = AlexNetFeatures()
    copied = {}
    for key, value in ref.net.state_dict().items():  # sliceK.N.weight → features.N.weight
        _, idx, param = key.split(".")
        copied[f"features.{idx}.{param}"] = value
    ours_alex.load_state_dict(copied)
    ours = LPIPS(ours_alex.requires_grad_(False).eval()).cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    lines = ["LPIPS equality: model.perceptual.LPIPS (our AlexNet + lpips' v0.1 linear heads) vs",
             f"lpips.LPIPS(net='alex', pretrained=True, pnet_rand=True) {getattr(lpips, '__version__', '')},",
             "our AlexNet loaded with the lpips network's (random) AlexNet weights; inputs in [0,1],",
             "lpips called with normalize=True. GPU: " + torch.cuda.get_device_name(0), ""]
    worst = 0.0
    for size, batch in ((64, 4), (224, 4), (512, 2)):
        x = torch.rand(batch, 3, size, size, generator=g, device="cuda")
        y = (x + 0.2 * torch.randn(batch, 3, size, size, generator=g, device="cuda")).clamp(0, 1)
        z = torch.rand(batch, 3, size, size, generator=g, device="cuda")
        for name, (a, b) in (("noisy pair", (x, y)), ("independent", (x, z)), ("identical", (x, x))):
            with torch.no_grad():
                r = ref(a, b, normalize=True).flatten().double()
                o = ours(a, b).double()
            diff = float((r - o).abs().max())
            worst = max(worst, diff)
            lines.append(f"{size:4d}² ×{batch} {name:12s} lpips {[round(v, 6) for v in r.tolist()]} "
                         f"ours {[round(v, 6) for v in o.tolist()]} max|diff| {diff:.3e}")
    lines.append(f"\nworst max|diff| = {worst:.3e} (threshold 1e-5)")
    out = Path(os.environ.get("LPIPS_EQUALITY_OUT", tmp_path / "lpips_equality.txt"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    assert worst < 1e-5


@pytest.mark.skipif(not _has("timm"), reason="needs timm")
def test_dinov2_matches_timm_vit_base_patch14_dinov2(monkeypatch):
    import timm

    from model.config import BackboneConfig
    from model.dinov2 import DinoVisionTransformer, convert_dinov2_state_dict

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # restored for the next tests
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    ref = timm.create_model("vit_base_patch14_dinov2", pretrained=False, num_classes=0).cuda().eval()
    ours = DinoVisionTransformer(BackboneConfig()).cuda().eval()
    ours.load_state_dict(convert_dinov2_state_dict(ref.state_dict()))
    x = torch.randn(2, 3, 518, 518, device="cuda")
    with torch.no_grad():
        tokens = ref.forward_features(x)  # [B, 1+N, C] after the final norm
        maps = ours.get_intermediate_layers(x, 4)
    assert maps[-1].shape == (2, 768, 37, 37)
    diff = float((maps[-1].flatten(2).transpose(1, 2) - tokens[:, 1:]).abs().max())
    print("dinov2 vs timm max|diff|", diff)
    assert diff < 1e-3
