"""Small helpers shared by the harness: seeding, splits, accuracy, table rows, tee."""
from __future__ import annotations

import difflib
import hashlib
import os
import sys
from collections import Counter, defaultdict
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch


class UserInputError(Exception):
    """Bad input from the user (a name, a path, a flag): reported as one message, no traceback."""


class UnknownNameError(UserInputError, NotImplementedError):
    """An algorithm or dataset name that is not registered (upstream raises NotImplementedError)."""


def closest_name(name: str, known: list[str]) -> str | None:
    """The known name most similar to `name`, ignoring case; None if nothing is close."""
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1)
    return by_lower[close[0]] if close else None


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    """One readable message naming the unknown name, the closest known one and all of them."""
    close = closest_name(name, known)
    hint = f" Did you mean '{close}'?" if close else ""
    return (f"{kind} not found: {name}.{hint} Known {kind.lower()}s: {', '.join(known)}. "
            f"A plugin's {kind.lower()}s appear once its package is installed.")


def exit_status(action: Callable[[], Any]) -> int:
    """Run a script's work: 0 when it finishes, 2 with one `error:` line on stderr when the
    user's input is at fault (a UserInputError), so no traceback reaches the user."""
    try:
        action()
    except UserInputError as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return 2
    except PermissionError as exc:  # a folder or file the user cannot read or write
        print(f"error: {exc.strerror}: {exc.filename}; check its permissions.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was changed. Rerun the same command.", file=sys.stderr)
        return 130
    return 0


def user_message(exc: BaseException) -> str:
    """The one-line message of a user-input error, unwrapped when a DataLoader worker raised
    it: torch re-raises it in the main process with the worker's whole traceback as text,
    whose last line is `<module>.<Class>: <message>`."""
    text = str(exc)
    if "Original Traceback (most recent call last):" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def check_distinct_test_envs(test_envs: Sequence[int]) -> None:
    """`--test_envs 0 0` names one environment twice: refuse it (the run would record the
    wrong number of training environments)."""
    repeated = sorted(e for e, n in Counter(test_envs).items() if n > 1)
    if repeated:
        raise UserInputError(
            f"--test_envs {' '.join(map(str, test_envs))} names environment {repeated[0]} "
            f"more than once. Give each test environment once, e.g. --test_envs "
            f"{' '.join(map(str, dict.fromkeys(test_envs)))}.")


def check_needs_attributes(algorithm_class: type, algorithm: str, dataset_class: type,
                           dataset: str) -> None:
    """An algorithm that needs groups (`REQUIRES_ATTRIBUTES`) on a dataset without them."""
    if getattr(algorithm_class, "REQUIRES_ATTRIBUTES", False) and not dataset_class.ATTRIBUTES:
        raise UserInputError(
            f"{algorithm} needs a dataset with an attribute (groups), and {dataset} has none: "
            "pick an attribute-aware dataset, or another algorithm.")


def check_fixed_test_envs(dataset_class: type, name: str, test_envs) -> None:
    """A dataset with fixed splits (a subpopulation benchmark) takes only its test envs."""
    fixed = getattr(dataset_class, "FIXED_TEST_ENVS", None)
    if fixed is not None and sorted(test_envs) != sorted(fixed):
        envs = dataset_class.ENVIRONMENTS
        raise UserInputError(
            f"{name} has fixed splits ({', '.join(f'{i}: {e}' for i, e in enumerate(envs))}): "
            f"use --test_envs {' '.join(map(str, fixed))}, not {' '.join(map(str, test_envs))}.")


def check_output_dir(path: str, flag: str = "--output_dir") -> None:
    """A folder path that can be created: not a file, and not below one (`file/sub`)."""
    probe = os.path.abspath(path)
    while True:
        if os.path.exists(probe):
            if not os.path.isdir(probe):
                where = "is a file" if probe == os.path.abspath(path) else f"is below the file {probe}"
                raise UserInputError(
                    f"{flag} {path} {where}, not a folder. Choose another path or move that file.")
            return
        parent = os.path.dirname(probe)
        if parent == probe:
            return
        probe = parent


def seed_hash(*args: Any) -> int:
    """Derive an integer seed from any hashable args (upstream's exact rule).

    MD5 of the repr of the argument tuple, read as a hex integer, mod 2**31.
    """
    args_str = str(args)
    return int(hashlib.md5(args_str.encode("utf-8")).hexdigest(), 16) % (2 ** 31)


class _SplitDataset(torch.utils.data.Dataset):
    """A view of `underlying_dataset` restricted to the positions in `keys`."""

    def __init__(self, underlying_dataset, keys: Sequence[int]):
        super().__init__()
        self.underlying_dataset = underlying_dataset
        self.keys = list(keys)

    def __getitem__(self, key: int):
        return self.underlying_dataset[self.keys[key]]

    def __len__(self) -> int:
        return len(self.keys)


def split_dataset(dataset, n: int, seed: int = 0):
    """Return (first n items, the rest) of a seeded random permutation of `dataset`."""
    assert n <= len(dataset)
    keys = list(range(len(dataset)))
    np.random.RandomState(seed).shuffle(keys)
    return _SplitDataset(dataset, keys[:n]), _SplitDataset(dataset, keys[n:])


