"""What does EX2L's Grad-CAM penalty cost per training step, next to plain ERM?

Measures one full training step, `algorithm.update(minibatches)` (forward, loss, backward,
Adam step), on the same backbone, batch and data for these variants:

- `ERM`                  the baseline: one head, cross-entropy;
- `EX2L/<backend>`       EX2L (label head + confounder head + Grad-CAM cosine overlap) with
                         each Grad-CAM backend that can run here: `closed_form`, `autograd`,
                         and on CUDA `fused` and `auto` (whatever `auto` resolves to);
- `library-hook`         the same loss with maps computed the way Grad-CAM libraries do it:
                         a forward hook keeps the last feature map A, a tensor hook keeps
                         dScore/dA, and one full `score.backward(create_graph=True)` per head
                         runs through the whole network (2 extra full backward passes).

All variants are timed in one run, interleaved (every round times each variant once, in a
rotating order) after warm-up rounds, so machine load drifts hit all of them alike.
Reported per variant: median step time with its IQR, and the ratio to ERM; the step's
peak extra memory (above what was allocated when the step began) and a "total" =
parameters + gradients + Adam state + step peak, each with its ratio to ERM.
The goals printed next to the ratios: time <= 1.05x ERM, memory <= 1.10x ERM (the goals
column judges the median time and the total memory). How to read it: a ratio is only as
good as the IQRs beside it; on a shared CPU they are wide, so compare medians of one run,
never across runs. Memory is in MiB. The library-hook row shows what the closed form
saves; its maps are checked against `gradcam(backend="autograd", score="logit")` first.

Memory: on CUDA, `max_memory_allocated` after `reset_peak_memory_stats` around one step,
minus the allocation at the step's start. On CPU, two steps run under `torch.profiler`
with `profile_memory=True`; the peak of the running sum of the CPU allocator's allocation
(+bytes) and free (-bytes) records inside the second step, in time order, is the step's
peak extra memory. (Two steps, because the profiler records no size when a block
allocated before it started is freed, e.g. the previous step's gradients; its warning
"Memory block of unknown size was allocated before the profiling started" concerns the
first, unmeasured step.) A probe with known sizes is checked first and printed.

CPU allocator: glibc returns freed blocks above its (adaptive) mmap threshold to the OS,
so a fresh tensor of a few MB can page-fault on every step, and whether it does depends on
the process's history (one profiler run made a Lite ERM step 18 -> 12 ms). On CPU the
script therefore first switches glibc to a steady state (mallopt: no mmap, no trimming),
so every variant reuses memory; `--keep_malloc` leaves glibc's defaults.

    OMP_NUM_THREADS=1 python benchmarks/step_overhead.py --device cpu
    python benchmarks/step_overhead.py --device cuda --resnet50

Models: `resnet18` (torchvision ResNet-18, not pretrained, frozen BN, 64x64 input), `lite`
(LiteCNN with Spawrious-Lite defaults: shipped pretrained weights, first 3 blocks frozen,
64x64) and, with `--resnet50`, ResNet-50 at 224x224 instead of ResNet-18.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from domainbed import networks  # noqa: E402
from bench_common import device_name, steady_malloc, write_json  # noqa: E402

NUM_CLASSES = 4
NUM_ATTRIBUTES = 6
NUM_ENVS = 2
GOAL_TIME = 1.05
GOAL_MEMORY = 1.10
MAP_CHECK_TOL = 1e-5
MB = 2 ** 20  # tables print MiB


# --------------------------------------------------------------------------------------
# Settings


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "lite"],
                        choices=["resnet18", "resnet50", "lite"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--keep_malloc", action="store_true",
                        help="CPU: keep glibc's adaptive malloc (default: steady, see above)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds")
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds")
    parser.add_argument("--batch_per_env", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=64,
                        help="input size of resnet18 and lite (resnet50 always uses 224)")
    parser.add_argument("--resnet50", action="store_true",
                        help="ResNet-50 at 224x224 instead of ResNet-18 (the GPU setting)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "step_overhead.json"))
    args = parser.parse_args(argv)
    if args.resnet50:
        args.models = ["resnet50" if m == "resnet18" else m for m in args.models]
        args.models = list(dict.fromkeys(args.models))
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    return args


def image_size(model: str, args) -> int:
    return 224 if model == "resnet50" else args.image_size


def hparams_for(algorithm: str, model: str) -> dict:
    """Registry defaults; Lite's dataset defaults for `lite`, explicit ResNet settings else."""
    from domainbed import hparams_registry
    if model == "lite":
        return hparams_registry.default_hparams(algorithm, "SpawriousLiteM2M_hard")
    hp = hparams_registry.default_hparams(algorithm, "Debug224")
    hp.update(resnet18=(model == "resnet18"), pretrained=False, pretrained_path="",
              freeze_bn=True, resnet_dropout=0.0, data_augmentation=False)
    return hp


