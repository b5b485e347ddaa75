"""The plugin alone (`ex2l_domainbed`, no `domainbed` package), for upstream DomainBed.

    cd /path/to/DomainBed && pip install /path/to/ex2l-domainbed/packaging/plugin

The full distribution (the repo's own setup.py) also installs this project's harness as
`domainbed`, which then shadows an upstream checkout wherever the checkout is not first on
sys.path (a script run from a subfolder, a notebook elsewhere). This one cannot: it has no
`domainbed`. `ex2l_domainbed` here is a link to the repo's package, so both ship the same code.
"""
import os
import runpy

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
metadata = runpy.run_path(os.path.join(HERE, "metadata.py"))  # a link to ../metadata.py

setup(
    name="ex2l-domainbed-plugin",
    version=metadata["version"](os.path.join(HERE, "ex2l_domainbed")),
    description="eXplaining to Learn (eX2L) for an upstream DomainBed checkout (plugin only)",
    python_requires=">=3.9",
    packages=find_packages(where=HERE, include=["ex2l_domainbed", "ex2l_domainbed.*"]),
    install_requires=metadata["PLUGIN_REQUIRES"],
    package_data=metadata["PACKAGE_DATA"],
    entry_points=metadata["ENTRY_POINTS"],
)
