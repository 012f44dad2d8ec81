"""Bilinear resizing by interpolation matrices (model.resize) gives what ``F.interpolate`` gives,
forward and backward, in both memory layouts, and is what a compiled step with a gradient runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.resize import _by_matrices, bilinear_resize, interpolation_matrix


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shapes", [((5, 7), (10, 14)), ((37, 37), (74, 74)), ((9, 6), (4, 11))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matrices_give_interpolate_and_its_gradient(align_corners, shapes, channels_last):
    (h, w), size = shapes
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, h, w, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weights = torch.randn(2, 3, *size, generator=g, dtype=torch.float64)
    outs, grads = [], []
    for fn in (lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=align_corners),
               lambda t: _by_matrices(t, size, align_corners)):
        leaf = x.clone().requires_grad_(True)
        out = fn(leaf)
        (out * weights).sum().backward()
        outs.append(out)
        grads.append(leaf.grad)
    assert outs[1].shape == (2, 3, *size)
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-12)
    assert outs[1].is_contiguous(memory_format=torch.channels_last) == channels_last


def test_interpolation_matrix_rows_are_convex_weights_of_at_most_two_inputs():
    m = interpolation_matrix(37, 74, True, torch.device("cpu"), torch.float32)
    assert m.shape == (74, 37)
    torch.testing.assert_close(m.sum(1), torch.ones(74))
    assert int((m > 0).sum(1).max()) == 2 and float(m.min()) >= 0
    assert m[0, 0] == 1 and m[-1, -1] == 1  # align_corners: the corners are kept


def test_compiled_bf16_with_gradient_uses_the_matrices_and_eager_uses_interpolate(monkeypatch):
    calls = []
    import model.resize as resize

    real = resize._by_matrices
    monkeypatch.setattr(resize, "_by_matrices", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(1, 2, 4, 4, dtype=torch.bfloat16, requires_grad=True)
    eager = bilinear_resize(x, (8, 8), align_corners=False)
    assert calls == []
    compiled = torch.compile(lambda t: bilinear_resize(t, (8, 8), align_corners=False), backend="eager")(x)
    assert calls == [1]
    torch.testing.assert_close(compiled.float(), eager.float(), rtol=1e-2, atol=1e-2)  # bf16 matmul vs interpolate
    with torch.no_grad():
        torch.compile(lambda t: bilinear_resize(t, (8, 8), align_corners=False), backend="eager")(x)
    assert calls == [1]  # no gradient: interpolate
