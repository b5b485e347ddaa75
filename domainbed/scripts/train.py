"""Train one algorithm on one dataset: upstream DomainBed's `train.py`, compatible.

Same flags, seeds, splits, `results.jsonl` keys, checkpoint files and `done` protocol
(the training batches are drawn from the same seed differently: as a function of the seed
and the batch's position, so that a run can resume). Added: worst-group keys for
attribute-aware datasets, a progress bar on terminals, a clear message (and no `done`)
for bad input or a diverged loss, and resumable runs: a resume checkpoint at every
checkpoint step (`domainbed.lib.resume`), so a relaunched incomplete run continues where
it stopped and ends as the uninterrupted run would have. A finished folder is never
retrained, and a folder of other arguments is refused (`domainbed.lib.run_folder`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
import traceback
from importlib import metadata
from typing import Any, Iterator, Optional

import numpy as np
import PIL
import torch
import torch.utils.data
from tqdm import tqdm

from domainbed import algorithms, datasets, hparams_registry
from domainbed.lib import misc, resume, run_folder
from domainbed.lib.fast_data_loader import FastDataLoader, InfiniteDataLoader
from domainbed.plugins import load_plugins

EVAL_BATCH_SIZE = 64


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


# Failures that are the user's to fix: reported in one line, exit status 2 (1 for divergence).
EXPECTED_ERRORS = (misc.UserInputError, FileNotFoundError, TrainingDiverged)


def describe_failure(exc: BaseException) -> str:
    """What a failed run reports: one line for an expected error, else the traceback."""
    if isinstance(exc, EXPECTED_ERRORS):
        return f"error: {misc.user_message(exc)}\n"
    if isinstance(exc, KeyboardInterrupt):
        return ("error: interrupted. The run is incomplete (no done marker); relaunch the same "
                "command to resume it from its last checkpoint.\n")
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


@contextlib.contextmanager
def tee_output(output_dir: str) -> Iterator[None]:
    """Copy stdout and stderr into `out.txt` and `err.txt` of `output_dir` (upstream's logs),
    then put the previous streams back and close the files, also on failure.

    A failure is written to `err.txt` before the streams go back, so the log still holds it
    although the caller (or Python) reports it on the restored stream.
    """
    saved = sys.stdout, sys.stderr
    out = misc.Tee(os.path.join(output_dir, "out.txt"), stream=saved[0])
    err = misc.Tee(os.path.join(output_dir, "err.txt"), stream=saved[1])
    sys.stdout, sys.stderr = out, err
    try:
        yield
    except (Exception, KeyboardInterrupt) as exc:
        err.file.write(describe_failure(exc))
        raise
    finally:
        sys.stdout, sys.stderr = saved
        out.file.close()
        err.file.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Domain generalization")
    parser.add_argument("--data_dir", type=str)
    parser.add_argument("--dataset", type=str, default="RotatedMNIST")
    parser.add_argument("--algorithm", type=str, default="ERM")
    parser.add_argument("--task", type=str, default="domain_generalization",
                        choices=["domain_generalization", "domain_adaptation"])
    parser.add_argument("--hparams", type=str, help="JSON-serialized hparams dict")
    parser.add_argument("--hparams_seed", type=int, default=0,
                        help='Seed for random hparams (0 means "default hparams")')
    parser.add_argument("--trial_seed", type=int, default=0,
                        help="Trial number (used for seeding split_dataset and random_hparams).")
    parser.add_argument("--seed", type=int, default=0, help="Seed for everything else")
    parser.add_argument("--steps", type=int, default=None,
                        help="Number of steps. Default is dataset-dependent.")
    parser.add_argument("--checkpoint_freq", type=int, default=None,
                        help="Checkpoint every N steps. Default is dataset-dependent.")
    parser.add_argument("--test_envs", type=int, nargs="+", default=[0])
    parser.add_argument("--output_dir", type=str, default="train_output")
    parser.add_argument("--holdout_fraction", type=float, default=0.2)
    parser.add_argument("--uda_holdout_fraction", type=float, default=0,
                        help="For domain adaptation, %% of test to use unlabeled for training.")
    parser.add_argument("--skip_model_save", action="store_true")
    parser.add_argument("--save_model_every_checkpoint", action="store_true")
    return parser


def validate_args(args: argparse.Namespace):
    """Check everything that can be checked before touching the output folder."""
    dataset_class = datasets.get_dataset_class(args.dataset)
    algorithm_class = algorithms.get_algorithm_class(args.algorithm)
    n_envs = len(dataset_class.ENVIRONMENTS)
    misc.check_distinct_test_envs(args.test_envs)
    misc.check_needs_attributes(algorithm_class, args.algorithm, dataset_class, args.dataset)
    misc.check_fixed_test_envs(dataset_class, args.dataset, args.test_envs)
    if args.data_dir is None and getattr(dataset_class, "NEEDS_DATA_DIR", True):
        raise misc.UserInputError(
            f"{args.dataset} needs --data_dir: the folder that holds its data (or, for a "
            "dataset generated on first use, will hold it), e.g. --data_dir data/NAME.")
    for env in args.test_envs:
        if not 0 <= env < n_envs:
            raise misc.UserInputError(
                f"--test_envs {env} is out of range: {args.dataset} has {n_envs} environments "
                f"(0..{n_envs - 1}: {', '.join(dataset_class.ENVIRONMENTS)}).")
    if not datasets.training_envs(dataset_class, args.test_envs):
        raise misc.UserInputError(
            f"--test_envs {args.test_envs} leaves no training environment in {args.dataset}.")
    for flag in ("steps", "checkpoint_freq"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise misc.UserInputError(f"--{flag} must be a positive integer, got {value}.")
    for flag in ("holdout_fraction", "uda_holdout_fraction"):
        value = getattr(args, flag)
        if not 0 <= value < 1:
            raise misc.UserInputError(f"--{flag} must be in [0, 1), got {value}.")
    misc.check_output_dir(args.output_dir)
    return dataset_class, algorithm_class


def choose_hparams(args: argparse.Namespace) -> dict[str, Any]:
    """Upstream's rule: defaults for hparams_seed 0, else seeded random values; then --hparams."""
    if args.hparams_seed == 0:
        hparams = hparams_registry.default_hparams(args.algorithm, args.dataset)
    else:
        hparams = hparams_registry.random_hparams(
            args.algorithm, args.dataset, misc.seed_hash(args.hparams_seed, args.trial_seed))
    if args.hparams:
        overrides = hparams_registry.parse_hparams_json(args.hparams)
        hparams_registry.apply_overrides(hparams, overrides, args.algorithm, args.dataset)
    return hparams


class AlreadyDone(Exception):
    """The folder holds this very run, finished: there is nothing to do."""


def _describe_differences(saved: dict, current: dict, keys: list[str]) -> str:
    shown = [f"{k}: {saved.get(k)!r} there, {current.get(k)!r} now" for k in keys[:3]]
    return "; ".join(shown) + (f"; and {len(keys) - 3} more" if len(keys) > 3 else "")


def check_folder(args: argparse.Namespace, hparams: dict[str, Any],
                 read_resume: bool = True) -> Optional[dict[str, Any]]:
    """What the output folder allows: the resume state to continue from, or None to start at
    step 0. A finished run raises AlreadyDone; another run's folder is refused. Without
    `read_resume` only the records are compared (a quick look that loads no checkpoint)."""
    out = args.output_dir
    resume_path = run_folder.path(out, run_folder.RESUME)
    state = None
    if read_resume and os.path.exists(resume_path) and not run_folder.is_done(out):
        try:
            state = resume.load(resume_path)
        except Exception as exc:  # torn or foreign file: say so, touch nothing
            raise misc.UserInputError(
                f"{resume_path} is not a readable resume checkpoint ({type(exc).__name__}); "
                "remove it to restart the run from step 0.") from None
        saved_args = state["args"]
    else:
        saved_args = run_folder.recorded_args(out)
    if saved_args is not None:
        differ = run_folder.differing_args(saved_args, vars(args))
        if differ:
            what = _describe_differences(saved_args, vars(args), differ)
            raise misc.UserInputError(f"{out} holds a run with other arguments ({what}); give "
                                      "this run its own --output_dir. Nothing was changed.")
    if state is not None and state["hparams"] != hparams:
        differ = sorted(k for k in set(state["hparams"]) | set(hparams)
                        if state["hparams"].get(k) != hparams.get(k))
        what = _describe_differences(state["hparams"], hparams, differ)
        raise misc.UserInputError(
            f"{out} holds a resume checkpoint with other hparams ({what}), e.g. from another "
            f"version of the code; remove {resume_path} to restart the run from step 0, or give "
            "it its own --output_dir. Nothing was changed.")
    if run_folder.is_done(out):
        raise AlreadyDone(out)
    return state


def set_aside_previous_run(output_dir: str) -> None:
    """Training restarts from step 0 (no resume checkpoint), so records of an earlier attempt
    move aside instead of being appended to."""
    results_path = os.path.join(output_dir, "results.jsonl")
    if os.path.exists(results_path):
        n = 1
        while os.path.exists(f"{results_path}.previous{n}"):
            n += 1
        os.replace(results_path, f"{results_path}.previous{n}")
        print(f"Kept the previous run's records as {results_path}.previous{n}")


def _installed_version(package: str) -> str:
    """Version without importing the package (importing torchvision costs ~1.5 s)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def print_environment() -> None:
    print("Environment:")
    print("\tPython: {}".format(sys.version.split(" ")[0]))
    print("\tPyTorch: {}".format(torch.__version__))
    print("\tTorchvision: {}".format(_installed_version("torchvision")))
    print("\tCUDA: {}".format(torch.version.cuda))
    print("\tCUDNN: {}".format(torch.backends.cudnn.version()))
    print("\tNumPy: {}".format(np.__version__))
    print("\tPIL: {}".format(PIL.__version__))
    print("\tThreads: {}".format(torch.get_num_threads()))


def balancing_weights(hparams: dict[str, Any]):
    """The sampling weights the hparams ask for: equal groups (`group_balanced`, older
    checkpoints lack it), equal classes (`class_balanced`, upstream's), or None."""
    if hparams.get("group_balanced", False):
        return misc.make_weights_for_balanced_groups
    if hparams["class_balanced"]:
        return misc.make_weights_for_balanced_classes
    return None


def make_splits(dataset, args, hparams):
    """Upstream's splits: per env an out (holdout) split, an in split, and for test envs a uda split."""
    in_splits, out_splits, uda_splits = [], [], []
    for env_i, env in enumerate(dataset):
        uda = []
        out, in_ = misc.split_dataset(
            env, int(len(env) * args.holdout_fraction), misc.seed_hash(args.trial_seed, env_i))
        if env_i in args.test_envs:
            uda, in_ = misc.split_dataset(
                in_, int(len(in_) * args.uda_holdout_fraction),
                misc.seed_hash(args.trial_seed, env_i))
        balance = balancing_weights(hparams)
        if balance is not None:
            in_weights, out_weights = balance(in_), balance(out)
            uda_weights = balance(uda) if uda else None
        else:
            in_weights, out_weights, uda_weights = None, None, None
        in_splits.append((in_, in_weights))
        out_splits.append((out, out_weights))
        if len(uda):
            uda_splits.append((uda, uda_weights))
    if args.task == "domain_adaptation" and len(uda_splits) == 0:
        raise misc.UserInputError("Not enough unlabeled samples for domain adaptation.")
    return in_splits, out_splits, uda_splits


def check_batch_size(dataset, in_splits, uda_splits, args, hparams) -> None:
    """A training split smaller than the batch never yields a batch (upstream then hangs)."""
    batch_size = hparams["batch_size"]
    train_envs = datasets.training_envs(dataset, args.test_envs)
    sampled = [(f"Training environment {i} ('{dataset.ENVIRONMENTS[i]}')", "in-split", env)
               for i, (env, _) in enumerate(in_splits) if i in train_envs]
    sampled += [(f"Unlabeled split {k}", "uda split", env) for k, (env, _) in enumerate(uda_splits)]
    for who, split_name, env in sampled:
        if len(env) >= batch_size:
            continue
        raise misc.UserInputError(
            f"{who} of {args.dataset} has {len(env)} examples in its {split_name}, fewer than "
            f"batch_size {batch_size}, so no batch can be drawn. Lower the batch size "
            f"(--hparams '{{\"batch_size\": {len(env)}}}') or the holdout fractions.")


def num_workers(dataset) -> int:
    """The dataset's worker count, overridable with DOMAINBED_NUM_WORKERS."""
    return int(os.environ.get("DOMAINBED_NUM_WORKERS", dataset.N_WORKERS))


def save_checkpoint(path: str, algorithm, args, dataset, hparams, extra: dict) -> None:
    """Write upstream's checkpoint dict to a temporary name, then rename it into place.

    `extra` holds the constructor's keyword arguments beyond upstream's four (e.g.
    `num_attributes`); they are saved under `model_<name>` keys so the model reloads.
    """
    save_dict = {
        "args": vars(args),
        "model_input_shape": dataset.input_shape,
        "model_num_classes": dataset.num_classes,
        "model_num_domains": len(datasets.training_envs(dataset, args.test_envs)),
        "model_hparams": hparams,
        "model_dict": algorithm.state_dict(),
        **{f"model_{k}": v for k, v in extra.items()},
    }
    tmp_path = path + ".tmp"
    torch.save(save_dict, tmp_path)
    os.replace(tmp_path, path)


def evaluate_all(algorithm, eval_loaders, device, with_groups: bool):
    """Accuracy per eval loader; with attributes also worst-group accuracy and per-group accuracy."""
    accs, nested = {}, {}
    for name, loader, weights in eval_loaders:
        if with_groups:
            acc, counts = misc.evaluate(algorithm, loader, weights, device, with_groups=True)
            accs[name + "_wga"] = misc.worst_group_accuracy(counts)
            nested[name + "_group_acc"] = misc.group_accuracies(counts)
        else:
            acc = misc.accuracy(algorithm, loader, weights, device)
        accs[name + "_acc"] = acc
    return accs, nested


def append_record(path: str, record: dict) -> None:
    """Append one JSON line and flush it to disk, so a killed run loses no finished record."""
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def check_finite(step_vals: dict, step: int) -> None:
    for key, value in step_vals.items():
        if "loss" in key and not np.isfinite(value):
            raise TrainingDiverged(
                f"Training diverged: '{key}' became {value} at step {step}. Try a lower lr "
                "(--hparams '{\"lr\": ...}'); no model and no done marker were written.")


def as_pairs(batch):
    """Drop the attribute for algorithms that expect upstream's (x, y) pairs."""
    return batch[0], batch[1]


def train(args: argparse.Namespace) -> None:
    load_plugins()
    dataset_class, algorithm_class = validate_args(args)
    hparams = choose_hparams(args)
    check_hparams = getattr(algorithm_class, "check_hparams", None)
    if check_hparams is not None:  # an algorithm may vet its hparams before any work
        check_hparams(hparams)
    if hparams.get("group_balanced", False) and not dataset_class.ATTRIBUTES:
        raise misc.UserInputError(
            f"group_balanced needs groups, and {args.dataset} has no attribute: use "
            "class_balanced, or an attribute-aware dataset.")

    try:
        check_folder(args, hparams, read_resume=False)  # without the lock: a refusal writes nothing
        os.makedirs(args.output_dir, exist_ok=True)
        with run_folder.training_lock(args.output_dir):
            resume_state = check_folder(args, hparams)  # again: the folder may have changed
            with tee_output(args.output_dir):
                run_training(args, dataset_class, algorithm_class, hparams, resume_state)
    except AlreadyDone:
        print(f"{args.output_dir} holds this run, finished (done marker, same arguments): "
              "nothing to do.")


def run_training(args: argparse.Namespace, dataset_class, algorithm_class,
                 hparams: dict[str, Any], resume_state: Optional[dict[str, Any]] = None) -> None:
    """The training proper, once the arguments and the output folder are checked; from
    `resume_state` (a resume checkpoint) when given, else from step 0."""
    print_environment()
    print("Args:")
    for k, v in sorted(vars(args).items()):
        print("\t{}: {}".format(k, v))
    print("HParams:")
    for k, v in sorted(hparams.items()):
        print("\t{}: {}".format(k, v))

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    device = "cuda" if torch.cuda.is_available() else "cpu"

    dataset = dataset_class(args.data_dir, args.test_envs, hparams)
    with_groups = datasets.has_attributes(dataset)
    in_splits, out_splits, uda_splits = make_splits(dataset, args, hparams)
    check_batch_size(dataset, in_splits, uda_splits, args, hparams)

    workers = num_workers(dataset)
    train_envs = datasets.training_envs(dataset, args.test_envs)
    streams = [in_splits[i] for i in train_envs] + list(uda_splits)
    starts = resume_state["loader_positions"] if resume_state else [0] * len(streams)
    loaders = [InfiniteDataLoader(env, weights, hparams["batch_size"], workers,
                                  seed=misc.seed_hash(args.seed, "stream", k), start=start)
               for k, ((env, weights), start) in enumerate(zip(streams, starts))]
    n_train = len(streams) - len(uda_splits)
    train_loaders, uda_loaders = loaders[:n_train], loaders[n_train:]
    eval_loaders = [
        FastDataLoader(env, EVAL_BATCH_SIZE, workers)
        for env, _ in (in_splits + out_splits + uda_splits)]
    eval_weights = [None] * len(eval_loaders)  # evaluation is unweighted, as upstream
    eval_names = (["env{}_in".format(i) for i in range(len(in_splits))]
                  + ["env{}_out".format(i) for i in range(len(out_splits))]
                  + ["env{}_uda".format(i) for i in range(len(uda_splits))])
    evals = list(zip(eval_names, eval_loaders, eval_weights))

    keep_attributes = with_groups and getattr(algorithm_class, "USES_ATTRIBUTES", False)
    extra = algorithms.attribute_kwargs(algorithm_class, dataset) if keep_attributes else {}
    algorithm = algorithm_class(dataset.input_shape, dataset.num_classes,
                                len(train_envs), hparams, **extra)
    algorithm.to(device)
    results_path = os.path.join(args.output_dir, "results.jsonl")
    resume_path = run_folder.path(args.output_dir, run_folder.RESUME)
    start_step = 0
    if resume_state is None:
        set_aside_previous_run(args.output_dir)  # only now: a failed relaunch must not touch it
    else:
        try:
            resume.restore(algorithm, resume_state)
        except (ValueError, RuntimeError, KeyError) as exc:  # saved by another version
            raise misc.UserInputError(
                f"{resume_path} does not fit this {args.algorithm} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:120]}); remove it to restart the run from step 0."
            ) from None
        start_step = resume_state["step"] + 1
        dropped = run_folder.keep_records_through(args.output_dir, resume_state["step"])
        print(f"Resuming after the checkpoint of step {resume_state['step']}"
              + (f" (dropped {dropped} records written after it)" if dropped else ""))
        resume.set_rng_states(resume_state["rng"])  # last: building the model drew from them

    train_minibatches_iterator = zip(*train_loaders)
    uda_minibatches_iterator = zip(*uda_loaders)
    checkpoint_vals: dict[str, list] = {}
    steps_per_epoch = min([len(env) / hparams["batch_size"] for env, _ in in_splits])
    n_steps = args.steps or dataset.N_STEPS
    checkpoint_freq = args.checkpoint_freq or dataset.CHECKPOINT_FREQ
    last_results_keys = None

    progress = tqdm(range(start_step, n_steps), desc="train", unit="step", file=sys.__stderr__,
                    initial=start_step, total=n_steps,
                    disable=not sys.__stderr__.isatty(), dynamic_ncols=True)
    for step in progress:
        step_start_time = time.time()
        minibatches_device = [
            tuple(t.to(device) for t in (batch if keep_attributes else as_pairs(batch)))
            for batch in next(train_minibatches_iterator)]
        uda_device = None
        if args.task == "domain_adaptation":
            uda_device = [x.to(device) for x, *_ in next(uda_minibatches_iterator)]
        step_vals = algorithm.update(minibatches_device, uda_device)
        checkpoint_vals.setdefault("step_time", []).append(time.time() - step_start_time)
        for key, val in step_vals.items():
            checkpoint_vals.setdefault(key, []).append(val)
        check_finite(step_vals, step)

        if (step % checkpoint_freq == 0) or (step == n_steps - 1):
            results: dict[str, Any] = {"step": step, "epoch": step / steps_per_epoch}
            if dataset.VALIDATION_ENVS:  # for selection on the validation split
                results["validation_envs"] = list(dataset.VALIDATION_ENVS)
            for key, val in checkpoint_vals.items():
                results[key] = np.mean(val)
            accs, nested = evaluate_all(algorithm, evals, device, with_groups)
            results.update(accs)
            results["mem_gb"] = torch.cuda.max_memory_allocated() / (1024.0 * 1024.0 * 1024.0)

            progress.clear()
            results_keys = sorted(results.keys())
            if results_keys != last_results_keys:
                misc.print_row(results_keys, colwidth=12)
                last_results_keys = results_keys
            misc.print_row([results[key] for key in results_keys], colwidth=12)
            progress.refresh()

            results.update(nested)
            results.update({"hparams": hparams, "args": vars(args)})
            append_record(results_path, results)
            checkpoint_vals = {}
            if args.save_model_every_checkpoint and not args.skip_model_save:
                save_checkpoint(os.path.join(args.output_dir, f"model_step{step}.pkl"),
                                algorithm, args, dataset, hparams, extra)
            if step < n_steps - 1:  # after the last step the run is done instead
                resume.save(resume_path, step=step, algorithm=algorithm,
                            loader_positions=[loader.position for loader in loaders],
                            args=vars(args), hparams=hparams)
    progress.close()

    if not args.skip_model_save:
        save_checkpoint(os.path.join(args.output_dir, "model.pkl"), algorithm, args, dataset,
                        hparams, extra)
    with open(os.path.join(args.output_dir, "done.tmp"), "w") as f:
        f.write("done")
    os.replace(os.path.join(args.output_dir, "done.tmp"), os.path.join(args.output_dir, "done"))
    for leftover in (resume_path, resume_path + ".tmp"):  # the finished run needs neither
        if os.path.exists(leftover):
            os.remove(leftover)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except EXPECTED_ERRORS as exc:
        print(describe_failure(exc), end="", file=sys.stderr)
        return 1 if isinstance(exc, TrainingDiverged) else 2
    except KeyboardInterrupt as exc:  # Ctrl-C: say what happened and what to do, no traceback
        print(describe_failure(exc), end="", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
