"""The tiled Triton nearest-point search finds the brute-force nearest points (distances equal)
at the training sizes, with no host synchronisation, and gives the same lifting loss and
gradients as the compiled reduction.

Run on the GPU machine: ``python -m pytest -q -m gpu tests/test_nearest_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _distances(q: torch.Tensor, p: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return (q - torch.gather(p, 1, index[..., None].expand(-1, -1, 3))).pow(2).sum(-1)


@pytest.mark.parametrize("V,P", [(5023, 60_000), (70, 129), (1, 1)])
def test_triton_search_matches_brute_force(V, P):
    from model.nearest_triton import nearest_index

    torch.manual_seed(0)
    q, p = torch.randn(3, V, 3, device="cuda"), torch.randn(3, P, 3, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        index = nearest_index(q, p)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    brute = torch.cat([torch.cdist(q[:, i:i + 512].double(), p.double()).argmin(-1) for i in range(0, V, 512)], 1)
    torch.testing.assert_close(_distances(q, p, index), _distances(q, p, brute), rtol=0, atol=1e-6)


def test_triton_and_fused_give_the_same_lifting_loss_and_gradients():
    from model.losses import nearest_sq_distances

    torch.manual_seed(1)
    q = torch.randn(2, 5023, 3, device="cuda")
    results = {}
    for search in ("fused", "triton"):
        p = (torch.randn(2, 40_000, 3, device="cuda", generator=torch.Generator("cuda").manual_seed(2))).requires_grad_()
        loss = nearest_sq_distances(q, p, search=search).mean()
        loss.backward()
        results[search] = (loss.detach(), p.grad)
    torch.testing.assert_close(results["triton"][0], results["fused"][0], rtol=1e-5, atol=0)
    torch.testing.assert_close(results["triton"][1], results["fused"][1], rtol=1e-4, atol=1e-7)
