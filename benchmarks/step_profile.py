"""Where does a training step's time go: kernel launches or device work? (CUDA; not a test)

For ERM and EX2L (each Grad-CAM backend that runs), profiles a few steps with
`torch.profiler` and prints per step: wall time, the time the GPU spent in kernels, the
number of kernels launched and of CPU-side aten ops. When wall time is well above GPU
time, the step is launch-bound (the CPU cannot feed the GPU), and EX2L's extra small ops
cost their launch overhead rather than arithmetic.

    python benchmarks/step_profile.py --device cuda --resnet50 --batch_per_env 32
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import step_overhead  # noqa: E402  (builds the same variants and batches)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_variant(update, minibatches, device, steps: int) -> dict:
    for _ in range(3):
        update(minibatches)
    _sync(device)
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            update(minibatches)
        _sync(device)
        wall = (time.perf_counter() - t0) / steps
    events = prof.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_us = sum(e.device_time for e in kernels) / steps
    ops = sum(1 for e in events if e.name.startswith("aten::")) / steps
    return {"wall_ms": wall * 1e3, "gpu_kernel_ms": gpu_us / 1e3,
            "kernels_per_step": len(kernels) / steps, "aten_ops_per_step": ops}


def main(argv=None) -> int:
    args = step_overhead.parse_args(argv)
    from ex2l_domainbed.plugin import register
    register()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        print("note: on the CPU there are no kernels; only wall time and op counts mean anything")
    model = "resnet50" if args.resnet50 else args.models[0]
    variants = step_overhead.build_variants(model, args, device)
    minibatches = step_overhead.make_minibatches(args, step_overhead.image_size(model, args), device)
    rows = {name: profile_variant(v.update, minibatches, device, steps=10)
            for name, v in variants.items()}
    print(f"{model}, batch {step_overhead.NUM_ENVS}x{args.batch_per_env}, "
          f"{step_overhead.device_name(device)}")
    print(f"{'variant':24s} {'wall ms':>8s} {'GPU ms':>8s} {'kernels':>8s} {'aten ops':>9s}")
    for name, r in rows.items():
        print(f"{name:24s} {r['wall_ms']:8.2f} {r['gpu_kernel_ms']:8.2f} "
              f"{r['kernels_per_step']:8.0f} {r['aten_ops_per_step']:9.0f}")
    with open(args.out, "w") as f:
        json.dump({"model": model, "batch_per_env": args.batch_per_env, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
