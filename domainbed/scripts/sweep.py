"""Run a sweep: upstream DomainBed's `sweep.py`, compatible.

Same flags, job enumeration, output-directory hashes and command strings. Added:
`--test_envs` (one fixed set of test environments, e.g. `0` for Spawrious),
`--checkpoint_freq` and `--save_model_every_checkpoint` (passed to every job; absent, the
hashes are upstream's), up-front checks of names, test environments
and --hparams, so a typo fails before any job is created, and safe relaunching: runs
resume (train.py's resume checkpoints), so `launch` also relaunches incomplete jobs that
were started and stopped, and `delete_incomplete` removes only what cannot be resumed, never
finished work (`domainbed.lib.run_folder`).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shlex
import sys

import numpy as np
import tqdm

from domainbed import algorithms, command_launchers, datasets, hparams_registry
from domainbed.lib import misc, run_folder
from domainbed.plugins import load_plugins

load_plugins()  # before DATASETS is computed, so plugin datasets are swept by default


class Job:
    NOT_LAUNCHED = "Not launched"
    INCOMPLETE = "Incomplete"
    DONE = "Done"

    def __init__(self, train_args: dict, sweep_output_dir: str):
        args_str = json.dumps(train_args, sort_keys=True)
        args_hash = hashlib.md5(args_str.encode("utf-8")).hexdigest()
        self.output_dir = os.path.join(sweep_output_dir, args_hash)

        self.train_args = copy.deepcopy(train_args)
        self.train_args["output_dir"] = self.output_dir
        command = ["python", "-m", "domainbed.scripts.train"]
        for k, v in sorted(self.train_args.items()):
            if v is True:  # a store_true flag of train.py (never in upstream's sweeps)
                command.append(f"--{k}")
                continue
            if isinstance(v, list):
                v = " ".join([str(v_) for v_ in v])
            elif isinstance(v, str):
                v = shlex.quote(v)
            command.append(f"--{k} {v}")
        self.command_str = " ".join(command)

        if os.path.exists(os.path.join(self.output_dir, "done")):
            self.state = Job.DONE
        elif os.path.exists(self.output_dir):
            self.state = Job.INCOMPLETE
        else:
            self.state = Job.NOT_LAUNCHED

    @property
    def started(self) -> bool:
        """A train.py has entered the folder (queued jobs' folders are empty)."""
        return run_folder.was_started(self.output_dir)

    @property
    def running(self) -> bool:
        """A train.py is writing into the folder right now."""
        return self.state == Job.INCOMPLETE and run_folder.is_running(self.output_dir)

    @property
    def resumable(self) -> bool:
        return self.state == Job.INCOMPLETE and run_folder.is_resumable(self.output_dir)

    def __str__(self) -> str:
        job_info = (self.train_args["dataset"], self.train_args["algorithm"],
                    self.train_args["test_envs"], self.train_args["hparams_seed"])
        return "{}: {} {}".format(self.state, self.output_dir, job_info)

    @staticmethod
    def launch(jobs: list["Job"], launcher_fn) -> None:
        print("Launching...")
        jobs = jobs.copy()
        np.random.shuffle(jobs)
        print("Making job directories:")
        for job in tqdm.tqdm(jobs, leave=False):
            os.makedirs(job.output_dir, exist_ok=True)
        commands = [job.command_str for job in jobs]
        try:
            launcher_fn(commands)
        except KeyboardInterrupt:
            # Jobs that never started leave empty folders, which `launch` would take for
            # queued ones: remove them (they hold nothing), so rerunning launches them.
            for job in jobs:
                if os.path.isdir(job.output_dir) and not os.listdir(job.output_dir):
                    os.rmdir(job.output_dir)
            raise
        print(f"Launched {len(jobs)} jobs!")

    @staticmethod
    def delete(jobs: list["Job"]) -> None:
        """Clear incomplete jobs that cannot be resumed; keep running and resumable ones and,
        in every folder, finished work (done runs' records and model files)."""
        print("Deleting...")
        cleared = 0
        for job in jobs:
            if job.running:
                print(f"  kept {job.output_dir}: running")
            elif job.resumable:
                print(f"  kept {job.output_dir}: resumable after step "
                      f"{run_folder.last_step(job.output_dir)}; `launch` resumes it")
            else:
                removed = run_folder.clear_unresumable(job.output_dir)
                kept = os.listdir(job.output_dir) if os.path.isdir(job.output_dir) else []
                cleared += 1
                print(f"  removed {len(removed)} files of an unresumable attempt in "
                      f"{job.output_dir}" + (f" (kept {', '.join(sorted(kept))})" if kept else ""))
                for removed_path in removed:
                    print(f"    {removed_path}")
        print(f"Deleted {cleared} jobs!")


def launchable(jobs: list[Job]) -> list[Job]:
    """Jobs to (re)launch: not launched, or started, stopped and not done (they resume).

    A folder no train.py has entered yet (a job still queued, as upstream assumes) is not
    relaunched; `delete_incomplete` clears it if it will never run.
    """
    return [j for j in jobs if j.state == Job.NOT_LAUNCHED
            or (j.state == Job.INCOMPLETE and j.started and not j.running)]


def all_test_env_combinations(n: int):
    """For a dataset with n >= 3 envs, yield [i] and then [i, j] for every j > i."""
    assert n >= 3
    for i in range(n):
        yield [i]
        for j in range(i + 1, n):
            yield [i, j]


def make_args_list(n_trials, dataset_names, algorithms, n_hparams_from, n_hparams, steps,
                   data_dir, task, holdout_fraction, single_test_envs, hparams,
                   test_envs=None, checkpoint_freq=None,
                   save_model_every_checkpoint=False) -> list[dict]:
    args_list = []
    for trial_seed in range(n_trials):
        for dataset in dataset_names:
            for algorithm in algorithms:
                fixed = datasets.get_dataset_class(dataset).FIXED_TEST_ENVS
                if fixed is not None:  # fixed splits: one set of test envs, whatever asked
                    all_test_envs = [list(fixed)]
                elif test_envs is not None:
                    all_test_envs = [list(test_envs)]
                elif single_test_envs:
                    all_test_envs = [[i] for i in range(datasets.num_environments(dataset))]
                else:
                    all_test_envs = all_test_env_combinations(datasets.num_environments(dataset))
                for envs in all_test_envs:
                    for hparams_seed in range(n_hparams_from, n_hparams):
                        train_args = {}
                        train_args["dataset"] = dataset
                        train_args["algorithm"] = algorithm
                        train_args["test_envs"] = envs
                        train_args["holdout_fraction"] = holdout_fraction
                        train_args["hparams_seed"] = hparams_seed
                        train_args["data_dir"] = data_dir
                        train_args["task"] = task
                        train_args["trial_seed"] = trial_seed
                        train_args["seed"] = misc.seed_hash(
                            dataset, algorithm, envs, hparams_seed, trial_seed)
                        if steps is not None:
                            train_args["steps"] = steps
                        if checkpoint_freq is not None:
                            train_args["checkpoint_freq"] = checkpoint_freq
                        if save_model_every_checkpoint:
                            train_args["save_model_every_checkpoint"] = True
                        if hparams is not None:
                            train_args["hparams"] = hparams
                        args_list.append(train_args)
    return args_list


def ask_for_confirmation() -> None:
    response = input("Are you sure? (y/n) ")
    if not response.lower().strip()[:1] == "y":
        print("Nevermind!")
        sys.exit(0)


def validate_args(args: argparse.Namespace) -> None:
    """Fail before creating any job folder: names, test envs, --hparams, launcher."""
    for name in args.algorithms:
        algorithms.get_algorithm_class(name)
    if args.test_envs is not None:
        misc.check_distinct_test_envs(args.test_envs)
    misc.check_output_dir(args.output_dir)
    for name in args.datasets:
        n_envs = datasets.num_environments(name)
        dataset_class = datasets.get_dataset_class(name)
        for alg in args.algorithms:
            misc.check_needs_attributes(algorithms.get_algorithm_class(alg), alg, dataset_class,
                                        name)
        if dataset_class.FIXED_TEST_ENVS is not None:
            if args.test_envs is not None:
                misc.check_fixed_test_envs(dataset_class, name, args.test_envs)
            continue
        if args.test_envs is not None:
            bad = [e for e in args.test_envs if not 0 <= e < n_envs]
            if bad:
                raise misc.UserInputError(
                    f"--test_envs {bad[0]} is out of range for {name}, which has {n_envs} "
                    f"environments (0..{n_envs - 1}).")
        elif not args.single_test_envs and n_envs < 3:
            raise misc.UserInputError(
                f"{name} has {n_envs} environments; all-pairs test environments need 3. "
                "Use --single_test_envs or --test_envs.")
    if args.hparams is not None:
        overrides = hparams_registry.parse_hparams_json(args.hparams)
        for alg in args.algorithms:
            for ds in args.datasets:
                hparams_registry.apply_overrides(
                    hparams_registry.default_hparams(alg, ds), overrides, alg, ds)
    if args.command == "launch" and args.command_launcher not in command_launchers.REGISTRY:
        raise misc.UserInputError(
            f"Unknown --command_launcher '{args.command_launcher}'. Known: "
            f"{', '.join(command_launchers.REGISTRY)}.")
    preflight = getattr(command_launchers.REGISTRY.get(args.command_launcher), "preflight", None)
    if args.command == "launch" and preflight is not None:
        preflight()
    if args.checkpoint_freq is not None and args.checkpoint_freq <= 0:
        raise misc.UserInputError(
            f"--checkpoint_freq must be a positive integer, got {args.checkpoint_freq}.")
    if args.n_trials < 1 or args.n_hparams <= args.n_hparams_from:
        raise misc.UserInputError(
            "The sweep is empty: need --n_trials >= 1 and --n_hparams > --n_hparams_from.")


DATASETS = [d for d in datasets.DATASETS if "Debug" not in d]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run a sweep")
    parser.add_argument("command", choices=["launch", "delete_incomplete"])
    parser.add_argument("--datasets", nargs="+", type=str, default=DATASETS)
    parser.add_argument("--algorithms", nargs="+", type=str, default=algorithms.ALGORITHMS)
    parser.add_argument("--task", type=str, default="domain_generalization")
    parser.add_argument("--n_hparams_from", type=int, default=0)
    parser.add_argument("--n_hparams", type=int, default=20)
    parser.add_argument("--output_dir", type=str, required=True)
    parser.add_argument("--data_dir", type=str, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_trials", type=int, default=3)
    parser.add_argument("--command_launcher", type=str, required=True)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--checkpoint_freq", type=int, default=None,
                        help="Evaluate and checkpoint every N steps (default: the dataset's).")
    parser.add_argument("--save_model_every_checkpoint", action="store_true",
                        help="Every job also saves model_step<N>.pkl at each checkpoint.")
    parser.add_argument("--hparams", type=str, default=None)
    parser.add_argument("--holdout_fraction", type=float, default=0.2)
    parser.add_argument("--single_test_envs", action="store_true")
    parser.add_argument("--test_envs", type=int, nargs="+", default=None,
                        help="Use exactly these test environments for every job "
                             "(e.g. 0 for Spawrious) instead of enumerating them.")
    parser.add_argument("--skip_confirmation", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        validate_args(args)
    except misc.UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    args_list = make_args_list(
        n_trials=args.n_trials, dataset_names=args.datasets, algorithms=args.algorithms,
        n_hparams_from=args.n_hparams_from, n_hparams=args.n_hparams, steps=args.steps,
        data_dir=args.data_dir, task=args.task, holdout_fraction=args.holdout_fraction,
        single_test_envs=args.single_test_envs, hparams=args.hparams, test_envs=args.test_envs,
        checkpoint_freq=args.checkpoint_freq,
        save_model_every_checkpoint=args.save_model_every_checkpoint)
    jobs = [Job(train_args, args.output_dir) for train_args in args_list]

    for job in jobs:
        print(job)
    print("{} jobs: {} done, {} incomplete, {} not launched.".format(
        len(jobs),
        len([j for j in jobs if j.state == Job.DONE]),
        len([j for j in jobs if j.state == Job.INCOMPLETE]),
        len([j for j in jobs if j.state == Job.NOT_LAUNCHED])))

    try:
        if args.command == "launch":
            to_launch = launchable(jobs)
            relaunched = sum(j.state == Job.INCOMPLETE for j in to_launch)
            print(f"About to launch {len(to_launch)} jobs"
                  + (f" ({relaunched} incomplete: they resume)." if relaunched else "."))
            if not args.skip_confirmation:
                ask_for_confirmation()
            launcher_fn = command_launchers.REGISTRY[args.command_launcher]
            Job.launch(to_launch, launcher_fn)
        elif args.command == "delete_incomplete":
            to_delete = [j for j in jobs if j.state == Job.INCOMPLETE]
            print(f"About to clear {len(to_delete)} incomplete jobs (running and resumable "
                  "ones, and finished work in any folder, are kept).")
            if not args.skip_confirmation:
                ask_for_confirmation()
            Job.delete(to_delete)
    except misc.UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "launch":
            print("error: interrupted. Finished jobs are kept; rerun the same command to launch "
                  "the rest (interrupted jobs resume from their last checkpoint).",
                  file=sys.stderr)
        else:
            print(f"error: interrupted during {args.command}; finished jobs are kept. Rerun "
                  "the same command.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
