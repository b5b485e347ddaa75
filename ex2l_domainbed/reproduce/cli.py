"""`python -m ex2l_domainbed.reproduce {launch,status,delete_incomplete,collect} DEFINITION ...`

DEFINITION is a TOML sweep definition (a path, or a bare name of a file in sweeps/); see
docs/reproduce.md. All input is checked before any job folder is made or removed: a problem
is one `error:` line and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from domainbed import command_launchers
from domainbed.lib import misc
from domainbed.scripts import sweep
from ex2l_domainbed.reproduce import compare, definition, estimate, jobs, preflight

COMMANDS = ("launch", "status", "delete_incomplete", "collect")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ex2l_domainbed.reproduce",
        description="Run, follow and report a sweep definition (sweeps/*.toml).")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("definition", help="a .toml file, or a name in sweeps/ (e.g. demo)")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--command_launcher", default="local",
                        help=f"one of {', '.join(command_launchers.REGISTRY)} (default: local)")
    parser.add_argument("--dry_run", action="store_true",
                        help="launch / delete_incomplete: show what would be done, do nothing")
    parser.add_argument("--skip_confirmation", action="store_true")
    return parser


class NotConfirmed(Exception):
    """The user answered no."""


def confirm(question: str) -> None:
    try:
        answer = input(f"{question} (y/n) ")
    except EOFError:
        raise misc.UserInputError("no answer to the confirmation (stdin is closed); rerun "
                                  "with --skip_confirmation.") from None
    if not answer.strip().lower().startswith("y"):
        raise NotConfirmed


def launch(args: argparse.Namespace, d: definition.Definition, all_jobs: list[sweep.Job]) -> None:
    preflight.check_launcher_name(args.command_launcher)
    if not args.dry_run:
        preflight.check_launcher_runs(args.command_launcher)
        preflight.check_data(d, args.data_dir)
        preflight.check_weights(d, [j.train_args for j in all_jobs])
        jobs.check_not_stale(all_jobs, args.output_dir)
    for job in all_jobs:
        print(job)
    print(jobs.counts(all_jobs))
    print("\n".join(estimate.report([j.train_args for j in all_jobs])))
    to_launch = jobs.to_launch(all_jobs)
    resumed = sum(j.state == sweep.Job.INCOMPLETE for j in to_launch)
    what = f"{len(to_launch)} jobs" + (f" ({resumed} incomplete: they resume)" if resumed else "")
    if args.dry_run:
        print(f"Dry run: would launch {what} with the {args.command_launcher} launcher; "
              "nothing was written or launched.")
        return
    if not to_launch:
        print("Nothing to launch: every job is done, running or queued.")
        return
    if not args.skip_confirmation:
        confirm(f"About to launch {what} with the {args.command_launcher} launcher. Sure?")
    preflight.prepare_data(d, args.data_dir)
    sweep.Job.launch(to_launch, command_launchers.REGISTRY[args.command_launcher])


def status(all_jobs: list[sweep.Job]) -> None:
    for job in all_jobs:
        print(jobs.status_line(job))
    summary = jobs.counts(all_jobs)
    if jobs.incomplete(all_jobs):
        running = sum(j.running for j in all_jobs)
        resumable = sum(j.resumable and not j.running for j in all_jobs)
        summary = summary[:-1] + f" (of them {running} running, {resumable} resumable)."
    print(summary)


def delete_incomplete(args: argparse.Namespace, all_jobs: list[sweep.Job]) -> None:
    to_clear = [j for j in jobs.incomplete(all_jobs)  # a queued job will still run: keep it
                if not jobs.is_live(jobs.scheduler_state(j))]
    for job in to_clear:
        print(jobs.status_line(job))
    print(f"{len(to_clear)} incomplete jobs: running and resumable ones, and finished work in "
          "any folder, are kept.")
    if args.dry_run or not to_clear:
        print("Dry run: nothing was deleted." if args.dry_run else "Nothing to delete.")
        return
    if not args.skip_confirmation:
        confirm("Clear the others?")
    sweep.Job.delete(to_clear)


def run(args: argparse.Namespace) -> None:
    d = definition.load(args.definition)
    misc.check_output_dir(args.output_dir)
    all_jobs = jobs.make_jobs(d, args.data_dir, args.output_dir)
    if args.command == "launch":
        launch(args, d, all_jobs)
    elif args.command == "status":
        status(all_jobs)
    elif args.command == "delete_incomplete":
        delete_incomplete(args, all_jobs)
    else:
        compare.collect(d, all_jobs, args.output_dir)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except misc.UserInputError as exc:
        print(f"error: {misc.user_message(exc)}", file=sys.stderr)
        return 2
    except NotConfirmed:
        print("Nevermind: nothing was done.")
        return 0
    except KeyboardInterrupt:
        print(f"error: interrupted during {args.command}. Finished jobs are kept; rerun the same "
              "command (interrupted jobs resume from their last checkpoint).", file=sys.stderr)
        return 130
    return 0