def build_featurizer(model: str, shape: tuple, hparams: dict) -> nn.Module:
    if model == "lite":
        return networks.LiteCNN(shape, hparams)
    return networks.ResNet(shape, hparams)  # resnet18 / resnet50 chosen by hparams


@contextlib.contextmanager
def featurizer_of(model: str):
    """Make `networks.Featurizer` build `model` whatever the input size (ResNet at 64x64)."""
    original = networks.Featurizer
    networks.Featurizer = lambda shape, hparams: build_featurizer(model, tuple(shape), hparams)
    try:
        yield
    finally:
        networks.Featurizer = original


def make_minibatches(args, size: int, device: torch.device) -> list[tuple]:
    """NUM_ENVS environments of random images, labels and attributes (x, y, a)."""
    g = torch.Generator().manual_seed(args.seed)
    mbs = []
    for _ in range(NUM_ENVS):
        x = torch.randn(args.batch_per_env, 3, size, size, generator=g)
        y = torch.randint(0, NUM_CLASSES, (args.batch_per_env,), generator=g)
        a = torch.randint(0, NUM_ATTRIBUTES, (args.batch_per_env,), generator=g)
        mbs.append((x.to(device), y.to(device), a.to(device)))
    return mbs


# --------------------------------------------------------------------------------------
# The library-style baseline


def last_map_module(featurizer: nn.Module) -> nn.Module:
    """The module whose output is the feature map entering global average pooling."""
    if isinstance(featurizer, networks.LiteCNN):
        return featurizer.blocks[-1]
    return featurizer.network.layer4


class LibraryGradCAM(nn.Module):
    """ERM + confounder head + Grad-CAM overlap, maps taken as Grad-CAM libraries do.

    A forward hook on the last conv stage keeps A and puts a tensor hook on it; for each
    head, `score.backward(create_graph=True, retain_graph=True)` (score = the summed logit
    of the true class, as in pytorch-grad-cam) runs through the whole network, and the
    tensor hook keeps dScore/dA. Channel weights = spatial mean of those gradients. The
    loss is EX2L's: CE + beta * CE(confounder) + lambda * mean cosine overlap.
    """

    def __init__(self, featurizer: nn.Module, hparams: dict):
        super().__init__()
        from ex2l_domainbed.feature_maps import split_featurizer
        self.hparams = hparams
        self.featurizer = featurizer
        self.classifier = networks.Classifier(featurizer.n_outputs, NUM_CLASSES)
        self.confounder_classifier = networks.Classifier(featurizer.n_outputs, NUM_ATTRIBUTES)
        self.neck = split_featurizer(featurizer)[1]
        self.map_module = last_map_module(featurizer)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=hparams["lr"],
                                          weight_decay=hparams["weight_decay"])

    def cam(self, x, y, a):
        """(A, label logits, confounder logits, maps [B, 2, h, w]) the library way."""
        captured, grads = {}, []

        def keep_map(module, inputs, output):
            captured["A"] = output
            output.register_hook(grads.append)

        handle = self.map_module.register_forward_hook(keep_map)
        try:
            z = self.featurizer(x)
        finally:
            handle.remove()
        logits, conf = self.classifier(z), self.confounder_classifier(z)
        for out, target in ((logits, y), (conf, a)):
            score = out.gather(1, target[:, None]).sum()
            score.backward(create_graph=True, retain_graph=True)  # full backward per head
        A = captured["A"]
        weights = torch.stack([g.mean((2, 3)) for g in grads], 1)  # [B, 2, K]
        maps = torch.relu(torch.einsum("bmk,bkhw->bmhw", weights, A))
        return A, logits, conf, maps

    def update(self, minibatches, unlabeled=None):
        from ex2l_domainbed.gradcam import overlap as overlap_lib
        x = torch.cat([mb[0] for mb in minibatches])
        y = torch.cat([mb[1] for mb in minibatches])
        a = torch.cat([mb[2] for mb in minibatches])
        _, logits, conf, maps = self.cam(x, y, a)
        overlap = overlap_lib.overlap(maps[:, 0], maps[:, 1], "cosine").mean()
        loss = (F.cross_entropy(logits, y) + self.hparams["ex2l_beta"] * F.cross_entropy(conf, a)
                + self.hparams["ex2l_lambda"] * overlap)
        self.optimizer.zero_grad(set_to_none=True)  # drops the grads the score passes left
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "overlap": overlap.item()}


