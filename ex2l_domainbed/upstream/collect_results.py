"""`python -m ex2l_domainbed.upstream.collect_results ...`: DomainBed's
`domainbed.scripts.collect_results` with EX2L registered first (so it is listed in
`ALGORITHMS` order, right after GroupDRO). Same arguments and output.
"""
from __future__ import annotations

from ex2l_domainbed.upstream import run_registered

TARGET = "domainbed.scripts.collect_results"


def main() -> None:
    run_registered(TARGET)


if __name__ == "__main__":
    main()
