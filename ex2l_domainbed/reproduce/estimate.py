"""What a sweep costs before it runs: steps, images, device-hours and disk, from measurements.

Time is training steps x images per step x a measured training time per image, plus
evaluations x images per evaluation x a measured (or, where none was made, derived)
evaluation time per image, for each device that has figures for the job's backbone. The
figures are copied from benchmark result files (named beside each) so that the package never
reads benchmarks/ at run time; update them here when a benchmark is rerun. Loading and
decoding images is in none of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from domainbed import algorithms, datasets, networks
from ex2l_domainbed.datasets.spawrious import SpawriousBenchmark, challenge_cells
from ex2l_domainbed.reproduce.jobs import job_hparams

H200 = "NVIDIA H200"
CPU = "CPU (AMD EPYC, 1 thread)"
DEVICES = (H200, CPU)
DERIVED_EVAL = "derived: one third of a training step per image, not measured"
NOT_IN_FIGURES = "Data loading (decoding images) is not in these figures."


@dataclass(frozen=True)
class Figure:
    """Milliseconds per image of one kind of pass ("train/ERM", "train/EX2L", "eval") of a
    backbone on a device; measured ones name the JSON file and keys their median comes from."""

    device: str
    backbone: str  # "<featurizer>@<image size>", see `backbone_of`
    kind: str
    ms_per_image: float
    json_file: Optional[str] = None  # relative to the repository
    json_keys: tuple[str, ...] = ()
    images: int = 0  # images per measured pass
    derived: str = ""

    @property
    def source(self) -> str:
        if self.json_file is None:
            return self.derived
        return f"{self.json_file}: {'.'.join(self.json_keys)} / {self.images} images"


def _measured(device: str, backbone: str, kind: str, median_ms: float, images: int,
              json_file: str, *keys: str) -> Figure:
    return Figure(device, backbone, kind, median_ms / images, json_file, keys, images)


_R50_H200 = "benchmarks/results/h200/step_overhead_r50_b32.json"
_LITE_H200 = "benchmarks/results/h200/step_overhead_lite_b32.json"
_LITE_CPU = "benchmarks/results/cpu/step_overhead_lite_b32.json"
_R18_CPU = "benchmarks/results/cpu/step_overhead.json"
_EVAL_CPU = "benchmarks/results/cpu/eval_pass.json"


def _step(model: str, variant: str) -> tuple[str, ...]:
    return ("results", model, "variants", variant, "median_ms")


# Training steps of 2 environments x batch_per_env images (64 = 2 x 32, 32 = 2 x 16);
# EX2L's is its closed-form Grad-CAM variant.
MEASURED = [
    _measured(H200, "resnet50@224", "train/ERM", 37.58495903015137, 64,
              _R50_H200, *_step("resnet50", "ERM")),
    _measured(H200, "resnet50@224", "train/EX2L", 39.64904022216797, 64,
              _R50_H200, *_step("resnet50", "EX2L/closed_form")),
    _measured(H200, "lite_cnn@64", "train/ERM", 2.7255200147628784, 64,
              _LITE_H200, *_step("lite", "ERM")),
    _measured(H200, "lite_cnn@64", "train/EX2L", 5.454847812652588, 64,
              _LITE_H200, *_step("lite", "EX2L/closed_form")),
    _measured(CPU, "lite_cnn@64", "train/ERM", 23.608661999787728, 64,
              _LITE_CPU, *_step("lite", "ERM")),
    _measured(CPU, "lite_cnn@64", "train/EX2L", 25.048634999620845, 64,
              _LITE_CPU, *_step("lite", "EX2L/closed_form")),
    _measured(CPU, "resnet18@64", "train/ERM", 227.5748804995601, 32,
              _R18_CPU, *_step("resnet18", "ERM")),
    _measured(CPU, "resnet18@64", "train/EX2L", 227.25477750009304, 32,
              _R18_CPU, *_step("resnet18", "EX2L/closed_form")),
    # benchmarks/eval_pass.py: eval mode, no_grad, batch 64
    _measured(CPU, "resnet50@224", "eval", 3992.7547345000676, 64,
              _EVAL_CPU, "results", "resnet", "median_ms"),
    _measured(CPU, "lite_cnn@64", "eval", 22.27428099968165, 64,
              _EVAL_CPU, "results", "lite_cnn", "median_ms"),
]
FIGURES = MEASURED + [
    Figure(f.device, f.backbone, "eval", f.ms_per_image / 3, derived=DERIVED_EVAL)
    for f in MEASURED if f.device == H200 and f.kind == "train/ERM"]

# (parameters, Adam state) bytes, 4 classes: parameters_bytes and optimizer_state_bytes of
# the same step_overhead files (ERM and EX2L/closed_form rows).
MODEL_BYTES = {
    ("resnet50@224", "ERM"): (94064912, 188130468),
    ("resnet50@224", "EX2L"): (94114088, 188228828),
    ("lite_cnn@64", "ERM"): (243792, 298036),
    ("lite_cnn@64", "EX2L"): (245352, 301164),
    ("resnet18@64", "ERM"): (44714256, 89428760),
    ("resnet18@64", "EX2L"): (44726568, 89453392),
}
# results.jsonl and out.txt of `make demo`'s runs (Spawrious-Lite, 24 groups, 7 checkpoints):
# at most 3.1 KB of records and 0.6 KB of log per checkpoint.
RECORD_BYTES = 3100
LOG_BYTES = 600

BACKBONE_NAMES = {"resnet50": "ResNet-50", "resnet18": "ResNet-18", "lite_cnn": "LiteCNN"}


# ------------------------------------------------------------------------------------------
# One job


@dataclass(frozen=True)
class JobCost:
    dataset: str
    backbone: str
    family: str  # "EX2L" for EX2L and its formulations, else "ERM"
    steps: int
    images_per_step: int
    evaluations: int
    env_sizes: Optional[list[int]]  # images per environment, None when unknown
    model_files: int = 1  # model.pkl, plus one per checkpoint with save_model_every_checkpoint

    @property
    def images_trained(self) -> int:
        return self.steps * self.images_per_step

    @property
    def images_evaluated(self) -> Optional[int]:
        return None if self.env_sizes is None else self.evaluations * sum(self.env_sizes)


def evaluations(steps: int, checkpoint_freq: int) -> int:
    """train.py evaluates at every step % checkpoint_freq == 0 and at the last step."""
    n = len(range(0, steps, checkpoint_freq))
    return n if (steps - 1) % checkpoint_freq == 0 else n + 1


def image_size(dataset_cls: type) -> Optional[int]:
    shape = getattr(dataset_cls, "INPUT_SHAPE", None)
    return shape[-1] if shape else getattr(dataset_cls, "IMAGE_SIZE", None)


def backbone_of(hparams: dict, dataset_cls: type) -> str:
    """"<featurizer>@<image size>" with ResNets by depth, e.g. resnet50@224, lite_cnn@64."""
    size = image_size(dataset_cls)
    name = hparams.get("featurizer") or networks.AUTO
    if name == networks.AUTO:
        try:
            name = networks.featurizer_for_shape((3, size, size))
        except networks.NoFeaturizerForShape:
            name = "unknown"
    if name == "resnet":
        name = "resnet18" if hparams.get("resnet18") else "resnet50"
    return f"{name}@{size}"


def environment_sizes(dataset_cls: type) -> Optional[list[int]]:
    """Images per environment: a dataset's declared `ENVIRONMENT_SIZES`, the challenge tables
    for Spawrious (a folder read whole holds BASE_COUNT images), or by building a dataset that
    needs no data; else None."""
    declared = getattr(dataset_cls, "ENVIRONMENT_SIZES", None)
    if declared:
        return list(declared)
    if issubclass(dataset_cls, SpawriousBenchmark):
        return [sum(c.limit if c.limit is not None else dataset_cls.BASE_COUNT for c in env)
                for env in challenge_cells(dataset_cls.CHALLENGE, dataset_cls.BASE_COUNT)]
    if not getattr(dataset_cls, "NEEDS_DATA_DIR", True):
        try:
            return [len(env) for env in dataset_cls(None, [0], {})]
        except Exception:  # a dataset that cannot be built without more: unknown
            return None
    return None


def family_of(algorithm: str) -> str:
    from ex2l_domainbed.algorithm import EX2L
    return "EX2L" if issubclass(algorithms.get_algorithm_class(algorithm), EX2L) else "ERM"


def job_cost(train_args: dict) -> JobCost:
    """The job's figures, with the hparams it will train with."""
    hparams = job_hparams(train_args)
    cls = datasets.get_dataset_class(train_args["dataset"])
    steps = train_args.get("steps") or cls.N_STEPS
    freq = train_args.get("checkpoint_freq") or cls.CHECKPOINT_FREQ
    n_train_envs = len(datasets.training_envs(cls, train_args["test_envs"]))
    return JobCost(train_args["dataset"], backbone_of(hparams, cls),
                   family_of(train_args["algorithm"]), steps,
                   hparams["batch_size"] * n_train_envs, evaluations(steps, freq),
                   environment_sizes(cls),
                   1 + (evaluations(steps, freq)
                        if train_args.get("save_model_every_checkpoint") else 0))


