"""Helpers shared by the benchmarks: a steady CPU allocator and the device's name."""
from __future__ import annotations

import json
import os
import platform

import torch


def steady_malloc() -> str:
    """glibc: serve every block from the heap and never trim it, so that freed tensors are
    reused instead of page-faulting anew each step. Returns what was done."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2 ** 31 - 1) == 1
    except (OSError, AttributeError):
        ok = False
    return "steady (glibc mallopt: no mmap, no trim)" if ok else "glibc default (mallopt failed)"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def write_json(path: str, result: dict) -> None:
    """Write a benchmark's result file (creating its folder) and say where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {path}")
