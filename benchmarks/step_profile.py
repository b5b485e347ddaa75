"""Where does a training step's time go: kernel launches or device work? (CUDA; not a test)

For the variants of `step_overhead` (ERM, EX2L with each Grad-CAM backend that runs, the
library-style baseline), profiles `--steps` steps with `torch.profiler` after 3 untimed ones
and prints per step: wall time, the time the GPU spent in kernels, the number of kernels
launched and of CPU-side aten ops. When wall time is well above GPU time, the step is
launch-bound (the CPU cannot feed the GPU), and EX2L's extra small ops cost their launch
overhead rather than arithmetic. The model: ResNet-50 with `--resnet50`, else the first of
`--models`.

    python -m benchmarks.step_profile --device cuda --resnet50 --batch_per_env 32
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import common, step_overhead

UNTIMED_STEPS = 3


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        parents=[common.measure_options(), step_overhead.workload_options()])
    parser.add_argument("--steps", type=int, default=10, help="profiled steps per variant")
    return common.parse_args(parser, argv, "step_profile")


def profile_variant(update, minibatches, device: torch.device, steps: int) -> dict:
    for _ in range(UNTIMED_STEPS):
        update(minibatches)
    common.synchronize(device)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            update(minibatches)
        common.synchronize(device)
        wall = (time.perf_counter() - t0) / steps
    events = prof.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_us = sum(e.device_time for e in kernels) / steps
    ops = sum(1 for e in events if e.name.startswith("aten::")) / steps
    return {"wall_ms": wall * 1e3, "gpu_kernel_ms": gpu_us / 1e3,
            "kernels_per_step": len(kernels) / steps, "aten_ops_per_step": ops}


def main(argv=None) -> int:
    args = parse_args(argv)
    machine = common.prepare(args)
    device = machine.device
    print(f"step_profile: {machine.describe()}")
    if device.type != "cuda":
        print("note: on the CPU there are no kernels; only wall time and op counts mean anything")
    model = "resnet50" if args.resnet50 else args.models[0]
    variants = step_overhead.build_variants(model, args, device)
    minibatches = step_overhead.make_minibatches(
        args, step_overhead.image_size(model, args), device)
    rows = {name: profile_variant(v.update, minibatches, device, args.steps)
            for name, v in variants.items()}
    print(f"{model}, batch {step_overhead.NUM_ENVS}x{args.batch_per_env}")
    print(f"{'variant':24s} {'wall ms':>8s} {'GPU ms':>8s} {'kernels':>8s} {'aten ops':>9s}")
    for name, r in rows.items():
        print(f"{name:24s} {r['wall_ms']:8.2f} {r['gpu_kernel_ms']:8.2f} "
              f"{r['kernels_per_step']:8.0f} {r['aten_ops_per_step']:9.0f}")
    common.write_json(args.out, {
        "benchmark": "step_profile", "model": model, "batch_per_env": args.batch_per_env,
        "steps": args.steps, "settings": machine.settings(), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