def check_library_maps(lib: LibraryGradCAM, minibatches) -> float:
    """Max |library maps - gradcam(backend='autograd', score='logit') maps| on one batch."""
    from ex2l_domainbed.gradcam import gradcam
    x = torch.cat([mb[0] for mb in minibatches])
    y = torch.cat([mb[1] for mb in minibatches])
    a = torch.cat([mb[2] for mb in minibatches])
    A, _, _, maps = lib.cam(x, y, a)
    ref = gradcam(A, [lib.classifier, lib.confounder_classifier], [y, a], neck=lib.neck,
                  backend="autograd", score="logit").maps
    lib.optimizer.zero_grad(set_to_none=True)
    return float((maps.detach() - ref.detach()).abs().max())


# --------------------------------------------------------------------------------------
# Variants


def ex2l_backends(device: torch.device) -> list[str]:
    from ex2l_domainbed.gradcam import fused
    backends = ["closed_form", "autograd"]
    if device.type == "cuda":
        if fused.triton_usable(device):
            backends.append("fused")
        backends.append("auto")
    return backends


def resolved_auto(alg) -> str:
    """What `auto` resolves to for this EX2L model on its device."""
    from ex2l_domainbed.gradcam import choose_backend
    probe = torch.empty(1, 1, 1, 1, device=next(alg.parameters()).device)
    return choose_backend("auto", probe, [alg.classifier, alg.confounder_classifier], alg.neck,
                          None, alg.hparams["ex2l_overlap"])


def build_variants(model: str, args, device: torch.device) -> dict[str, nn.Module]:
    """name -> algorithm; each built from the same seed so the initial weights match."""
    from domainbed import algorithms
    shape = (3, image_size(model, args), image_size(model, args))
    variants = {}
    with featurizer_of(model):
        torch.manual_seed(args.seed)
        variants["ERM"] = algorithms.get_algorithm_class("ERM")(
            shape, NUM_CLASSES, NUM_ENVS, hparams_for("ERM", model))
        ex2l = algorithms.get_algorithm_class("EX2L")
        for backend in ex2l_backends(device):
            hp = dict(hparams_for("EX2L", model), ex2l_gradcam=backend)
            torch.manual_seed(args.seed)
            alg = ex2l(shape, NUM_CLASSES, NUM_ENVS, hp, num_attributes=NUM_ATTRIBUTES)
            name = f"EX2L/{backend}"
            if backend == "auto":
                name += f"->{resolved_auto(alg.to(device))}"
            variants[name] = alg
    torch.manual_seed(args.seed)
    hp = hparams_for("EX2L", model)
    variants["library-hook"] = LibraryGradCAM(build_featurizer(model, shape, hp), hp)
    for alg in variants.values():
        alg.to(device).train()
    return variants


def smoke_test(variants: dict, minibatches) -> dict[str, str]:
    """One step of each variant; a variant that fails is dropped (ERM must not fail)."""
    failed = {}
    for name in list(variants):
        try:
            variants[name].update(minibatches)
        except Exception as exc:  # e.g. a kernel that does not build on this device
            if name == "ERM":
                raise
            failed[name] = f"{type(exc).__name__}: {exc}"
            print(f"  dropped {name}: {failed[name]}", flush=True)
            del variants[name]
    return failed


# --------------------------------------------------------------------------------------
# Timing and memory


def timed_step(alg, minibatches, device: torch.device) -> float:
    """Milliseconds of one update (CUDA events, read after synchronising)."""
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        alg.update(minibatches)
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    alg.update(minibatches)
    return (time.perf_counter() - t0) * 1e3