# ------------------------------------------------------------------------------------------
# The report


def figure(device: str, backbone: str, kind: str) -> Optional[Figure]:
    return next((f for f in FIGURES if (f.device, f.backbone, f.kind) == (device, backbone, kind)),
                None)


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _duration(ms: float) -> str:
    if ms >= 3.6e6:
        return f"{ms / 3.6e6:,.1f} h"
    return f"{ms / 6e4:.1f} min" if ms >= 6e4 else f"{ms / 1e3:.0f} s"


def _backbone_label(backbone: str) -> str:
    name, _, size = backbone.partition("@")
    return f"{BACKBONE_NAMES.get(name, name)} at {size} px"


def dataset_lines(costs: list[JobCost], env_names: list[str]) -> list[str]:
    """Per-run figures of one dataset's jobs."""
    c = costs[0]
    per_step = sorted({j.images_per_step for j in costs})
    step_text = (f"{per_step[0]:,}" if len(per_step) == 1
                 else f"{per_step[0]:,} to {per_step[-1]:,}")
    trained = sum(j.images_trained for j in costs) / len(costs)
    lines = [f"  {c.dataset}: {_backbone_label(c.backbone)}, {c.steps:,} steps x {step_text} "
             f"images (batch x training envs) = {_n(trained)} images trained per run"
             + (" on average" if len(per_step) > 1 else "")]
    if c.env_sizes is None:
        lines.append("    images per evaluation: unknown (the dataset must be read to count them)")
        return lines
    per_eval = sum(c.env_sizes)
    parts = " + ".join(f"{name} {_n(n)}" for name, n in zip(env_names, c.env_sizes))
    lines.append(f"    {c.evaluations} evaluations a run x {_n(per_eval)} images (~{per_eval / 1e3:.1f}k:"
                 f" {parts}; every split of every environment) = {_n(c.images_evaluated)} images "
                 f"evaluated per run, {c.images_evaluated / trained:.2f}x what training sees")
    return lines


