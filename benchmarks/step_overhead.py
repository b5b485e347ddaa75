"""What does EX2L's Grad-CAM penalty cost per training step, next to plain ERM?

Measures one full training step, `algorithm.update(minibatches)` (forward, loss, backward,
Adam step), on the same backbone, batch and data for these variants:

- `ERM`                  the baseline: one head, cross-entropy;
- `EX2L/<backend>`       EX2L (label head + confounder head + Grad-CAM cosine overlap) with
                         each Grad-CAM backend that can run here: `closed_form`, `autograd`,
                         and on CUDA `fused` and `auto` (whatever `auto` resolves to);
- `library-hook`         the same loss with maps computed the way Grad-CAM libraries do it
                         (`ex2l_domainbed.gradcam.reference.library_gradcam`: hooks, and one
                         full `backward(create_graph=True)` per head through the network).

All variants are timed in one run, interleaved (`common.interleaved_rounds`) after warm-up
rounds. Reported per variant: median step time with its IQR, and the ratio to ERM; the
step's peak extra memory (`common.peak_extra_bytes`: above what was allocated when the step
began) and a "total" = parameters + gradients + Adam state + step peak, each with its ratio
to ERM. The goals printed next to the ratios: time <= 1.05x ERM, memory <= 1.10x ERM (the
goals column judges the median time and the total memory). How to read it: a ratio is only
as good as the IQRs beside it; on a shared CPU they are wide, so compare medians of one run,
never across runs. Memory is in MiB. The library-hook row shows what the closed form saves;
its maps are checked against `gradcam(backend="autograd", score="logit")` first. On the CPU
the memory method is checked on known sizes first (`common.cpu_memory_probe`), and glibc is
switched to a steady allocator (`common.steady_malloc`; `--keep_malloc` leaves it).

    OMP_NUM_THREADS=1 python -m benchmarks.step_overhead --device cpu
    python -m benchmarks.step_overhead --device cuda --resnet50

Models: `resnet18` (torchvision ResNet-18, not pretrained, frozen BN, 64x64 input), `lite`
(LiteCNN with Spawrious-Lite defaults: shipped pretrained weights, first 3 blocks frozen,
64x64) and, with `--resnet50`, ResNet-50 at 224x224 instead of ResNet-18. Each is built by
name through the harness's featurizer registry (hparam `featurizer`).
"""
from __future__ import annotations

import argparse
import functools
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks import common
from domainbed import networks

NUM_CLASSES = 4
NUM_ATTRIBUTES = 6
NUM_ENVS = 2
GOAL_TIME = 1.05
GOAL_MEMORY = 1.10
MAP_CHECK_TOL = 1e-5
MB = 2 ** 20  # tables print MiB
FEATURIZER_OF = {"resnet18": "resnet", "resnet50": "resnet", "lite": "lite_cnn"}


# --------------------------------------------------------------------------------------
# Settings


def workload_options() -> argparse.ArgumentParser:
    """Which models, batch and image size a step is measured on (step_profile shares it)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--models", nargs="+", default=["resnet18", "lite"],
                        choices=list(FEATURIZER_OF))
    parser.add_argument("--batch_per_env", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=64,
                        help="input size of resnet18 and lite (resnet50 always uses 224)")
    parser.add_argument("--resnet50", action="store_true",
                        help="ResNet-50 at 224x224 instead of ResNet-18 (the GPU setting)")
    return parser


def models_of(args: argparse.Namespace) -> list[str]:
    """The models to measure, with `--resnet50` standing in for ResNet-18."""
    if not args.resnet50:
        return list(args.models)
    return list(dict.fromkeys("resnet50" if m == "resnet18" else m for m in args.models))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        parents=[common.measure_options(), common.round_options(), workload_options()])
    args = common.parse_args(parser, argv, "step_overhead")
    args.models = models_of(args)
    return args


def image_size(model: str, args) -> int:
    return 224 if model == "resnet50" else args.image_size


def hparams_for(algorithm: str, model: str) -> dict:
    """Registry defaults (Lite's dataset defaults for `lite`, explicit ResNet settings
    else), with the featurizer named, whatever the input size."""
    from domainbed import hparams_registry
    if model == "lite":
        hp = hparams_registry.default_hparams(algorithm, "SpawriousLiteM2M_hard")
    else:
        hp = hparams_registry.default_hparams(algorithm, "Debug224")
        hp.update(resnet18=(model == "resnet18"), pretrained=False, pretrained_path="",
                  freeze_bn=True, resnet_dropout=0.0, data_augmentation=False)
    hp["featurizer"] = FEATURIZER_OF[model]
    return hp


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


def concat(minibatches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, a) of all environments together."""
    return tuple(torch.cat([mb[i] for mb in minibatches]) for i in range(3))


# --------------------------------------------------------------------------------------
# The library-style baseline


