"""Grad-CAM maps + overlap (+ backward) on ResNet-50-sized feature maps, per backend.

The op alone, without a backbone: A [B, 2048, 7, 7] (non-negative, as after a ReLU, with
requires_grad), two linear heads (2048->4 label, 2048->6 confounder), random targets,
score log_softmax, overlap measure cosine, through `gradcam(..., backend=...)`:

- forward:        maps + overlap (the logits come with them), graph built as in training;
- forward+backward: the same, then the gradient of overlap.mean() w.r.t. A and both
                  heads' weights (`torch.autograd.grad`).

Backends: `closed_form` and `autograd` everywhere, `fused` (Triton) on CUDA. Each B in
`--batches` is timed in interleaved rounds (`common.interleaved_rounds`) after warm-up
rounds; the median and IQR are printed, with the ratio to closed_form. Before timing, every
backend is checked against closed_form once per B (max |diff| of the
overlap, of dL/dA and of the heads' weight gradients, and the count of map positions whose
ReLU gate differs: a pre-ReLU value within rounding of 0 can flip, and then dA and dW
legitimately differ at that position; with ~B*98 positions that happens now and then).

On CUDA (timed with CUDA events, read after synchronising) the fused kernel is also timed
alone (`fused.fused_maps_overlap` on precomputed channel weights) and its achieved
memory bandwidth is reported: the bytes it must move (forward: read A once plus weights,
write maps and overlap; backward: read A and write dA, plus weights, saved maps and their
gradients) divided by the measured time, next to the device's peak (H100 SXM 3.35 TB/s,
H100 PCIe 2.0, H200 4.8, A100 80GB 2.0; "unknown" otherwise). A fraction well below 1
at small B is launch latency, not bandwidth.

A default CPU run (one thread) skips the larger B values when, projected linearly from the
previous B, they would take it past about 150 s; it says so. `--batches` forces a list.

On the CPU glibc is first switched to a steady allocator (`common.steady_malloc`;
`--keep_malloc` leaves it).

    OMP_NUM_THREADS=1 python -m benchmarks.gradcam_kernel --device cpu
    python -m benchmarks.gradcam_kernel --device cuda [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import functools
import time

import numpy as np
import torch
import torch.nn as nn

from benchmarks import common
from ex2l_domainbed.gradcam import fused, gradcam

K, H, W = 2048, 7, 7
NUM_CLASSES, NUM_ATTRIBUTES = 4, 6
MEASURE, SCORE = "cosine", "log_softmax"
DEFAULT_BATCHES = [32, 64, 128, 256]
CPU_BUDGET_S = 150  # default CPU run: larger B are skipped once they would exceed this
PEAK_BANDWIDTH_TBS = [  # (substrings that must all be in the device name, TB/s)
    (("H200",), 4.8),
    (("H100", "PCIE"), 2.0),
    (("H100", "HBM3"), 3.35),
    (("H100", "SXM"), 3.35),
    (("A100", "80GB"), 2.0),
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     parents=[common.measure_options(), common.round_options()])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help=f"default {DEFAULT_BATCHES}; on CPU the larger ones are skipped "
                             f"when the run would exceed {CPU_BUDGET_S} s")
    args = common.parse_args(parser, argv, "gradcam_kernel")
    if args.dtype == "bfloat16" and args.device != "cuda":
        parser.error("--dtype bfloat16 is for CUDA only")
    # A default CPU run stays short: B values are skipped once the projection says so.
    args.budget_s = CPU_BUDGET_S if args.device == "cpu" and args.batches is None else None
    args.batches = args.batches or list(DEFAULT_BATCHES)
    return args


# --------------------------------------------------------------------------------------
# Problem and backends


def make_problem(batch: int, dtype: torch.dtype, device: torch.device, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed + batch)
    A = torch.relu(torch.randn(batch, K, H, W, generator=g))
    torch.manual_seed(seed)
    heads = [nn.Linear(K, NUM_CLASSES), nn.Linear(K, NUM_ATTRIBUTES)]
    targets = [torch.randint(0, NUM_CLASSES, (batch,), generator=g),
               torch.randint(0, NUM_ATTRIBUTES, (batch,), generator=g)]
    return {
        "A": A.to(device=device, dtype=dtype).requires_grad_(),
        "heads": [h.to(device=device, dtype=dtype) for h in heads],
        "targets": [t.to(device) for t in targets],
    }


def backends_for(device: torch.device) -> list[str]:
    names = ["closed_form", "autograd"]
    if device.type == "cuda" and fused.triton_usable(device):
        names.append("fused")
    return names


def working_backends(backends: list[str], dtype, device) -> tuple[list[str], dict]:
    """The backends that run a small problem (closed_form must), and the dropped ones' errors."""
    trials = {name: functools.partial(forward_backward, make_problem(4, dtype, device, 0), name)
              for name in backends}
    dropped = common.drop_failures(trials, required="closed_form")
    return [name for name in backends if name not in dropped], dropped


