"""ColoredMNIST with the colour as its attribute, and its offline stand-in (work in progress)."""
from __future__ import annotations

DATASETS: dict[str, type] = {}