def device_lines(costs: list[JobCost], device: str) -> list[str]:
    train_ms = eval_ms = 0.0
    used: dict[Figure, None] = {}
    missing: dict[str, None] = {}
    for j in costs:
        train = figure(device, j.backbone, f"train/{j.family}")
        evaluate = figure(device, j.backbone, "eval")
        if train is None:
            missing[f"training {j.family} on {_backbone_label(j.backbone)}"] = None
        if evaluate is None:
            missing[f"evaluation on {_backbone_label(j.backbone)}"] = None
        if j.images_evaluated is None:
            missing[f"images per evaluation of {j.dataset}"] = None
        if train is None or evaluate is None or j.images_evaluated is None:
            continue
        used.update({train: None, evaluate: None})
        train_ms += j.images_trained * train.ms_per_image
        eval_ms += j.images_evaluated * evaluate.ms_per_image
    if missing:
        return [f"  {device}: unknown (no figure for {'; '.join(missing)})"]
    lines = [f"  {device}: {_duration(train_ms)} training + {_duration(eval_ms)} evaluation "
             f"= {_duration(train_ms + eval_ms)} of device time"]
    for f in sorted(used, key=lambda f: f.kind == "eval"):
        lines.append(f"    {f.kind} {_backbone_label(f.backbone)}: {f.ms_per_image:.4g} ms/image "
                     f"({f.source})")
    return lines


def disk_lines(costs: list[JobCost]) -> list[str]:
    if any((j.backbone, j.family) not in MODEL_BYTES for j in costs):
        unknown = sorted({_backbone_label(j.backbone) for j in costs
                          if (j.backbone, j.family) not in MODEL_BYTES})
        return [f"  disk: unknown (no parameter count for {', '.join(unknown)})"]
    final = sum(j.model_files * MODEL_BYTES[j.backbone, j.family][0]
                + j.evaluations * (RECORD_BYTES + LOG_BYTES) for j in costs)
    resume = max(sum(MODEL_BYTES[j.backbone, j.family]) for j in costs)
    every = " and one model_step file per checkpoint" if any(j.model_files > 1 for j in costs) \
        else ""
    return [f"  disk: {_bytes(final)} when done (per job model.pkl{every} = the parameters, plus "
            f"results.jsonl ~{RECORD_BYTES / 1e3:.1f} KB and logs ~{LOG_BYTES / 1e3:.1f} KB per "
            f"checkpoint); each running job also holds its resume checkpoint (parameters + "
            f"Adam state), up to {_bytes(resume)}, removed when it finishes"]


def report(all_train_args: list[dict]) -> list[str]:
    """The estimate's lines for these jobs."""
    costs = [job_cost(a) for a in all_train_args]
    lines = [f"Estimate for {len(costs)} jobs:"]
    by_dataset: dict[str, list[JobCost]] = {}
    for c in costs:
        by_dataset.setdefault(c.dataset, []).append(c)
    for name, group in by_dataset.items():
        lines += dataset_lines(group, list(datasets.get_dataset_class(name).ENVIRONMENTS))
    evaluated = [c.images_evaluated for c in costs]
    total_eval = "unknown" if None in evaluated else _n(sum(evaluated))
    lines.append(f"  total: {_n(sum(c.steps for c in costs))} training steps, "
                 f"{_n(sum(c.images_trained for c in costs))} images trained, {total_eval} "
                 f"images evaluated")
    lines.append("  device-hours, per device with figures:")
    for device in DEVICES:
        lines += ["  " + line for line in device_lines(costs, device)]
    lines += disk_lines(costs)
    lines.append(f"  {NOT_IN_FIGURES}")
    return lines