def forward(p: dict, backend: str) -> torch.Tensor:
    """Maps + overlap; returns the per-sample overlap [B]."""
    return gradcam(p["A"], p["heads"], p["targets"], backend=backend, score=SCORE,
                   measure=MEASURE).overlap


def forward_backward(p: dict, backend: str) -> tuple[torch.Tensor, tuple]:
    """Overlap and the gradients of its mean w.r.t. A and both heads' weights."""
    overlap = forward(p, backend)
    wrt = [p["A"], *(h.weight for h in p["heads"])]
    return overlap, torch.autograd.grad(overlap.float().mean(), wrt)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def pre_relu_signs(p: dict, backend: str) -> torch.Tensor:
    """Signs of the maps before ReLU (channel weights . A) as this backend computes them."""
    with torch.no_grad():
        cam = gradcam(p["A"], p["heads"], p["targets"], backend=backend, score=SCORE,
                      measure=MEASURE)
        return torch.bmm(cam.weights.to(p["A"].dtype), p["A"].flatten(2)) > 0


def agreement(p: dict, backends: list[str]) -> dict:
    """Per backend: max |diff| against closed_form of overlap, dA and the heads' dW, and
    the number of map positions whose ReLU gate differs (a pre-ReLU value within rounding
    of 0: the gradients then differ at that position, legitimately, by O(1) there)."""
    ref_ov, ref_g = forward_backward(p, "closed_form")
    ref_signs = pre_relu_signs(p, "closed_form")
    out = {}
    for name in backends:
        if name == "closed_form":
            continue
        ov, g = forward_backward(p, name)
        out[name] = {"overlap": max_diff(ov, ref_ov), "dA": max_diff(g[0], ref_g[0]),
                     "dW": max(max_diff(g[1], ref_g[1]), max_diff(g[2], ref_g[2])),
                     "dA_scale": float(ref_g[0].abs().max()),
                     "relu_gate_flips": int((pre_relu_signs(p, name) != ref_signs).sum())}
    return out


# --------------------------------------------------------------------------------------
# Timing


PASSES = {"fwd": forward, "fwd_bwd": forward_backward}


def time_backends(p: dict, backends: list[str], timer: common.Timer, warmup: int,
                  rounds: int) -> dict[str, dict]:
    """backend -> {'fwd'|'fwd_bwd': timing stats}, every (backend, pass) in each round."""
    jobs = {(b, kind): functools.partial(fn, p, b) for kind, fn in PASSES.items()
            for b in backends}
    times = common.interleaved_rounds(jobs, timer, warmup, rounds)
    return {b: {kind: common.timing_stats(times[(b, kind)]) for kind in PASSES}
            for b in backends}


# --------------------------------------------------------------------------------------
# Fused kernel alone: bandwidth (CUDA)


