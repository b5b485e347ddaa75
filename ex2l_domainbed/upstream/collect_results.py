"""`python -m ex2l_domainbed.upstream.collect_results ...`: DomainBed's
`domainbed.scripts.collect_results` with EX2L registered first (so it is listed in
`ALGORITHMS` order, right after GroupDRO). Same arguments and output.
"""
from __future__ import annotations

import runpy

TARGET = "domainbed.scripts.collect_results"


def main() -> None:
    from ex2l_domainbed.plugin import register
    register()
    runpy.run_module(TARGET, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
