"""Waterbirds and CelebA as subpopulation benchmarks, and a Waterbirds-style stand-in
(work in progress)."""
from __future__ import annotations

DATASETS: dict[str, type] = {}
