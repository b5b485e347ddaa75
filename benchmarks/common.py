"""What the benchmarks share: options, device setup, timing, the memory probe, training runs
and result files, each said once here so that every script measures the same way.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")

# --------------------------------------------------------------------------------------
# Devices and where results go


def default_device() -> str:
    """Where a run goes unless told: the GPU when there is one (as the trainer chooses)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_folder(device: torch.device) -> str:
    """The results folder of a device: `cpu`, or a slug of the GPU's name without its
    vendor ("NVIDIA H200" -> `h200`, "NVIDIA A100-SXM4-80GB" -> `a100_sxm4_80gb`)."""
    if device.type != "cuda":
        return "cpu"
    name = re.sub(r"^(nvidia|amd)\s+", "", device_name(device).strip().lower())
    return re.sub(r"[^a-z0-9]+", "_", name).strip("_") or "cuda"


def default_out(script: str, device: torch.device) -> str:
    """`benchmarks/results/<device>/<script>.json`."""
    return os.path.join(RESULTS, device_folder(device), f"{script}.json")


def write_json(path: str, result: dict) -> None:
    """Write a benchmark's result file (creating its folder) and say where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {path}")


# --------------------------------------------------------------------------------------
# Options: parents for argparse.ArgumentParser(parents=[...])


def _add_threads(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--threads", type=int, default=1, help=help)


def _add_out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="JSON result file "
                        "(default: benchmarks/results/<device>/<script>.json)")


def measure_options() -> argparse.ArgumentParser:
    """Options of the scripts that measure in their own process."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--device", default=default_device(), choices=["cpu", "cuda"])
    _add_threads(parser, "torch.set_num_threads")
    parser.add_argument("--keep_malloc", action="store_true",
                        help="CPU: keep glibc's adaptive malloc (default: steady, see "
                             "benchmarks.common.steady_malloc)")
    parser.add_argument("--seed", type=int, default=0)
    _add_out(parser)
    return parser


def round_options(warmup: int = 5, rounds: int = 20) -> argparse.ArgumentParser:
    """Warm-up and timed rounds of `interleaved_rounds`."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed rounds")
    parser.add_argument("--rounds", type=int, default=rounds, help="timed rounds")
    return parser


def training_options(out_dir: str) -> argparse.ArgumentParser:
    """Options of the scripts that train DomainBed runs in child processes."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--data_dir", default="data/spawrious_lite")
    parser.add_argument("--out_dir", default=out_dir,
                        help="run folders; a finished run there is reused, not retrained")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    _add_threads(parser, "torch threads per run")
    _add_out(parser)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
               script: str) -> argparse.Namespace:
    """Parse (usage shown as `python -m benchmarks.<script>`), refuse CUDA where there is
    none, and give `--out` the script's default."""
    parser.prog = f"python -m benchmarks.{script}"
    args = parser.parse_args(argv)
    device = getattr(args, "device", default_device())
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    if getattr(args, "out", "") is None:
        args.out = default_out(script, torch.device(device))
    return args


# --------------------------------------------------------------------------------------
# Setting up the process


def steady_malloc() -> str:
    """Switch glibc to a steady allocator (no mmap, no trimming); returns what was done.

    glibc returns freed blocks above its adaptive mmap threshold to the OS, so a fresh tensor
    of a few MB can page-fault on every step, and whether it does depends on the process's
    history (docs/performance.md has an example). Serving every block from a
    heap that is never trimmed makes every variant reuse memory alike.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2 ** 31 - 1) == 1
    except (OSError, AttributeError):
        ok = False
    return "steady (glibc mallopt: no mmap, no trim)" if ok else "glibc default (mallopt failed)"


@dataclass(frozen=True)
class Machine:
    """The device a script measures on, and how the process was set up for it."""

    device: torch.device
    malloc: str

    def settings(self) -> dict[str, Any]:
        """The environment as the result files record it."""
        return {"torch": torch.__version__, "device": str(self.device),
                "device_name": device_name(self.device), "threads": torch.get_num_threads(),
                "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
                "cpu_malloc": self.malloc}

    def describe(self) -> str:
        s = self.settings()
        return (f"torch {s['torch']}, device {s['device']} ({s['device_name']}), torch threads "
                f"{s['threads']} (OMP_NUM_THREADS={s['omp_num_threads_env'] or 'unset'}), "
                f"CPU malloc: {s['cpu_malloc']}")


def prepare(args: argparse.Namespace) -> Machine:
    """Threads, cuDNN autotuning on CUDA, and the steady allocator on the CPU (unless
    `--keep_malloc`), as `measure_options` asked."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        malloc = "glibc default"
    else:
        malloc = "glibc default" if args.keep_malloc else steady_malloc()
    return Machine(device, malloc)


