"""The docs agree with the code: the EX2L hparam table, the README's length, relative links.

- docs/ex2l.md's hparam table lists exactly the hparams `ex2l_hparams` defines, with the
  same defaults, and its "random search" column describes what the random draw does.
- README.md stays short (at most 200 lines).
- Every relative markdown link in README.md and docs/*.md names a file that exists (and,
  for a link to a heading, a heading that exists).
"""
from __future__ import annotations

import math
import pathlib
import re

import numpy as np
import pytest

from ex2l_domainbed.algorithm import define_ex2l

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
EX2L_PAGE = DOCS / "ex2l.md"
TABLE_HEADER = ("hparam", "default", "random search", "meaning")
N_DRAWS = 400


# ---------------------------------------------------------------------------------------
# The hparam table


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def hparam_table(text: str) -> dict[str, tuple[str, str]]:
    """{name: (default cell, random-search cell)} from the table headed `TABLE_HEADER`."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines)
              if line.lstrip().startswith("|") and tuple(_cells(line)[:4]) == TABLE_HEADER]
    assert starts, f"{EX2L_PAGE.name}: no table headed {' | '.join(TABLE_HEADER)}"
    i = starts[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in lines[i + 2:]:
        if not line.lstrip().startswith("|"):
            break
        name, default, search = _cells(line)[:3]
        name = name.strip("`")
        assert name not in rows, f"{EX2L_PAGE.name}: hparam {name} has two rows"
        rows[name] = (default, search)
    return rows


def parse_value(cell: str):
    """A table cell as a Python value: in backticks a string; else true/false, an int, a
    float, or (anything else) a string."""
    cell = cell.strip()
    if len(cell) >= 2 and cell.startswith("`") and cell.endswith("`"):
        return cell[1:-1]
    if cell in ("true", "false"):
        return cell == "true"
    if re.fullmatch(r"-?\d+", cell):
        return int(cell)
    try:
        return float(cell)
    except ValueError:
        return cell


def registry() -> dict[str, tuple[object, object]]:
    """{name: (default, random_fn)} as EX2L defines them (`define_ex2l`)."""
    defined: dict[str, tuple[object, object]] = {}

    def define(name, default, random_fn, replace=False, **accepted):
        defined[name] = (default, random_fn)

    define_ex2l(define)
    return defined


def draws(random_fn) -> list:
    return [random_fn(np.random.RandomState(seed)) for seed in range(N_DRAWS)]


def check_search(name: str, cell: str, random_fn) -> None:
    """The random-search cell: `10^U(a, b)`, `x / y / z` (a choice) or one constant."""
    values = draws(random_fn)
    log_uniform = re.fullmatch(r"10\^U\((-?[\d.]+), *(-?[\d.]+)\)", cell.strip("`"))
    if log_uniform:
        lo, hi = (float(g) for g in log_uniform.groups())
        exps = [math.log10(v) for v in values]
        assert all(lo <= e <= hi for e in exps), f"{name}: a draw outside 10^U({lo}, {hi})"
        assert min(exps) < lo + 0.05 * (hi - lo) and max(exps) > hi - 0.05 * (hi - lo), (
            f"{name}: draws do not span 10^U({lo}, {hi})")
        return
    choices = [parse_value(c) for c in cell.split(" / ")]
    seen = set(values)
    assert seen == set(choices), f"{name}: the table says {choices}, the registry draws {seen}"
    for v in values:
        match = next(c for c in choices if c == v)
        assert type(v) is type(match), f"{name}: draws {v!r}, the table says {match!r}"


def test_ex2l_hparam_table_matches_the_registry():
    table = hparam_table(EX2L_PAGE.read_text())
    defined = registry()
    assert sorted(defined) == sorted(table), (
        f"only in the registry: {sorted(set(defined) - set(table))}; "
        f"only in {EX2L_PAGE.name}: {sorted(set(table) - set(defined))}")
    for name, (default, random_fn) in defined.items():
        documented = parse_value(table[name][0])
        assert documented == default and type(documented) is type(default), (
            f"{name}: default {default!r} in the registry, {table[name][0]} in the table")
        check_search(name, table[name][1], random_fn)


# ---------------------------------------------------------------------------------------
# README length and links


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= 200, f"README.md has {n} lines; move detail to docs/ (at most 200)"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose_lines(path: pathlib.Path):
    """The lines of a markdown file outside fenced code blocks."""
    fenced = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def relative_links(path: pathlib.Path) -> list[tuple[str, str]]:
    """(file, anchor) of inline links outside code, minus URLs; a pure anchor has file ''."""
    out = []
    for line in _prose_lines(path):
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue
            file, _, anchor = target.partition("#")
            out.append((file, anchor))
    return out


def anchors(path: pathlib.Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in _prose_lines(path):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            out.add(slug)
    return out


PAGES = [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    broken = []
    for file, anchor in relative_links(page):
        target = page.parent / file if file else page
        if not target.exists():
            broken.append(f"{file} (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{file}#{anchor} (no such heading)")
    assert not broken, f"{page.relative_to(ROOT)} has broken links: {broken}"