class LibraryGradCAM(nn.Module):
    """ERM + confounder head + Grad-CAM overlap, maps taken as Grad-CAM libraries do
    (`library_gradcam`); the loss is EX2L's: CE + beta * CE(confounder) + lambda * mean
    cosine overlap."""

    def __init__(self, input_shape: tuple, hparams: dict):
        super().__init__()
        from ex2l_domainbed.feature_maps import split_featurizer
        self.hparams = hparams
        self.featurizer = networks.Featurizer(input_shape, hparams)
        self.classifier = networks.Classifier(self.featurizer.n_outputs, NUM_CLASSES)
        self.confounder_classifier = networks.Classifier(self.featurizer.n_outputs,
                                                         NUM_ATTRIBUTES)
        self.neck = split_featurizer(self.featurizer)[1]
        self.optimizer = torch.optim.Adam(self.parameters(), lr=hparams["lr"],
                                          weight_decay=hparams["weight_decay"])

    def cam(self, x, y, a):
        from ex2l_domainbed.gradcam.reference import library_gradcam
        return library_gradcam(self.featurizer, [self.classifier, self.confounder_classifier],
                               [y, a], x)

    def update(self, minibatches, unlabeled=None):
        from ex2l_domainbed.gradcam import overlap as overlap_lib
        x, y, a = concat(minibatches)
        cam = self.cam(x, y, a)
        logits, conf = cam.logits
        overlap = overlap_lib.overlap(cam.maps[:, 0], cam.maps[:, 1], "cosine").mean()
        loss = (F.cross_entropy(logits, y) + self.hparams["ex2l_beta"] * F.cross_entropy(conf, a)
                + self.hparams["ex2l_lambda"] * overlap)
        self.optimizer.zero_grad(set_to_none=True)  # drops the grads the score passes left
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "overlap": overlap.item()}


def check_library_maps(lib: LibraryGradCAM, minibatches) -> float:
    """Max |library maps - gradcam(backend='autograd', score='logit') maps| on one batch."""
    from ex2l_domainbed.gradcam import gradcam
    x, y, a = concat(minibatches)
    cam = lib.cam(x, y, a)
    ref = gradcam(cam.features, [lib.classifier, lib.confounder_classifier], [y, a],
                  neck=lib.neck, backend="autograd", score="logit").maps
    lib.optimizer.zero_grad(set_to_none=True)
    return float((cam.maps.detach() - ref.detach()).abs().max())


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
    from ex2l_domainbed.plugin import register
    register()  # EX2L, Lite's defaults and lite_cnn (idempotent)
    # the library baseline's create_graph backward keeps a reference cycle, on purpose
    warnings.filterwarnings("ignore", message=".*create_graph=True.*reference cycle.*")
    shape = (3, image_size(model, args), image_size(model, args))
    torch.manual_seed(args.seed)
    variants = {"ERM": algorithms.get_algorithm_class("ERM")(
        shape, NUM_CLASSES, NUM_ENVS, hparams_for("ERM", model))}
    # The literal formulation: both maps differentiable, the costliest penalty (the rows keep
    # the name EX2L of the measurements in benchmarks/results).
    ex2l = algorithms.get_algorithm_class("EX2L_Literal")
    for backend in ex2l_backends(device):
        hp = dict(hparams_for("EX2L_Literal", model), ex2l_gradcam=backend)
        torch.manual_seed(args.seed)
        alg = ex2l(shape, NUM_CLASSES, NUM_ENVS, hp, num_attributes=NUM_ATTRIBUTES)
        name = f"EX2L/{backend}"
        if backend == "auto":
            name += f"->{resolved_auto(alg.to(device))}"
        variants[name] = alg
    torch.manual_seed(args.seed)
    variants["library-hook"] = LibraryGradCAM(shape, hparams_for("EX2L_Literal", model))
    for alg in variants.values():
        alg.to(device).train()
    return variants


def smoke_test(variants: dict, minibatches) -> dict[str, str]:
    """One step of each variant; a variant that fails is dropped (ERM must not fail)."""
    steps = {name: functools.partial(alg.update, minibatches) for name, alg in variants.items()}
    failed = common.drop_failures(steps, required="ERM")
    for name in failed:
        del variants[name]
    return failed


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
        static = memory[name]["static"]
        rows[name] = {
            **common.timing_stats(ms),
            "step_peak_bytes": memory[name]["step_peak"],
            "total_bytes": sum(static.values()) + memory[name]["step_peak"],
            **{f"{k}_bytes": v for k, v in static.items()},
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
    steps = {name: functools.partial(alg.update, minibatches) for name, alg in variants.items()}
    times = common.interleaved_rounds(steps, common.Timer(device), args.warmup, args.rounds)
    print(f"  timed {args.rounds} rounds after {args.warmup} warm-up rounds "
          f"({time.time() - t0:.0f} s)", flush=True)
    memory = {}
    for name, alg in variants.items():
        peak, detail = common.peak_extra_bytes(steps[name], device)
        memory[name] = {"step_peak": peak, "detail": detail, "static": static_bytes(alg)}
    rows = summarise(times, memory)
    print_table(model, rows)
    return {"image_size": size, "library_map_check_max_abs_diff": diff,
            "library_map_check_ok": diff <= MAP_CHECK_TOL, "dropped_variants": failed,
            "variants": rows}


def main(argv=None) -> int:
    args = parse_args(argv)
    machine = common.prepare(args)
    device = machine.device
    print(f"step_overhead: {machine.describe()}; batch {NUM_ENVS}x{args.batch_per_env}, "
          f"warm-up {args.warmup}, rounds {args.rounds}")
    probe = None
    if device.type == "cpu":
        probe = common.cpu_memory_probe()
        print(f"CPU memory probe ({probe['method']}): expected peak "
              f"{probe['expected_bytes'] / 1e6:.1f} MB, measured "
              f"{probe['measured_bytes'] / 1e6:.1f} MB")
    results = {model: bench_model(model, args, device) for model in args.models}
    settings = {
        **machine.settings(),
        "models": args.models, "num_envs": NUM_ENVS, "batch_per_env": args.batch_per_env,
        "num_classes": NUM_CLASSES, "num_attributes": NUM_ATTRIBUTES,
        "warmup_rounds": args.warmup, "rounds": args.rounds, "seed": args.seed,
        "goals": {"time_ratio": GOAL_TIME, "memory_ratio": GOAL_MEMORY},
        "cpu_memory_probe": probe,
    }
    common.write_json(args.out, {"benchmark": "step_overhead", "settings": settings,
                                 "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