def peak_bandwidth(name: str):
    upper = name.upper()
    for keys, tbs in PEAK_BANDWIDTH_TBS:
        if all(k in upper for k in keys):
            return tbs
    return None


def fused_bytes(batch: int, elt: int) -> dict:
    """Bytes the fused forward and backward must move. Forward: read A and the weights,
    write the maps (plus a float32 copy for 16-bit inputs) and the overlap. Backward: read
    A, write dA, read the weights, write dW, read the float32 maps and dL/d overlap."""
    a = batch * K * H * W * elt
    weights = batch * 2 * K * elt
    maps = batch * 2 * H * W * elt
    maps_f32 = batch * 2 * H * W * 4
    overlap = batch * 4
    return {"fwd": a + weights + maps + (0 if elt == 4 else maps_f32) + overlap,
            "bwd": 2 * a + 2 * weights + maps_f32 + overlap}


def fused_alone(p: dict, timer: common.Timer, warmup: int, rounds: int) -> dict:
    """Median forward and backward ms of the fused op alone, on closed-form weights."""
    A = p["A"]
    with torch.no_grad():
        cam = gradcam(A, p["heads"], p["targets"], backend="closed_form", score=SCORE)
    weights = cam.weights.to(A.dtype).contiguous().requires_grad_()
    g_overlap = torch.full((A.shape[0],), 1.0 / A.shape[0], device=A.device)
    held = {}

    def fwd():
        held["overlap"], _ = fused.fused_maps_overlap(A, weights, MEASURE)

    def bwd():
        overlap = held.pop("overlap")
        torch.autograd.grad(overlap, (A, weights), grad_outputs=g_overlap.to(overlap.dtype))
    fwd_ms, bwd_ms = [], []
    for r in range(warmup + rounds):
        f, b = timer(fwd), timer(bwd)
        if r >= warmup:
            fwd_ms.append(f)
            bwd_ms.append(b)
    return {"fwd_ms": float(np.median(fwd_ms)), "bwd_ms": float(np.median(bwd_ms))}


def bandwidth_report(batch: int, p: dict, args, timer: common.Timer, name: str) -> dict:
    timing = fused_alone(p, timer, args.warmup, args.rounds)
    moved = fused_bytes(batch, p["A"].element_size())
    peak = peak_bandwidth(name)
    out = {"peak_tb_s": peak}
    for kind in ("fwd", "bwd"):
        tbs = moved[kind] / (timing[f"{kind}_ms"] * 1e-3) / 1e12
        out[kind] = {"bytes": moved[kind], "median_ms": timing[f"{kind}_ms"],
                     "achieved_tb_s": tbs, "fraction_of_peak": None if peak is None else tbs / peak}
    return out


# --------------------------------------------------------------------------------------
# Report


def skip_batch(batch: int, last: tuple, elapsed: float, budget: float) -> bool:
    """True (and says so) when B would push the run past `budget` seconds."""
    projected = last[1] * batch / last[0]
    if elapsed + projected <= budget:
        return False
    print(f"  skipping B={batch}: projected {projected:.0f} s would exceed the {budget:.0f} s "
          f"CPU budget (pass --batches to force it)", flush=True)
    return True


def print_batch(batch: int, rows: dict, check: dict) -> None:
    for name, d in check.items():
        print(f"  check B={batch} {name} vs closed_form: max|d overlap| {d['overlap']:.2e}, "
              f"max|d dA| {d['dA']:.2e} (max|dA| {d['dA_scale']:.1e}), max|d dW| {d['dW']:.2e}, "
              f"ReLU gate flips {d['relu_gate_flips']}")
    base = rows["closed_form"]
    for name, r in rows.items():
        f, fb = r["fwd"], r["fwd_bwd"]
        print(f"{batch:>5} {name:<12} {f['median_ms']:>9.3f} "
              f"{f['median_ms'] / base['fwd']['median_ms']:>6.2f} "
              f"{f['q25_ms']:>9.3f}-{f['q75_ms']:<9.3f} {fb['median_ms']:>11.3f} "
              f"{fb['median_ms'] / base['fwd_bwd']['median_ms']:>6.2f} "
              f"{fb['q25_ms']:>9.3f}-{fb['q75_ms']:<9.3f}", flush=True)


