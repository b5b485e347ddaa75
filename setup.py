"""The full distribution: this project's DomainBed-compatible harness and the EX2L plugin.

Inside an upstream DomainBed checkout install `packaging/plugin` instead: that distribution
holds only `ex2l_domainbed`, so it never shadows the checkout's `domainbed`.
"""
import os
import runpy

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
metadata = runpy.run_path(os.path.join(HERE, "packaging", "metadata.py"))

setup(
    name="ex2l-domainbed",
    version=metadata["version"](os.path.join(HERE, "ex2l_domainbed")),
    description=(
        "eXplaining to Learn (eX2L) as a DomainBed plugin, with a clean-room, "
        "DomainBed-compatible harness"
    ),
    python_requires=">=3.9",
    packages=find_packages(include=["domainbed", "domainbed.*", "ex2l_domainbed", "ex2l_domainbed.*"]),
    install_requires=metadata["HARNESS_REQUIRES"],
    package_data=metadata["PACKAGE_DATA"],
    # captum: an independent Grad-CAM implementation the tests compare against; ruff: lint.
    # setuptools: tests build the plugin-only wheel offline (bdist_wheel is built in since 70.1).
    extras_require={"test": ["pytest", "captum", "ruff", "setuptools>=70.1"]},
    entry_points=metadata["ENTRY_POINTS"],
)
