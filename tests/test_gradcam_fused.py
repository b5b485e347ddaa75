"""Fused Triton Grad-CAM maps + overlap against the plain-torch reference.

Runs on the CPU under the Triton interpreter (set below, before `fused` is imported, so the
module does not depend on conftest); sizes are small because the interpreter is slow.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")

from ex2l_domainbed.gradcam import fused  # noqa: E402
from ex2l_domainbed.gradcam.overlap import overlap  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(5, 37, 7, 7), (1, 130, 5, 3), (2, 3, 1, 1)]   # odd h*w, K off the block size


def _reference(features, weights, measure, eps=1e-6):
    maps = torch.relu(torch.einsum("bmk,bkhw->bmhw", weights, features))
    return overlap(maps[:, 0], maps[:, 1], measure, eps), maps


def _run(fn, features, weights, measure, map_grad, eps=1e-6):
    """(overlap, maps, d features, d weights) of overlap.sum() + <map_grad, maps>."""
    features = features.detach().requires_grad_()
    weights = weights.detach().requires_grad_()
    ov, maps = fn(features, weights, measure, eps)
    loss = ov.sum() + (maps.to(map_grad.dtype) * map_grad).sum()
    return (ov, maps, *torch.autograd.grad(loss, (features, weights)))


def _inputs(B, K, h, w, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(B, K, h, w, generator=g, dtype=torch.float64)
    weights = torch.randn(B, 2, K, generator=g, dtype=torch.float64) / K ** 0.5
    map_grad = torch.randn(B, 2, h, w, generator=g, dtype=torch.float64)
    return (t.to(DEVICE, dtype) for t in (features, weights, map_grad))


def _assert_matches(got, want, rtol):
    for name, x, y in zip(("overlap", "maps", "d features", "d weights"), got, want):
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert torch.isfinite(x).all(), name
        atol = rtol * max(1.0, y.abs().max().item())
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("measure", fused.FUSED_MEASURES)
@pytest.mark.parametrize("dtype,rtol", [pytest.param(torch.float64, 1e-10, id="fp64"),
                                        pytest.param(torch.float32, 1e-5, id="fp32")])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(measure, dtype, rtol, shape):
    features, weights, map_grad = _inputs(*shape, dtype)
    got = _run(fused.fused_maps_overlap, features, weights, measure, map_grad)
    want = _run(_reference, features, weights, measure, map_grad)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    _assert_matches(got, want, rtol)


@pytest.mark.parametrize("measure", fused.FUSED_MEASURES)
@pytest.mark.parametrize("zero", ["one", "both"])
def test_zero_map_is_finite_and_exact(measure, zero):
    features, weights, map_grad = _inputs(3, 20, 4, 5, torch.float64, seed=1)
    features = features.abs()
    weights[:, 1] = -weights[:, 1].abs()           # pre-ReLU map 1 < 0 everywhere
    if zero == "both":
        weights[:, 0] = -weights[:, 0].abs()
    got = _run(fused.fused_maps_overlap, features, weights, measure, map_grad)
    want = _run(_reference, features, weights, measure, map_grad)
    assert (got[1][:, 1] == 0).all()
    _assert_matches(got, want, 1e-10)


def test_soft_iou_ties_split_the_gradient():
    features, weights, map_grad = _inputs(2, 9, 3, 3, torch.float64, seed=2)
    weights[:, 1] = weights[:, 0]                  # sample 0: identical maps, tied everywhere
    weights[1, 1, :4] += 0.3                       # sample 1: tied only in column 0, where
    features[1, :4, :, 0] = 0                      # the differing channels are zero
    want = _run(_reference, features, weights, "soft_iou", map_grad)
    maps = want[1]
    assert (maps[0, 0] == maps[0, 1]).all() and (maps[0] > 0).any()
    assert (maps[1, 0, :, 0] == maps[1, 1, :, 0]).all() and (maps[1, 0, :, 0] > 0).any()
    assert (maps[1, 0, :, 1:] != maps[1, 1, :, 1:]).any()
    got = _run(fused.fused_maps_overlap, features, weights, "soft_iou", map_grad)
    _assert_matches(got, want, 1e-10)


@pytest.mark.parametrize("dtype,rtol", [pytest.param(torch.float16, 3e-3, id="fp16"),
                                        pytest.param(torch.bfloat16, 2e-2, id="bf16")])
def test_low_precision_accumulates_in_float32(dtype, rtol):
    features, weights, map_grad = _inputs(3, 37, 7, 7, dtype, seed=3)
    ov, maps, d_f, d_w = _run(fused.fused_maps_overlap, features, weights, "cosine", map_grad)
    assert ov.dtype == torch.float32
    assert maps.dtype == d_f.dtype == d_w.dtype == dtype
    want = _run(_reference, features.float(), weights.float(), "cosine", map_grad.float())
    torch.testing.assert_close(ov, want[0], rtol=1e-5, atol=1e-6)   # fp32 maps, fp32 sums
    for x, y in zip((maps, d_f, d_w), want[1:]):
        torch.testing.assert_close(x.float(), y, rtol=rtol, atol=rtol * y.abs().max().item())


def test_partial_gradients_and_layouts():
    features, weights, map_grad = _inputs(2, 19, 5, 3, torch.float64, seed=4)
    features = features.contiguous(memory_format=torch.channels_last)
    weights = weights.transpose(1, 2).contiguous().transpose(1, 2)   # non-contiguous
    for measure in fused.FUSED_MEASURES:
        # only the overlap is used: no gradient reaches the maps output
        w1 = weights.detach().requires_grad_()
        ov, _ = fused.fused_maps_overlap(features, w1, measure)
        w2 = weights.detach().requires_grad_()
        ov_ref, _ = _reference(features, w2, measure)
        (g,), (g_ref,) = torch.autograd.grad(ov.sum(), w1), torch.autograd.grad(ov_ref.sum(), w2)
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    # only the maps are used, and only features need a gradient
    f1, f2 = features.detach().requires_grad_(), features.detach().requires_grad_()
    _, maps = fused.fused_maps_overlap(f1, weights)
    _, maps_ref = _reference(f2, weights, "cosine")
    (g,) = torch.autograd.grad((maps * map_grad).sum(), f1)
    (g_ref,) = torch.autograd.grad((maps_ref * map_grad).sum(), f2)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_empty_batch():
    features = torch.zeros(0, 4, 3, 3, device=DEVICE, requires_grad=True)
    weights = torch.zeros(0, 2, 4, device=DEVICE, requires_grad=True)
    ov, maps = fused.fused_maps_overlap(features, weights)
    assert ov.shape == (0,) and maps.shape == (0, 2, 3, 3)
    d_f, d_w = torch.autograd.grad(ov.sum() + maps.sum(), (features, weights))
    assert d_f.shape == features.shape and d_w.shape == weights.shape


def test_kernels_are_built_lazily_under_the_current_env(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("on CUDA the compiled kernels run regardless of TRITON_INTERPRET")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    fused._kernels.cache_clear()
    assert not fused.triton_usable(torch.device("cpu"))
    assert fused.triton_usable(torch.device("cuda"))
    features, weights, _ = _inputs(1, 3, 2, 2, torch.float32)
    with pytest.raises(ValueError, match="closed_form.*TRITON_INTERPRET=1"):
        fused.fused_maps_overlap(features, weights)
    monkeypatch.setenv("TRITON_INTERPRET", "1")    # set after import: still takes effect
    assert fused.triton_usable(torch.device("cpu"))
    ov, _ = fused.fused_maps_overlap(features, weights)
    torch.testing.assert_close(ov, _reference(features, weights, "cosine")[0])
    from triton.runtime.interpreter import InterpretedFunction
    assert all(isinstance(k, InterpretedFunction) for k in fused._kernels(True))


def test_without_triton(monkeypatch):
    monkeypatch.setattr(fused, "triton", None)
    assert not fused.triton_usable(torch.device("cpu"))
    assert not fused.triton_usable(torch.device("cuda"))
    features, weights, _ = _inputs(1, 3, 2, 2, torch.float32)
    with pytest.raises(ValueError, match="not installed.*closed_form"):
        fused.fused_maps_overlap(features, weights)


@pytest.mark.parametrize("features_shape,weights_shape,kwargs,match", [
    ((2, 4, 3, 3), (2, 3, 4), {}, "M=2"),
    ((2, 4, 3, 3), (2, 1, 4), {}, "M=2"),
    ((2, 4, 9), (2, 2, 4), {}, r"\[B, K, h, w\]"),
    ((2, 4, 3, 3), (2, 2, 4, 1), {}, r"\[B, 2, K\]"),
    ((2, 4, 3, 3), (3, 2, 4), {}, "do not match"),
    ((2, 4, 3, 3), (2, 2, 5), {}, "do not match"),
    ((2, 4, 0, 3), (2, 2, 4), {}, "empty"),
    ((2, 4, 3, 3), (2, 2, 4), {"measure": "dice"}, "cosine, pearson, soft_iou"),
])
def test_errors(features_shape, weights_shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fused.fused_maps_overlap(torch.randn(features_shape), torch.randn(weights_shape),
                                 **kwargs)
    with pytest.raises(ValueError, match="floating point"):
        fused.fused_maps_overlap(torch.ones(2, 4, 3, 3, dtype=torch.long), torch.randn(2, 2, 4))