def drop_failures(candidates: Mapping[str, Callable[[], object]], required: str) -> dict[str, str]:
    """Run each candidate once; return name -> error of those that raised, saying so, so
    that e.g. a kernel that does not build on this device does not end the run. The
    `required` one (the baseline) re-raises."""
    failed = {}
    for name, fn in candidates.items():
        try:
            fn()
        except Exception as exc:
            if name == required:
                raise
            failed[name] = f"{type(exc).__name__}: {exc}"
            print(f"  dropped {name}: {failed[name]}", flush=True)
    return failed


# --------------------------------------------------------------------------------------
# Timing


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Milliseconds of `fn()`: CUDA events read after synchronising, or perf_counter."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(self.device)
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def interleaved_rounds(jobs: Mapping[Hashable, Callable[[], object]], timer: Timer,
                       warmup: int, rounds: int) -> dict[Hashable, list[float]]:
    """key -> ms per timed round. Every round times each job once, starting one job later
    than the round before, so drifts in machine load hit all jobs alike; the first `warmup`
    rounds are not kept."""
    keys = list(jobs)
    times: dict[Hashable, list[float]] = {k: [] for k in keys}
    for r in range(warmup + rounds):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            ms = timer(jobs[key])
            if r >= warmup:
                times[key].append(ms)
    return times


