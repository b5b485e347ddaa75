"""Generated datasets (the Lite stand-ins): written once into their folder, atomically, with
a marker file of the settings that made them, so a folder is never mixed or silently reused."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Callable


def read_marker(folder: str, marker: str) -> dict | None:
    """The settings recorded in `folder`'s marker file, or None when it has none."""
    path = os.path.join(folder, marker)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_existing(target: str, wanted: dict, label: str, marker: str) -> None:
    """Refuse a folder that is not `label` data, or was made with other settings."""
    found = read_marker(target, marker)
    if found is None:
        raise FileExistsError(
            f"{target} exists but is not {label} data (no {marker}). Give {label} its own "
            "--data_dir, or remove that folder to regenerate it.")
    differs = {k: (found.get(k), v) for k, v in wanted.items() if found.get(k) != v}
    if differs:
        details = ", ".join(f"{k}: found {a}, asked {b}" for k, (a, b) in differs.items())
        raise FileExistsError(f"{target} holds {label} data made with other settings "
                              f"({details}). Remove it to regenerate, or use another --out.")


def generate_once(out: str, folder_name: str, wanted: dict, write: Callable[[str], None],
                  label: str, marker: str) -> str:
    """`<out>/<folder_name>`, written by `write(folder)` unless identical data is there.

    Safe to call from several processes at once: each writes its own temporary folder and
    the first complete one is renamed into place; the others are discarded.
    """
    target = os.path.join(out, folder_name)
    if os.path.isdir(target):
        check_existing(target, wanted, label, marker)
        return target
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{folder_name}.tmp-", dir=out)
    try:
        folder = os.path.join(tmp, folder_name)
        write(folder)
        with open(os.path.join(folder, marker), "w") as f:
            json.dump(wanted, f, indent=1, sort_keys=True)
        try:
            os.rename(folder, target)
        except OSError:
            if not os.path.isdir(target):  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    check_existing(target, wanted, label, marker)
    return target


def locate_or_generate(root: str, folder_name: str, generate: Callable[[], str], label: str,
                       error: type[Exception]) -> str:
    """The generated folder a --data_dir names: the folder itself, `<root>/<folder_name>`, or
    (neither existing) a new one that `generate()` writes there on first use."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise error(f"--data_dir {root} is a file; give a folder for the data.")
    if os.path.basename(root) == folder_name and os.path.isdir(root):
        return root
    if os.path.isdir(os.path.join(root, folder_name)):
        return os.path.join(root, folder_name)
    print(f"Generating {label} into {root} (first use)...", file=sys.stderr)
    return generate()


def generator_main(parser: argparse.ArgumentParser, argv: list[str] | None,
                   generate: Callable[[argparse.Namespace], str]) -> int:
    """A generator's command line: print the folder `generate(args)` made, or one error line
    and exit status 2."""
    args = parser.parse_args(argv)
    try:
        path = generate(args)
    except (ValueError, FileExistsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
