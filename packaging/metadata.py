"""What both distributions built from this repo share: version, requirements, entry point.

`setup.py` (the full distribution: this project's harness `domainbed` and the plugin) and
`packaging/plugin/setup.py` (the plugin alone, for an upstream DomainBed checkout; it reads
this file through a link beside it) read it, and both sdists ship it (MANIFEST.in).
"""
import os
import re


def version(package_dir: str) -> str:
    """`__version__` of the `ex2l_domainbed` package at `package_dir`."""
    with open(os.path.join(package_dir, "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


PLUGIN_REQUIRES = [
    "torch>=2.0",
    "numpy",
]
HARNESS_REQUIRES = PLUGIN_REQUIRES + [
    "torchvision>=0.15",
    "Pillow",
    "tqdm",
    "submitit",
    "scikit-image",  # real photographs and textures behind Spawrious-Lite
    "matplotlib",  # Grad-CAM figures (ex2l_domainbed.viz)
    "scikit-learn",  # handwritten digits behind the offline ColoredMNIST stand-in
]
ENTRY_POINTS = {"domainbed.plugins": ["ex2l = ex2l_domainbed.plugin:register"]}
PACKAGE_DATA = {"ex2l_domainbed.datasets": ["weights/*.pt", "weights/*.json"]}