def timing_stats(ms: Sequence[float]) -> dict[str, Any]:
    """Median, quartiles (the IQR), range and the raw times, in milliseconds."""
    a = np.asarray(ms, dtype=float)
    return {"median_ms": float(np.median(a)), "q25_ms": float(np.percentile(a, 25)),
            "q75_ms": float(np.percentile(a, 75)), "min_ms": float(a.min()),
            "max_ms": float(a.max()), "times_ms": [round(float(t), 4) for t in a]}


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    a = np.asarray(list(values), dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


# --------------------------------------------------------------------------------------
# Memory
#
# On CUDA: max_memory_allocated around one call, minus the allocation at its start. On the
# CPU: two calls under torch.profiler(profile_memory=True), and the peak of the running sum
# of the allocator's allocation (+bytes) and free (-bytes) records inside the second call.
# Two, because the profiler records no size when a block allocated before it started is
# freed (e.g. the previous step's gradients); its warning "Memory block of unknown size was
# allocated before the profiling started" concerns the first, unmeasured call.

WINDOW = "measured_window"


def _allocator_records(prof) -> tuple[list[tuple[float, int]], tuple[float, float], str]:
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


def _peak_in_window(records: list[tuple[float, int]], window: tuple[float, float]) -> int:
    """Peak of the running sum of allocations (+) and frees (-) inside `window`, in time
    order, relative to the window's start (>= 0)."""
    inside = sorted((r for r in records if window[0] <= r[0] <= window[1]), key=lambda r: r[0])
    if not inside:
        return 0
    return int(max(0, np.cumsum([b for _, b in inside]).max()))


def cpu_peak(fn: Callable[[], object],
             before: Callable[[], object] | None = None) -> tuple[int, str]:
    """Peak extra CPU memory of `fn()` and the method used. `before()` runs first under the
    same profiler, so that blocks `fn` frees were allocated while profiling."""
    from torch.profiler import ProfilerActivity, profile, record_function
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        if before is not None:
            before()
        with record_function(WINDOW):
            fn()
    records, window, how = _allocator_records(prof)
    return _peak_in_window(records, window), how


def cpu_memory_probe() -> dict[str, Any]:
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
    return {"measured_bytes": peak, "expected_bytes": 40_000_000, "method": how}


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> tuple[int, dict]:
    """Peak bytes allocated during `fn()` above the allocation at its start, and how."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return peak - base, {"cuda_allocated_at_start": base, "cuda_max_allocated": peak}
    peak, how = cpu_peak(fn, before=fn)
    return peak, {"cpu_method": how + ", second of two profiled calls"}


# --------------------------------------------------------------------------------------
# Training runs (child processes of the harness's trainer) and their selection

TRAINER = ("-m", "domainbed.scripts.train")
SECONDS_FILE = "benchmark_seconds"


def training_args(dataset: str, algorithm: str, data_dir: str, out: str, hparams_seed: int,
                  trial: int, hparams: Mapping[str, Any] | None = None, test_env: int = 0,
                  extra: Sequence[str] = ()) -> list[str]:
    """The trainer's arguments for one run on test environment `test_env`, seeded as
    DomainBed's sweep seeds it; `hparams` are fixed on top of the seed's draw, and `extra`
    are further train flags."""
    from domainbed.lib import misc
    argv = ["--dataset", dataset, "--algorithm", algorithm, "--test_envs", str(test_env),
            "--data_dir", os.path.abspath(data_dir), "--output_dir", os.path.abspath(out),
            "--hparams_seed", str(hparams_seed), "--trial_seed", str(trial),
            "--seed", str(misc.seed_hash(dataset, algorithm, [test_env], hparams_seed, trial)),
            *extra]
    if hparams:
        argv += ["--hparams", json.dumps(dict(hparams))]
    return argv


def train_once(out: str, argv: Sequence[str], threads: int,
               entry: Sequence[str] = TRAINER) -> tuple[float, bool]:
    """Train into `out` with `python <entry> <argv>` unless `out/done` exists; returns
    (seconds, whether it trained now). The seconds are kept in `out`, so a reused run
    still reports how long it took (0 when it was trained by something else)."""
    timing = os.path.join(out, SECONDS_FILE)
    if os.path.exists(os.path.join(out, "done")):
        if not os.path.exists(timing):
            return 0.0, False
        with open(timing) as f:
            return float(f.read()), False
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.time()
    proc = subprocess.run([sys.executable, *entry, *argv], env=env, cwd=REPO, text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({out}):\n{proc.stderr[-2000:]}")
    seconds = time.time() - t0
    with open(timing, "w") as f:
        f.write(f"{seconds:.1f}\n")
    return seconds, True


def in_parallel(fn: Callable[[Any], Any], jobs: Sequence[Any],
                workers: int) -> Iterator[tuple[Any, Any]]:
    """(job, fn(job)) as each finishes, `workers` at a time (threads: each job is a child
    process, so the GIL is no limit)."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(fn, job): job for job in jobs}
        for fut in concurrent.futures.as_completed(futures):
            yield futures[fut], fut.result()


def ensure_lite_data(data_dir: str) -> None:
    """Generate Spawrious-Lite once, up front, rather than racing in the first runs."""
    from ex2l_domainbed.datasets import spawrious_lite
    if not os.path.isdir(os.path.join(data_dir, "spawrious224")):
        spawrious_lite.generate(data_dir)


def select_checkpoint(out: str) -> tuple[dict, dict[str, float]]:
    """Training-domain validation inside one run: the first checkpoint with the best mean
    validation accuracy of the training environments, and its {val, aa, wga}."""
    from domainbed.lib.query import Q
    from domainbed.model_selection import IIDAccuracySelectionMethod as IID

    with open(os.path.join(out, "results.jsonl")) as f:
        records = Q([json.loads(line) for line in f if line.strip()])
    best = records.argmax(lambda r: IID.checkpoint_acc(r)["val_acc"])
    scores = {"val": IID.checkpoint_acc(best)["val_acc"],
              "aa": IID.checkpoint_acc(best, "acc")["test_acc"],
              "wga": IID.checkpoint_acc(best, "wga")["test_acc"]}
    return best, scores


# --------------------------------------------------------------------------------------
# Calibration benchmarks (lite_baselines, waterbirds_baselines, cmnist_baselines)


def print_targets(checks: list[tuple[str, bool]], title: str) -> None:
    """Each calibration target, met or not."""
    print(f"\n{title}:")
    for text, ok in checks:
        print(f"  [{'met' if ok else 'NOT MET'}] {text}")


def calibration_json(benchmark: str, args: argparse.Namespace, t0: float, seconds: dict,
                     table: dict, per_trial: dict, checks: list[tuple[str, bool]],
                     **settings) -> dict:
    """The result file of a calibration benchmark: its settings, the table (mean, sd), every
    trial, the run times and the targets."""
    import torch
    return {
        "benchmark": benchmark, **settings, "trials": args.trials,
        "threads_per_run": args.threads, "parallel_runs": args.jobs, "torch": torch.__version__,
        "hparams": json.dumps(args.hparams) if args.hparams else "",
        "wall_seconds_this_invocation": round(time.time() - t0, 1),
        "run_seconds": {k: [round(s, 1) for s in v] for k, v in seconds.items()},
        "table": {k: {m: {"mean": v[0], "sd": v[1]} for m, v in row.items()}
                  for k, row in table.items()},
        "per_trial": per_trial,
        "targets": [{"target": t, "met": ok} for t, ok in checks],
    }