def labels_of(dataset) -> list[int]:
    """The label of every item, without loading images where the dataset lists its samples.

    Datasets with a `samples` list of (path, y, ...) (Spawrious, ImageFolder) and split
    views of them are read from that list; anything else is iterated.
    """
    if isinstance(dataset, _SplitDataset):
        inner = dataset.underlying_dataset
        if hasattr(inner, "samples"):
            return [int(inner.samples[k][1]) for k in dataset.keys]
    elif hasattr(dataset, "samples"):
        return [int(s[1]) for s in dataset.samples]
    return [int(item[1]) for item in dataset]


def groups_of(dataset) -> list[tuple[int, int]]:
    """The (label, attribute) group of every item, read like `labels_of` (from a `samples`
    list of (path, y, a) where there is one)."""
    if isinstance(dataset, _SplitDataset):
        inner = dataset.underlying_dataset
        if hasattr(inner, "samples"):
            return [(int(inner.samples[k][1]), int(inner.samples[k][2])) for k in dataset.keys]
    elif hasattr(dataset, "samples"):
        return [(int(s[1]), int(s[2])) for s in dataset.samples]
    return [(int(item[1]), int(item[2])) for item in dataset]


def _balanced_weights(keys: list) -> torch.Tensor:
    """Per-sample weights 1 / (count[key] * n_keys): every key is drawn equally often."""
    counts = Counter(keys)
    return torch.tensor([1.0 / (counts[k] * len(counts)) for k in keys])


def make_weights_for_balanced_classes(dataset) -> torch.Tensor:
    """Per-sample weights 1 / (count[y] * n_classes), so that classes are sampled equally."""
    return _balanced_weights(labels_of(dataset))


def make_weights_for_balanced_groups(dataset) -> torch.Tensor:
    """Per-sample weights 1 / (count[(y, a)] * n_groups): groups are sampled equally."""
    return _balanced_weights(groups_of(dataset))


def _correct(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample correctness: argmax for multi-class logits, `p > 0` for one logit."""
    if p.size(1) == 1:
        return p.gt(0).view(-1).eq(y.view(-1))
    return p.argmax(1).eq(y)


def evaluate(network, loader, weights, device, with_groups: bool = False):
    """Accuracy of `network.predict` over `loader`; optionally per (y, a) group too.

    Batches may be `(x, y)` or `(x, y, a)`. Returns the accuracy, or with
    `with_groups` a pair (accuracy, {(y, a): (correct, total)}), the dict empty
    when the loader carries no attributes.
    """
    correct, total, weights_offset = 0.0, 0.0, 0
    group_counts: dict = defaultdict(lambda: [0, 0])
    network.eval()
    with torch.no_grad():
        for batch in loader:
            x, y = batch[0].to(device), batch[1].to(device)
            p = network.predict(x)
            if weights is None:
                batch_weights = torch.ones(len(x))
            else:
                batch_weights = weights[weights_offset: weights_offset + len(x)]
                weights_offset += len(x)
            batch_weights = batch_weights.to(device)
            hits = _correct(p, y).float()
            correct += (hits * batch_weights.view(-1)).sum().item()
            total += batch_weights.sum().item()
            if with_groups and len(batch) > 2:
                for yi, ai, hi in zip(y.tolist(), batch[2].tolist(), hits.tolist()):
                    group_counts[(int(yi), int(ai))][0] += hi
                    group_counts[(int(yi), int(ai))][1] += 1
    network.train()
    acc = correct / total if total > 0 else float("nan")  # an empty split has no accuracy
    if with_groups:
        return acc, {k: tuple(v) for k, v in sorted(group_counts.items())}
    return acc


def accuracy(network, loader, weights, device) -> float:
    """Upstream's `misc.accuracy`: (weighted) fraction of correct predictions."""
    return evaluate(network, loader, weights, device)


def group_accuracies(group_counts: dict) -> dict[str, float]:
    """Map {(y, a): (correct, total)} to {"y=<y>,a=<a>": accuracy}."""
    return {f"y={y},a={a}": c / t for (y, a), (c, t) in sorted(group_counts.items()) if t > 0}


def worst_group_accuracy(group_counts: dict) -> float:
    """Minimum accuracy over the groups present (total > 0)."""
    accs = [c / t for c, t in group_counts.values() if t > 0]
    return min(accs) if accs else float("nan")


def format_cell(x: Any, colwidth: int) -> str:
    """A table cell: floats as %.10f, then left-justified and truncated to colwidth."""
    if np.issubdtype(type(x), np.floating):
        x = "{:.10f}".format(x)
    return str(x).ljust(colwidth)[:colwidth]


def print_row(row: Iterable[Any], colwidth: int = 10, latex: bool = False) -> None:
    """Print one table row the way upstream does (two-space separator, trailing space)."""
    if latex:
        sep, end_ = " & ", "\\\\"
    else:
        sep, end_ = "  ", ""
    print(sep.join([format_cell(x, colwidth) for x in row]), end_)


class Tee:
    """Write to stdout (or stderr) and to a file at once, flushing both."""

    def __init__(self, fname: str, mode: str = "a", stream=None):
        self.stream = stream if stream is not None else sys.stdout
        self.file = open(fname, mode)

    def write(self, message: str) -> None:
        self.stream.write(message)
        self.file.write(message)
        self.flush()

    def flush(self) -> None:
        self.stream.flush()
        self.file.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()
