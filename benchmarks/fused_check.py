"""Check the compiled Triton Grad-CAM kernel against plain torch on a GPU (not a test).

The test suite runs the kernel in Triton's CPU interpreter; this script runs the compiled
kernel on CUDA for every measure and dtype at ResNet-50 sizes, and through the whole EX2L
chain (`gradcam(..., backend="fused")` against the autograd oracle), and prints the largest
differences of the overlap, the maps and the gradients, relative to each tensor's scale.

    python benchmarks/fused_check.py        # needs CUDA; writes benchmarks/results/fused_check.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ex2l_domainbed.gradcam import fused, gradcam  # noqa: E402
from ex2l_domainbed.gradcam import overlap as overlap_lib  # noqa: E402

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 5e-2}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))


def kernel_vs_reference(measure: str, dtype: torch.dtype, b: int, k: int, hw: tuple) -> dict:
    torch.manual_seed(0)
    feats = torch.randn(b, k, *hw, device="cuda").relu().to(dtype).requires_grad_()
    weights = (torch.randn(b, 2, k, device="cuda") / k).to(dtype).requires_grad_()
    probe = torch.randn(b, 2, *hw, device="cuda")
    sim, maps = fused.fused_maps_overlap(feats, weights, measure)
    g = torch.autograd.grad(sim.sum() + (maps.float() * probe).sum(), [feats, weights])
    # reference in float64 from the same inputs
    f64, w64 = feats.detach().double().requires_grad_(), weights.detach().double().requires_grad_()
    ref_maps = torch.relu(torch.einsum("bmk,bkhw->bmhw", w64, f64))
    ref_sim = overlap_lib.overlap(ref_maps[:, 0], ref_maps[:, 1], measure)
    g_ref = torch.autograd.grad(ref_sim.sum() + (ref_maps * probe.double()).sum(), [f64, w64])
    return {"overlap": rel(sim, ref_sim), "maps": rel(maps, ref_maps),
            "d_features": rel(g[0], g_ref[0]), "d_weights": rel(g[1], g_ref[1])}


def chain_vs_oracle() -> dict:
    torch.manual_seed(0)
    feats = torch.randn(32, 2048, 7, 7, device="cuda", dtype=torch.float64).relu().requires_grad_()
    heads = [torch.nn.Linear(2048, 4).cuda().double(), torch.nn.Linear(2048, 6).cuda().double()]
    y, a = torch.randint(0, 4, (32,), device="cuda"), torch.randint(0, 6, (32,), device="cuda")
    out = {}
    for backend in ("fused", "autograd"):
        cam = gradcam(feats, heads, [y, a], backend=backend, measure="cosine")
        loss = cam.overlap.mean() + torch.nn.functional.cross_entropy(cam.logits[0], y)
        out[backend] = (cam, torch.autograd.grad(loss, [feats, heads[0].weight, heads[1].weight]))
    (cf, gf), (ca, ga) = out["fused"], out["autograd"]
    return {"auto_backend": gradcam(feats, heads, [y, a], measure="cosine").backend,
            "overlap": rel(cf.overlap, ca.overlap), "maps": rel(cf.maps, ca.maps),
            **{f"grad_{i}": rel(x, z) for i, (x, z) in enumerate(zip(gf, ga))}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "fused_check.json"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: fused_check needs a CUDA device (the CPU interpreter is covered by the tests)")
        return 2
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows, ok = [], True
    for measure in fused.FUSED_MEASURES:
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            for b, k, hw in ((32, 2048, (7, 7)), (5, 130, (5, 3))):
                diffs = kernel_vs_reference(measure, dtype, b, k, hw)
                good = max(diffs.values()) <= TOLERANCE[dtype]
                ok &= good
                rows.append({"measure": measure, "dtype": str(dtype), "shape": [b, k, *hw],
                             **diffs, "ok": good})
                print(f"{measure:8s} {str(dtype):14s} B={b:3d} K={k:4d} {hw}: " + "  ".join(
                    f"{n} {v:.1e}" for n, v in diffs.items()) + ("" if good else "  FAIL"))
    chain = chain_vs_oracle()
    chain_ok = max(v for n, v in chain.items() if n != "auto_backend") <= 1e-9
    ok &= chain_ok and chain["auto_backend"] == "fused"
    print("EX2L chain, fused vs autograd oracle (float64): " + "  ".join(
        f"{n} {v}" if isinstance(v, str) else f"{n} {v:.1e}" for n, v in chain.items()))
    print("all within tolerance" if ok else "SOME CHECKS FAILED")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "kernel": rows, "chain": chain, "ok": ok}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
