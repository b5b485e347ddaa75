"""`collect`: collect_results' tables for a definition's runs, then ours beside the published.

Only the definition's own runs are read (records whose run folder is one of its jobs'), so
an output folder shared with other sweeps gives this definition's numbers; for a folder
holding only them the tables are collect_results' byte for byte. Nothing is written.

Our numbers are those of collect_results: per trial, each selection method's `sweep_acc` of
the test environments (accuracy `env{t}_in_acc` as AA, worst-group `env{t}_in_wga` as WGA),
averaged over test environments; then mean and population sd over trials, in percent.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from domainbed.lib import reporting
from domainbed.lib.query import Q
from domainbed.scripts import collect_results, sweep
from ex2l_domainbed.reproduce.definition import Definition, Published
from ex2l_domainbed.reproduce.jobs import stale_hparams

MISSING = "-"


def definition_records(output_dir: str, jobs: list[sweep.Job],
                       log: reporting.SkipLog) -> Q:
    """Usable records of the definition's runs in `output_dir` (an absent folder: none)."""
    if not os.path.isdir(output_dir):
        return Q([])
    names = {os.path.basename(job.output_dir) for job in jobs}
    return reporting.load_records(output_dir, log).filter(
        lambda r: os.path.basename(os.path.normpath(r["args"].get("output_dir", ""))) in names)


def trial_scores(grouped: Q, dataset: str, algorithm: str, method, metric: str) -> list[float]:
    """One number per trial: the method's sweep_acc averaged over test environments."""
    per_trial: dict[int, list[float]] = {}
    for group in grouped.filter_equals("dataset, algorithm", (dataset, algorithm)):
        acc = method.sweep_acc(group["records"], metric)
        if acc is not None:
            per_trial.setdefault(group["trial_seed"], []).append(acc)
    return [float(np.mean(v)) for _, v in sorted(per_trial.items())]


def ours_cell(scores: list[float]) -> str:
    if not scores:
        return MISSING
    mean = 100 * np.mean(scores)
    return f"{mean:.1f} +/- {100 * np.std(scores):.1f}" if len(scores) > 1 else f"{mean:.1f}"


def published_cell(value: tuple[float, float | None] | None) -> str:
    if value is None:
        return MISSING
    mean, sd = value
    return f"{mean:g} +/- {sd:g}" if sd is not None else f"{mean:g}"


def format_table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


HEADER = ["Dataset", "Algorithm", "jobs done", "trials", "AA", "WGA", "published AA",
          "published WGA", "source"]


def comparison_lines(definition: Definition, records: Q, jobs: list[sweep.Job]) -> list[str]:
    grouped = reporting.get_grouped_records(records)
    pairs = list(dict.fromkeys(
        [(ds, alg) for ds in definition.datasets for alg in definition.algorithms]
        + [(p.dataset, p.algorithm) for p in definition.published]))
    sources = list(dict.fromkeys(p.source for p in definition.published))
    lines = []
    for method in definition.selection_methods():
        rows = [HEADER]
        for ds, alg in pairs:
            own = [j for j in jobs if (j.train_args["dataset"], j.train_args["algorithm"]) == (ds, alg)]
            done = sum(j.state == sweep.Job.DONE for j in own)
            acc, wga = (trial_scores(grouped, ds, alg, method, m) for m in ("acc", "wga"))
            pub: Published | None = next((p for p in definition.published
                                          if (p.dataset, p.algorithm) == (ds, alg)), None)
            rows.append([ds, alg, f"{done}/{len(own)}" if own else MISSING,
                         str(len(acc)), ours_cell(acc), ours_cell(wga),
                         published_cell(pub.aa if pub else None),
                         published_cell(pub.wga if pub else None),
                         f"[{sources.index(pub.source) + 1}]" if pub else MISSING])
        lines += ["", f"-------- Ours vs published, model selection method: {method.name} "
                      "(%; ours: mean +/- sd over trials)"]
        lines += format_table(rows)
    if sources:
        lines += [""] + [f"[{i}] {source}" for i, source in enumerate(sources, start=1)]
    return lines


def collect(definition: Definition, jobs: list[sweep.Job], output_dir: str) -> None:
    """Print collect_results' report of the definition's runs, then the comparison."""
    log = reporting.SkipLog()
    records = definition_records(output_dir, jobs, log)
    collect_results.print_text(collect_results.render_report(records))
    print("\n".join([f"\n{definition.title} ({definition.path}): " + _jobs_line(jobs)]
                    + comparison_lines(definition, records, jobs)))
    if log:
        print(log.summary(), file=sys.stderr)
    stale = sum(bool(stale_hparams(j)) for j in jobs)
    if stale:
        print(f"warning: {stale} of these runs were trained with other hparams than this code "
              "gives the same jobs (a default changed since they ran); `status` names them.",
              file=sys.stderr)


def _jobs_line(jobs: list[sweep.Job]) -> str:
    done = sum(j.state == sweep.Job.DONE for j in jobs)
    return f"{done} of {len(jobs)} jobs done" + ("" if done == len(jobs) else
                                                  " (the sweep is incomplete)")
