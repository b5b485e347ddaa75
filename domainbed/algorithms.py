"""Training algorithms: the `Algorithm` contract, ERM and GroupDRO.

An algorithm builds its own networks and optimizer; `update(minibatches)` does one
optimisation step and returns a dict of floats; `predict(x)` returns logits.
Plugins add algorithms with `register_algorithm` (or `setattr` + `ALGORITHMS.append`,
as upstream-style plugins do).
"""
from __future__ import annotations

import inspect
import os
import pickle
import re
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed import hparams_registry, networks
from domainbed.lib import misc
from domainbed.lib.misc import UnknownNameError, unknown_name_message
from domainbed.plugins import PluginNames, ensure_loaded

ALGORITHMS: list[str] = PluginNames([
    "ERM",
    "GroupDRO",
])


def get_algorithm_class(algorithm_name: str) -> type:
    """Return the algorithm class with the given name."""
    ensure_loaded()
    cls = globals().get(algorithm_name)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or cls is Algorithm:
        raise UnknownNameError(unknown_name_message("Algorithm", algorithm_name, ALGORITHMS))
    return cls


def register_algorithm(name: str, cls: type, after: str | None = None) -> None:
    """Make `cls` resolvable as `name` and list it in ALGORITHMS (idempotent, in place)."""
    globals()[name] = cls
    if name in ALGORITHMS:
        return
    if after in ALGORITHMS:
        ALGORITHMS.insert(ALGORITHMS.index(after) + 1, name)
    else:
        ALGORITHMS.append(name)


def attribute_kwargs(algorithm_class: type, dataset) -> dict[str, Any]:
    """Extra constructor arguments for an algorithm that uses attributes.

    An algorithm with `USES_ATTRIBUTES` may accept a keyword `num_attributes` (the number
    of the dataset's attribute values, e.g. to size a head that predicts them); it gets it
    when the dataset has attributes. Upstream's four positional arguments never change.
    """
    params = inspect.signature(algorithm_class.__init__).parameters
    if "num_attributes" in params and getattr(dataset, "ATTRIBUTES", None):
        return {"num_attributes": len(dataset.ATTRIBUTES)}
    return {}


# Checkpoints written before hparams were made plain Python values held numpy scalars (a random
# `resnet_dropout`); rebuilding a numpy scalar runs no other code, so those load too.
_NUMPY_CORE = getattr(np, "_core", None) or np.core  # renamed in numpy 2
NUMPY_SCALARS = [np.dtype, _NUMPY_CORE.multiarray.scalar] + [
    getattr(np.dtypes, name) for name in ("Float64DType", "Int64DType", "BoolDType")]


class UnsafeCheckpoint(misc.UserInputError):
    """A checkpoint file that holds pickled Python objects (which could run code when loaded)."""


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a `model.pkl` that train.py wrote: tensors and plain data only, so it loads with
    `weights_only=True` and a crafted file cannot run code. Anything else is refused."""
    if not os.path.isfile(path):
        raise misc.UserInputError(f"no checkpoint at {path}: train with the default (no "
                                  "--skip_model_save) to write model.pkl.")
    try:
        with torch.serialization.safe_globals(NUMPY_SCALARS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if refused is None:  # not a pickle stream torch can read at all
            raise misc.UserInputError(f"{path} is not a readable checkpoint; it may be "
                                      "truncated or not a model.pkl: retrain the run.") from None
        raise UnsafeCheckpoint(
            f"{path} holds pickled Python objects ({refused.group(1)}), not only tensors and "
            f"plain data, so it is not loaded (loading it could run code). Checkpoints written "
            f"by this project's train.py never do: retrain the run, or load it yourself only "
            f"if you trust its source.") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise misc.UserInputError(f"{path} is not a readable checkpoint ({exc}); it may be "
                                  "truncated: retrain the run.") from None


def from_checkpoint(save_dict: dict[str, Any]) -> "Algorithm":
    """Rebuild the algorithm saved in a `model.pkl` dict (as train.py writes it) and load it."""
    args = save_dict["args"]
    cls = get_algorithm_class(args["algorithm"])  # loads the plugins that define it
    # A checkpoint from an earlier version lacks hparams added since (e.g. `featurizer`):
    # they take their defaults, which is what that version did.
    hparams = {**hparams_registry.default_hparams(args["algorithm"], args["dataset"]),
               **save_dict["model_hparams"]}
    extra = {"num_attributes": save_dict["model_num_attributes"]} \
        if "model_num_attributes" in save_dict else {}
    algorithm = cls(save_dict["model_input_shape"], save_dict["model_num_classes"],
                    save_dict["model_num_domains"], hparams, **extra)
    algorithm.load_state_dict(save_dict["model_dict"])
    return algorithm


def split_minibatches(minibatches: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate the x's and y's of all environments (extra tuple entries ignored)."""
    all_x = torch.cat([mb[0] for mb in minibatches])
    all_y = torch.cat([mb[1] for mb in minibatches])
    return all_x, all_y


class Algorithm(nn.Module):
    """Base class: subclasses build networks and optimizers, implement update and predict.

    `USES_ATTRIBUTES = True` asks the harness for `(x, y, a)` minibatches where the
    dataset has a nuisance attribute; such a class must also accept `(x, y)` pairs.
    """

    USES_ATTRIBUTES = False

    def __init__(self, input_shape: tuple, num_classes: int, num_domains: int,
                 hparams: dict[str, Any]):
        super().__init__()
        self.hparams = hparams

    def update(self, minibatches: list[tuple], unlabeled=None) -> dict[str, float]:
        """Perform one update step given a list of per-environment minibatches."""
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ERM(Algorithm):
    """Empirical risk minimisation: mean cross-entropy over all training examples."""

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.featurizer = networks.Featurizer(input_shape, self.hparams)
        self.classifier = networks.Classifier(
            self.featurizer.n_outputs, num_classes, self.hparams["nonlinear_classifier"])
        self.network = nn.Sequential(self.featurizer, self.classifier)
        self.optimizer = torch.optim.Adam(
            self.network.parameters(), lr=self.hparams["lr"],
            weight_decay=self.hparams["weight_decay"])

    def update(self, minibatches, unlabeled=None):
        all_x, all_y = split_minibatches(minibatches)
        loss = F.cross_entropy(self.predict(all_x), all_y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def predict(self, x):
        return self.network(x)


class GroupDRO(ERM):
    """Robust optimisation over environments (Sagawa et al. 2020, Algorithm 1).

    `q` holds the environments' weights, updated by exponentiated gradient ascent on
    their losses. Unlike upstream, a saved `q` reloads into a fresh instance.
    """

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.register_buffer("q", torch.Tensor())

    def update(self, minibatches, unlabeled=None):
        device = minibatches[0][0].device
        if self.q.numel() != len(minibatches):
            self.q = torch.ones(len(minibatches), device=device)
        losses = torch.zeros(len(minibatches), device=device)
        for m, mb in enumerate(minibatches):
            losses[m] = F.cross_entropy(self.predict(mb[0]), mb[1])
            self.q[m] *= (self.hparams["groupdro_eta"] * losses[m].data).exp()
        self.q /= self.q.sum()
        loss = torch.dot(losses, self.q)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Resize the lazily-sized buffer to the saved one before the copy.
        saved_q = state_dict.get(prefix + "q")
        if saved_q is not None and saved_q.shape != self.q.shape:
            self.q = torch.empty_like(saved_q, device=self.q.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