def interleaved_times(variants: dict, minibatches, device, warmup: int, rounds: int) -> dict:
    """name -> list of ms; each round times every variant once, in a rotating order."""
    names = list(variants)
    times = {n: [] for n in names}
    for r in range(warmup + rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            ms = timed_step(variants[name], minibatches, device)
            if r >= warmup:
                times[name].append(ms)
    return times


WINDOW = "measured_step"


def allocator_records(prof) -> tuple[list[tuple[float, int]], tuple[float, float], str]:
    """(time, +/-bytes) of every CPU allocation/free the profiler recorded, the measured
    window's (start, end) on the same clock, and which source was used."""
    try:  # raw records: allocations inside ops included, each at its own time
        from torch.autograd import DeviceType
        cpu_types = (DeviceType.CPU, DeviceType.MKLDNN, DeviceType.IDEEP)
        events = prof.profiler.kineto_results.events()
        window = [(e.start_ns(), e.end_ns()) for e in events if e.name() == WINDOW]
        records = [(e.start_ns(), e.nbytes()) for e in events
                   if e.name() == "[memory]" and e.device_type() in cpu_types]
        if records and window:
            return records, window[0], "raw allocator records (kineto_results)"
    except (AttributeError, ImportError):
        pass
    # Fallback, an upper bound: each op's own net allocation placed at its start; frees
    # made outside any op inside the window are folded into the window event and lost.
    events = prof.events()
    window = [(e.time_range.start, e.time_range.end) for e in events if e.name == WINDOW]
    records = [(e.time_range.start,
                e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
               for e in events if e.name != WINDOW]
    return records, window[0], "function events (upper bound: frees outside ops lost)"


def peak_in_window(records: list[tuple[float, int]], window: tuple[float, float]) -> int:
    """Peak of the running sum of allocations (+) and frees (-) inside `window`, in time
    order, relative to the window's start (>= 0)."""
    inside = sorted((r for r in records if window[0] <= r[0] <= window[1]), key=lambda r: r[0])
    if not inside:
        return 0
    return int(max(0, np.cumsum([b for _, b in inside]).max()))


def cpu_peak(fn, before=None) -> tuple[int, str]:
    """Peak extra CPU memory of `fn()`. `before()` runs first under the same profiler, so
    that tensors `fn` frees (e.g. last step's gradients) were allocated while profiling:
    the profiler records no size for freeing a block allocated before it started."""
    from torch.profiler import ProfilerActivity, profile, record_function
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        if before is not None:
            before()
        with record_function(WINDOW):
            fn()
    records, window, how = allocator_records(prof)
    return peak_in_window(records, window), how


def memory_probe() -> tuple[int, int, str]:
    """Check the CPU method on known sizes. An 8 MB block allocated before the window is
    freed in it (-8), 40 MB are allocated and freed (+32 peak), then 2 x 24 MB stay live
    (+40): the expected peak is 40 MB (48 if the first free were lost, 24 if allocations
    inside ops were)."""
    held = {}

    def before():
        held["w"] = torch.ones(2_000_000)

    def work():
        del held["w"]
        x = torch.empty(10_000_000)
        del x
        y = torch.ones(6_000_000)
        z = y * 2  # noqa: F841
    peak, how = cpu_peak(work, before)
    return peak, 40_000_000, how


def step_peak(alg, minibatches, device: torch.device) -> tuple[int, dict]:
    """Peak bytes allocated during one update above the allocation at its start."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        alg.update(minibatches)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return peak - base, {"cuda_allocated_at_start": base, "cuda_max_allocated": peak}
    step = lambda: alg.update(minibatches)  # noqa: E731
    peak, how = cpu_peak(step, before=step)  # the second of two profiled steps
    return peak, {"cpu_method": how + ", second of two profiled steps"}


def static_bytes(alg) -> dict[str, int]:
    """Parameters, their gradients (trainable ones) and the optimizer's state, in bytes."""
    params = list(alg.parameters())
    state = [t for s in alg.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    return {
        "parameters": sum(p.numel() * p.element_size() for p in params),
        "gradients": sum(p.numel() * p.element_size() for p in params if p.requires_grad),
        "optimizer_state": sum(t.numel() * t.element_size() for t in state),
    }


# --------------------------------------------------------------------------------------
# Report


def summarise(times: dict, memory: dict) -> dict:
    rows = {}
    for name, ms in times.items():
        ms_arr = np.array(ms)
        static = memory[name]["static"]
        total = sum(static.values()) + memory[name]["step_peak"]
        rows[name] = {
            "median_ms": float(np.median(ms_arr)),
            "q25_ms": float(np.percentile(ms_arr, 25)),
            "q75_ms": float(np.percentile(ms_arr, 75)),
            "min_ms": float(ms_arr.min()), "max_ms": float(ms_arr.max()),
            "times_ms": [round(t, 3) for t in ms],
            "step_peak_bytes": memory[name]["step_peak"],
            "total_bytes": total, **{f"{k}_bytes": v for k, v in static.items()},
            "memory_detail": memory[name]["detail"],
        }
    base = rows["ERM"]
    for row in rows.values():
        row["time_ratio"] = row["median_ms"] / base["median_ms"]
        row["step_peak_ratio"] = row["step_peak_bytes"] / max(base["step_peak_bytes"], 1)
        row["total_ratio"] = row["total_bytes"] / base["total_bytes"]
    return rows


def goal_marks(row: dict) -> str:
    time_ok = "ok" if row["time_ratio"] <= GOAL_TIME else "OVER"
    mem_ok = "ok" if row["total_ratio"] <= GOAL_MEMORY else "OVER"
    return f"time {time_ok}, mem(total) {mem_ok}"


def print_table(model: str, rows: dict) -> None:
    head = (f"{'variant':<26} {'median ms':>10} {'x ERM':>6} {'IQR ms':>17} "
            f"{'peak step MiB':>13} {'x ERM':>6} {'total MiB':>10} {'x ERM':>6}  goals")
    print(f"\n== {model} ==  (goals: time <= {GOAL_TIME:.2f}x ERM, "
          f"memory <= {GOAL_MEMORY:.2f}x ERM)")
    print(head + "\n" + "-" * len(head))
    for name, r in rows.items():
        iqr = f"{r['q25_ms']:.1f}-{r['q75_ms']:.1f}"
        marks = "" if name == "ERM" else goal_marks(r)
        print(f"{name:<26} {r['median_ms']:>10.1f} {r['time_ratio']:>6.2f} {iqr:>17} "
              f"{r['step_peak_bytes'] / MB:>13.1f} {r['step_peak_ratio']:>6.2f} "
              f"{r['total_bytes'] / MB:>10.1f} {r['total_ratio']:>6.2f}  {marks}")


def bench_model(model: str, args, device: torch.device) -> dict:
    size = image_size(model, args)
    print(f"\n[{model}] building variants ({NUM_ENVS} envs x {args.batch_per_env} images, "
          f"{size}x{size})", flush=True)
    variants = build_variants(model, args, device)
    minibatches = make_minibatches(args, size, device)
    diff = check_library_maps(variants["library-hook"], minibatches)
    verdict = "OK" if diff <= MAP_CHECK_TOL else "MISMATCH"
    print(f"  library-hook maps vs gradcam(backend='autograd', score='logit'): "
          f"max |diff| = {diff:.3e} ({verdict}, tol {MAP_CHECK_TOL:g})", flush=True)
    failed = smoke_test(variants, minibatches)
    t0 = time.time()
    times = interleaved_times(variants, minibatches, device, args.warmup, args.rounds)
    print(f"  timed {args.rounds} rounds after {args.warmup} warm-up rounds "
          f"({time.time() - t0:.0f} s)", flush=True)
    memory = {}
    for name, alg in variants.items():
        peak, detail = step_peak(alg, minibatches, device)
        memory[name] = {"step_peak": peak, "detail": detail, "static": static_bytes(alg)}
    rows = summarise(times, memory)
    print_table(model, rows)
    return {"image_size": size, "library_map_check_max_abs_diff": diff,
            "library_map_check_ok": diff <= MAP_CHECK_TOL, "dropped_variants": failed,
            "variants": rows}


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=".*create_graph=True.*reference cycle.*")
    from ex2l_domainbed.plugin import register
    register()  # directly, so the script also runs from a checkout that is not pip-installed
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    malloc = "glibc default" if device.type == "cuda" or args.keep_malloc else steady_malloc()
    print(f"step_overhead: torch {torch.__version__}, device {device} ({device_name(device)}), "
          f"torch threads {torch.get_num_threads()} (OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), batch {NUM_ENVS}x"
          f"{args.batch_per_env}, warm-up {args.warmup}, rounds {args.rounds}, CPU malloc: "
          f"{malloc}")
    probe = None
    if device.type == "cpu":
        measured, expected, how = memory_probe()
        probe = {"measured_bytes": measured, "expected_bytes": expected, "method": how}
        print(f"CPU memory probe ({how}): expected peak {expected / 1e6:.1f} MB, "
              f"measured {measured / 1e6:.1f} MB")
    results = {}
    for model in args.models:
        results[model] = bench_model(model, args, device)
    out = {
        "benchmark": "step_overhead",
        "settings": {
            "torch": torch.__version__, "device": str(device), "device_name": device_name(device),
            "threads": torch.get_num_threads(),
            "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
            "models": args.models, "num_envs": NUM_ENVS, "batch_per_env": args.batch_per_env,
            "num_classes": NUM_CLASSES, "num_attributes": NUM_ATTRIBUTES,
            "warmup_rounds": args.warmup, "rounds": args.rounds, "seed": args.seed,
            "goals": {"time_ratio": GOAL_TIME, "memory_ratio": GOAL_MEMORY},
            "cpu_memory_probe": probe, "cpu_malloc": malloc,
        },
        "results": results,
    }
    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    main()
