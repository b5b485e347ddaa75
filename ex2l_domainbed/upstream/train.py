"""`python -m ex2l_domainbed.upstream.train ...`: DomainBed's `domainbed.scripts.train`
with EX2L registered first. Same arguments, outputs and exit status.

Works with an upstream checkout (run from its root, so its `domainbed` is imported) and
with this project's harness (there `register()` goes through the harness's own API).
"""
from __future__ import annotations

from ex2l_domainbed.upstream import run_registered

TARGET = "domainbed.scripts.train"


def main() -> None:
    run_registered(TARGET)


if __name__ == "__main__":
    main()