def print_bandwidth(bw: dict) -> None:
    print("\nfused kernel alone: achieved memory bandwidth")
    head = f"{'B':>5} {'pass':<4} {'MB moved':>9} {'median us':>10} {'TB/s':>7} {'of peak':>8}"
    print(head + "\n" + "-" * len(head))
    for batch, r in bw.items():
        for kind in ("fwd", "bwd"):
            k = r[kind]
            frac = "unknown" if k["fraction_of_peak"] is None else f"{k['fraction_of_peak']:.0%}"
            print(f"{batch:>5} {kind:<4} {k['bytes'] / 1e6:>9.1f} {k['median_ms'] * 1e3:>10.1f} "
                  f"{k['achieved_tb_s']:>7.3f} {frac:>8}")
    peak = next(iter(bw.values()))["peak_tb_s"] if bw else None
    print(f"device peak: {'unknown' if peak is None else f'{peak} TB/s'}")


def main(argv=None) -> int:
    args = parse_args(argv)
    machine = common.prepare(args)
    device = machine.device
    dtype = getattr(torch, args.dtype)
    name = common.device_name(device)
    backends, dropped = working_backends(backends_for(device), dtype, device)
    print(f"gradcam_kernel: {machine.describe()}")
    print(f"dtype {args.dtype}, A = [B, {K}, {H}, {W}], heads {K}->{NUM_CLASSES} and "
          f"{K}->{NUM_ATTRIBUTES}, score {SCORE}, measure {MEASURE}; backends {backends}; "
          f"batches {args.batches}; warm-up {args.warmup}, rounds {args.rounds}")
    if args.budget_s:
        print(f"CPU run: a larger B is skipped if the run would exceed {args.budget_s} s "
              f"(projected from the previous B, linear in B); --batches forces a list")
    print(f"\n{'B':>5} {'backend':<12} {'fwd ms':>9} {'x CF':>6} {'fwd IQR ms':>19} "
          f"{'fwd+bwd ms':>11} {'x CF':>6} {'fwd+bwd IQR ms':>19}")
    print("-" * 94)
    timer = common.Timer(device)
    results, bandwidth, skipped = {}, {}, []
    t0 = time.time()
    last = None  # (B, seconds) of the previous batch size
    for batch in args.batches:
        if args.budget_s and last and skip_batch(batch, last, time.time() - t0, args.budget_s):
            skipped.append(batch)
            continue
        t_batch = time.time()
        p = make_problem(batch, dtype, device, args.seed)
        check = agreement(p, backends)
        rows = time_backends(p, backends, timer, args.warmup, args.rounds)
        print_batch(batch, rows, check)
        results[batch] = {"backends": rows, "agreement_with_closed_form": check}
        if "fused" in backends:
            bandwidth[batch] = bandwidth_report(batch, p, args, timer, name)
        del p
        last = (batch, time.time() - t_batch)
    if bandwidth:
        print_bandwidth(bandwidth)
    print(f"\n({time.time() - t0:.0f} s)")
    settings = {**machine.settings(), "dtype": args.dtype, "K": K, "h": H, "w": W,
                "score": SCORE, "measure": MEASURE, "batches": args.batches,
                "warmup_rounds": args.warmup, "rounds": args.rounds, "backends": backends,
                "dropped_backends": dropped, "cpu_budget_s": args.budget_s,
                "skipped_batches": skipped}
    common.write_json(args.out, {
        "benchmark": "gradcam_kernel", "settings": settings,
        "results": {str(b): r for b, r in results.items()},
        "fused_bandwidth": {str(b): r for b, r in bandwidth.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
