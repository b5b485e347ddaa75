"""Resume checkpoints: everything a killed run needs to continue as if never stopped.

Written by train.py at every checkpoint step (atomically: a temporary file, then a rename)
and removed once the run is done. It holds the algorithm's modules and buffers (e.g.
GroupDRO's `q`, EX2L's step counter), every optimizer the algorithm owns, the states of
Python's, NumPy's, torch's and CUDA's random generators and the training loaders' stream
positions. Only tensors and plain data, so it loads with `torch.load(weights_only=True)`.

An algorithm keeps its state in modules, buffers and optimizers (attributes that are
`torch.optim.Optimizer`); anything else it would lose on resume.
"""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

FORMAT = 1


def optimizers_of(algorithm: torch.nn.Module) -> dict[str, torch.optim.Optimizer]:
    """The algorithm's optimizers by attribute name (e.g. `optimizer`, `disc_opt`)."""
    return {name: value for name, value in sorted(vars(algorithm).items())
            if isinstance(value, torch.optim.Optimizer)}


def rng_states() -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    states = {
        "python": {"version": version, "state": list(mt_state), "gauss": gauss},
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    py = states["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = states["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save(path: str, *, step: int, algorithm: torch.nn.Module, loader_positions: list[int],
         args: dict[str, Any], hparams: dict[str, Any]) -> None:
    """Write the resume checkpoint of the state right after checkpoint step `step`."""
    state = {
        "format": FORMAT,
        "step": step,
        "args": args,
        "hparams": hparams,
        "model_dict": algorithm.state_dict(),
        "optimizers": {name: opt.state_dict() for name, opt in optimizers_of(algorithm).items()},
        "rng": rng_states(),
        "loader_positions": list(loader_positions),
    }
    tmp_path = path + ".tmp"
    with open(tmp_path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())  # a power cut must not leave an empty file under the final name
    os.replace(tmp_path, path)


KEYS = ("format", "step", "args", "hparams", "model_dict", "optimizers", "rng",
        "loader_positions")


def load(path: str) -> dict[str, Any]:
    """Read a resume checkpoint (tensors and plain data only) of this format."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT or \
            any(key not in state for key in KEYS):
        raise ValueError(f"not a resume checkpoint of format {FORMAT}")
    return state


def restore(algorithm: torch.nn.Module, state: dict[str, Any]) -> None:
    """Put the saved modules, buffers and optimizer states back into a freshly built algorithm."""
    algorithm.load_state_dict(state["model_dict"])
    optimizers = optimizers_of(algorithm)
    if set(optimizers) != set(state["optimizers"]):
        raise ValueError(f"the resume checkpoint has optimizers {sorted(state['optimizers'])}, "
                         f"the algorithm {sorted(optimizers)}")
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(state["optimizers"][name])
