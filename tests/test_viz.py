"""Grad-CAM figures and map statistics of trained models (explain, viz)."""
import os

import pytest
import torch

from domainbed import algorithms, hparams_registry
from domainbed.plugins import load_plugins
from ex2l_domainbed import explain, viz
from ex2l_domainbed.datasets import spawrious_lite

load_plugins()
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """A Lite dataset and one short ERM and EX2L run each, trained by train.py."""
    from conftest import run_python_module
    root = tmp_path_factory.mktemp("viz")
    data = str(root / "data")
    spawrious_lite.generate(data, size=32, per_cell=3, progress=False)
    sweep = root / "sweep"
    for algorithm in ("ERM", "EX2L"):
        res = run_python_module(
            "domainbed.scripts.train", "--dataset", "SpawriousLiteM2M_hard", "--algorithm",
            algorithm, "--test_envs", "0", "--data_dir", data, "--output_dir",
            str(sweep / algorithm), "--steps", "2", "--hparams", '{"batch_size": 4}')
        assert res.returncode == 0, res.stderr
    return data, str(sweep)


def test_figure_is_drawn_from_the_best_runs(tiny_sweep, tmp_path):
    data, sweep = tiny_sweep
    assert viz.best_run(sweep, "EX2L").endswith("EX2L")
    out = viz.make_figure(sweep, data, str(tmp_path / "fig" / "gradcam.png"), per_group=1)
    assert os.path.getsize(out) > 10_000
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_missing_runs_are_a_clear_error(tmp_path, run_module):
    os.makedirs(tmp_path / "empty")
    with pytest.raises(viz.NoRunFound, match="no finished ERM run"):
        viz.best_run(str(tmp_path / "empty"), "ERM")
    res = run_module("ex2l_domainbed.viz", "--sweep_dir", str(tmp_path / "empty"),
                     "--data_dir", str(tmp_path), "--out", str(tmp_path / "x.png"))
    assert res.returncode == 2 and "error: no finished" in res.stderr


def _model(name, **kw):
    hp = hparams_registry.default_hparams(name, "DebugAttr28")
    torch.manual_seed(0)
    return algorithms.get_algorithm_class(name)((3, 28, 28), 2, 2, hp, **kw)


@pytest.mark.parametrize("name,has_nuisance", [("ERM", False), ("GroupDRO", False),
                                               ("EX2L", True), ("AttributeDANN", True)])
def test_head_maps_for_every_algorithm(name, has_nuisance):
    kw = {"num_attributes": 2} if has_nuisance else {}
    model = _model(name, **kw)
    x = torch.randn(3, 3, 28, 28)
    maps = explain.head_maps(model, x, torch.tensor([0, 1, 0]), torch.tensor([1, 1, 0]))
    assert maps.label.shape == (3, 28, 28) and maps.label.min() >= 0
    assert (maps.nuisance is not None) == has_nuisance
    assert torch.equal(maps.label_pred, model.predict(x).argmax(1))


def test_mass_inside_a_mask():
    maps = torch.zeros(3, 4, 4)
    maps[0, :2] = 1.0          # all mass in the top half
    maps[1] = 1.0              # spread evenly
    masks = torch.zeros(3, 4, 4)
    masks[:, :2] = 1.0         # the mask is the top half
    share = explain.mass_inside(maps, masks)
    assert share[0] == 1.0 and share[1] == 0.5 and torch.isnan(share[2])  # zero map: undefined
