"""Check the compiled Triton Grad-CAM kernel against plain torch on a GPU (not a test).

The test suite runs the kernel in Triton's CPU interpreter; this script runs the compiled
kernel on CUDA for every measure and dtype at ResNet-50 sizes, and through the whole EX2L
chain (`gradcam(..., backend="fused")` against the autograd oracle), and prints the largest
differences of the overlap, the maps and the gradients, relative to each tensor's scale.

    python -m benchmarks.fused_check   # needs CUDA; writes results/<gpu>/fused_check.json
"""
from __future__ import annotations

import argparse

import torch

from benchmarks import common
from ex2l_domainbed.gradcam import fused, gradcam
from ex2l_domainbed.gradcam import overlap as overlap_lib

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 5e-2}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def kernel_vs_reference(measure: str, dtype: torch.dtype, b: int, k: int, hw: tuple,
                        seed: int) -> dict:
    torch.manual_seed(seed)
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


def chain_vs_oracle(seed: int) -> dict:
    torch.manual_seed(seed)
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     parents=[common.measure_options()])
    args = common.parse_args(parser, argv, "fused_check")
    if args.device != "cuda":
        print("error: fused_check needs a CUDA device (the tests cover the CPU interpreter)")
        return 2
    machine = common.prepare(args)
    print(f"fused_check: {machine.describe()}")
    rows, ok = [], True
    for measure in fused.FUSED_MEASURES:
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            for b, k, hw in ((32, 2048, (7, 7)), (5, 130, (5, 3))):
                diffs = kernel_vs_reference(measure, dtype, b, k, hw, args.seed)
                good = max(diffs.values()) <= TOLERANCE[dtype]
                ok &= good
                rows.append({"measure": measure, "dtype": str(dtype), "shape": [b, k, *hw],
                             **diffs, "ok": good})
                print(f"{measure:8s} {str(dtype):14s} B={b:3d} K={k:4d} {hw}: " + "  ".join(
                    f"{n} {v:.1e}" for n, v in diffs.items()) + ("" if good else "  FAIL"))
    chain = chain_vs_oracle(args.seed)
    chain_ok = max(v for n, v in chain.items() if n != "auto_backend") <= 1e-9
    ok &= chain_ok and chain["auto_backend"] == "fused"
    print("EX2L chain, fused vs autograd oracle (float64): " + "  ".join(
        f"{n} {v}" if isinstance(v, str) else f"{n} {v:.1e}" for n, v in chain.items()))
    print("all within tolerance" if ok else "SOME CHECKS FAILED")
    common.write_json(args.out, {"benchmark": "fused_check",
                                 "device": common.device_name(machine.device),
                                 "torch": torch.__version__, "kernel": rows, "chain": chain,
                                 "ok": ok})
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
