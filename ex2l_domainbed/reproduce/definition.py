"""Sweep definitions: find a TOML file, merge what it extends, check it whole.

Everything is checked here, before any job exists: keys and types (`schema`), then every
name against the registries (algorithms, datasets, selection methods), test environments
against each dataset, and each algorithm's fixed hparams against what it accepts on each
dataset. Defaults of the sweep keys are `domainbed.scripts.sweep`'s flag defaults.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainbed import algorithms, datasets, hparams_registry, model_selection
from domainbed.lib import misc
from domainbed.lib.misc import UserInputError
from ex2l_domainbed.reproduce import schema

REPO = Path(__file__).resolve().parents[2]
SWEEPS = "sweeps"
SUFFIX = ".toml"
TASKS = ("domain_generalization", "domain_adaptation")  # train.py's --task choices


@dataclass(frozen=True)
class Published:
    """Numbers from a paper, shown beside ours; sd None where the source gives none."""

    dataset: str
    algorithm: str
    aa: tuple[float, float | None]
    wga: tuple[float, float | None] | None
    source: str


@dataclass(frozen=True)
class Definition:
    path: str  # as shown in messages
    title: str
    datasets: list[str]
    algorithms: dict[str, dict[str, Any]]  # name -> its own fixed hparams
    hparams: dict[str, Any]  # fixed for every algorithm
    n_hparams_from: int
    n_hparams: int
    n_trials: int
    steps: int | None
    checkpoint_freq: int | None
    save_model_every_checkpoint: bool
    holdout_fraction: float
    task: str
    test_envs: list[int] | None
    single_test_envs: bool
    selection: list[str]
    published: list[Published] = field(default_factory=list)

    def fixed_hparams(self, algorithm: str) -> dict[str, Any]:
        """[hparams], then [algorithms.<name>] over it."""
        return {**self.hparams, **self.algorithms[algorithm]}

    def selection_methods(self) -> list[type]:
        return [getattr(model_selection, name) for name in self.selection]


# ------------------------------------------------------------------------------------------
# Finding and reading files


def sweeps_folders() -> list[Path]:
    """Where bare names are looked up: the repository's sweeps/, then the current folder's."""
    folders = [REPO / SWEEPS, Path.cwd() / SWEEPS]
    return list(dict.fromkeys(f.resolve() for f in folders if f.is_dir()))


def known_names() -> list[str]:
    return sorted({p.stem for folder in sweeps_folders() for p in folder.glob(f"*{SUFFIX}")})


def shown(path: Path) -> str:
    """A path as messages show it: relative to the current folder when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def resolve(name: str) -> Path:
    """A definition file: an existing path, or a bare name of a file in sweeps/."""
    path = Path(name)
    if path.is_file():
        return path
    if os.sep not in name and "/" not in name:
        stem = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name
        for folder in sweeps_folders():
            if (folder / f"{stem}{SUFFIX}").is_file():
                return folder / f"{stem}{SUFFIX}"
    known = known_names()
    close = difflib.get_close_matches(Path(name).stem, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UserInputError(f"unknown sweep definition '{name}': not a file, nor a name in "
                         f"sweeps/.{hint} Known names: {', '.join(known) or '(none found)'}.")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise UserInputError("reading sweep definitions needs Python 3.11 or the tomli "
                                 "package: pip install tomli") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise UserInputError(f"{shown(path)} is not valid TOML: {exc}.") from None
    except OSError as exc:
        raise UserInputError(f"cannot read {shown(path)}: {exc.strerror or exc}.") from None


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Tables merged key by key, recursively; any other value of `over` wins whole."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_merged(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's tables over those of the file it extends (its path relative to it)."""
    if path.resolve() in chain:
        raise UserInputError(f"{shown(path)} extends itself (through "
                             f"{' -> '.join(shown(p) for p in chain)}); remove the cycle.")
    raw = read_toml(path)
    schema.check_file(raw, shown(path))
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    base = path.parent / base_name
    if not base.is_file():
        raise UserInputError(f"extends = '{base_name}' in {shown(path)}: no such file "
                             f"{shown(base)} (the path is relative to {shown(path.parent)}).")
    return deep_merge(read_merged(base, chain + (path.resolve(),)), raw)


# ------------------------------------------------------------------------------------------
# Building and checking


def load(name: str) -> Definition:
    """The checked definition `name` (a path, or a bare name in sweeps/)."""
    path = resolve(name)
    definition = build(read_merged(path), shown(path))
    check_registered(definition)
    return definition


def build(raw: dict[str, Any], path: str) -> Definition:
    """A Definition from merged tables: required keys present, the rest defaulted."""
    from domainbed.scripts import sweep  # its flag defaults are ours
    defaults = sweep.build_parser()
    sweep_table = raw.get("sweep", {})
    if not sweep_table.get("datasets"):
        raise UserInputError(f"{path} names no dataset: add [sweep] datasets = [\"NAME\", ...].")
    if not raw.get("algorithms"):
        raise UserInputError(f"{path} names no algorithm: add an [algorithms.NAME] table per "
                             "algorithm (empty is fine).")

    def get(key: str) -> Any:
        return sweep_table.get(key, defaults.get_default(key))
    published = [Published(p["dataset"], p["algorithm"], schema.mean_sd(p["aa"]),
                           schema.mean_sd(p["wga"]) if "wga" in p else None, p["source"])
                 for p in raw.get("published", [])]
    return Definition(
        path=path, title=raw.get("title", Path(path).stem), datasets=list(get("datasets")),
        algorithms={k: dict(v) for k, v in raw["algorithms"].items()},
        hparams=dict(raw.get("hparams", {})),
        n_hparams_from=get("n_hparams_from"), n_hparams=get("n_hparams"),
        n_trials=get("n_trials"), steps=get("steps"), checkpoint_freq=get("checkpoint_freq"),
        save_model_every_checkpoint=get("save_model_every_checkpoint"),
        holdout_fraction=float(get("holdout_fraction")), task=get("task"),
        test_envs=get("test_envs"), single_test_envs=get("single_test_envs"),
        selection=list(sweep_table.get("selection", ["IIDAccuracySelectionMethod"])),
        published=published)


def check_registered(d: Definition) -> None:
    """Names, ranges, test environments and hparams, each against what the harness knows."""
    where = f"[sweep] of {d.path}"
    for name in d.algorithms:
        algorithms.get_algorithm_class(name)
    for name in d.datasets:
        datasets.get_dataset_class(name)
    _check_sweep_numbers(d, where)
    _check_selection(d.selection, where)
    for name in d.datasets:
        _check_test_envs(d, name, where)
    for alg in d.algorithms:
        for ds in d.datasets:
            _check_hparams(d, alg, ds)
    for i, p in enumerate(d.published, start=1):
        if p.dataset not in d.datasets:
            raise UserInputError(
                f"[[published]] entry {i} of {d.path} is for dataset {p.dataset}, which [sweep] "
                f"datasets does not list ({', '.join(d.datasets)}).")


def _check_hparams(d: Definition, alg: str, ds: str) -> None:
    """Each fixed hparam known to `alg` on `ds` and of its declared type and range."""
    defaults = hparams_registry.default_hparams(alg, ds)
    specs = hparams_registry.hparam_specs(alg, ds)
    for key, value in d.fixed_hparams(alg).items():
        table = f"[algorithms.{alg}]" if key in d.algorithms[alg] else "[hparams]"
        if key not in defaults:
            raise UserInputError(schema.unknown_key_message(
                key, sorted(defaults), table, d.path, what="hparam",
                valid_label=f"Hparams of {alg} on {ds}"))
        problem = specs[key].problem(value)
        if problem:
            raise UserInputError(f"{key} = {value!r} in {table} of {d.path} {problem} for {alg} "
                                 f"on {ds} (its default: {defaults[key]!r}).")
    # the registry's own check, the one train.py applies, as the last word
    hparams_registry.apply_overrides(defaults, d.fixed_hparams(alg), alg, ds)


def _check_sweep_numbers(d: Definition, where: str) -> None:
    problems = [
        (d.n_trials < 1, f"n_trials must be >= 1, got {d.n_trials}"),
        (d.n_hparams <= d.n_hparams_from, f"n_hparams must be > n_hparams_from (hparams seeds "
         f"range(n_hparams_from, n_hparams)), got {d.n_hparams} and {d.n_hparams_from}"),
        (d.n_hparams_from < 0, f"n_hparams_from must be >= 0, got {d.n_hparams_from}"),
        (d.steps is not None and d.steps < 1, f"steps must be >= 1, got {d.steps}"),
        (d.checkpoint_freq is not None and d.checkpoint_freq < 1,
         f"checkpoint_freq must be >= 1, got {d.checkpoint_freq}"),
        (not 0 <= d.holdout_fraction < 1,
         f"holdout_fraction must be in [0, 1), got {d.holdout_fraction}"),
        (d.task not in TASKS, f"task must be one of {', '.join(TASKS)}, got '{d.task}'"),
    ]
    for bad, message in problems:
        if bad:
            raise UserInputError(f"{message} in {where}.")


def _check_selection(names: list[str], where: str) -> None:
    known = [n for n, obj in vars(model_selection).items()
             if isinstance(obj, type) and issubclass(obj, model_selection.SelectionMethod)
             and obj is not model_selection.SelectionMethod]
    for name in names:
        if name not in known:
            close = misc.closest_name(name, known)
            hint = f" Did you mean '{close}'?" if close else ""
            raise UserInputError(f"unknown selection method '{name}' in {where}.{hint} Known: "
                                 f"{', '.join(known)} (domainbed.model_selection).")


def _check_test_envs(d: Definition, dataset: str, where: str) -> None:
    cls = datasets.get_dataset_class(dataset)
    envs = cls.ENVIRONMENTS
    if cls.FIXED_TEST_ENVS is not None:  # fixed splits: sweep.py runs its own test envs
        if d.test_envs is not None:
            misc.check_fixed_test_envs(cls, dataset, d.test_envs)
        return
    if d.test_envs is None:
        if not d.single_test_envs and len(envs) < 3:
            raise UserInputError(f"{dataset} has {len(envs)} environments; all-pairs test "
                                 f"environments need 3. Set test_envs or single_test_envs = "
                                 f"true in {where}.")
        return
    try:
        misc.check_distinct_test_envs(d.test_envs)
    except UserInputError:
        raise UserInputError(f"test_envs = {d.test_envs} in {where} names an environment "
                             "twice; list each once.") from None
    bad = [e for e in d.test_envs if not 0 <= e < len(envs)]
    if bad:
        raise UserInputError(f"test_envs {bad[0]} in {where} is out of range for {dataset}, "
                             f"which has {len(envs)} environments (0..{len(envs) - 1}: "
                             f"{', '.join(envs)}).")
    if len(d.test_envs) >= len(envs):
        raise UserInputError(f"test_envs = {d.test_envs} in {where} leaves no training "
                             f"environment in {dataset}.")
