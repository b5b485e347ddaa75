"""Grad-CAM figures and map statistics of trained models (explain, viz)."""
import json
import os
import re
import shutil

import numpy as np
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
    """A Lite dataset and one short ERM and EX2L run each, trained by train.main."""
    from conftest import call_main

    from domainbed.scripts import train
    root = tmp_path_factory.mktemp("viz")
    data = str(root / "data")
    spawrious_lite.generate(data, size=32, per_cell=3, progress=False)
    sweep = root / "sweep"
    for algorithm in ("ERM", "EX2L"):
        status = call_main(
            train.main, "--dataset", "SpawriousLiteM2M_hard", "--algorithm",
            algorithm, "--test_envs", "0", "--data_dir", data, "--output_dir",
            str(sweep / algorithm), "--steps", "2", "--hparams", '{"batch_size": 4}')
        assert status == 0, (sweep / algorithm / "err.txt").read_text()
    return data, str(sweep)


def _set_last_accuracies(run_dir, val_acc, test_acc=0.5):
    """Rewrite the run's last record: every training env's holdout accuracy `val_acc`, the
    test env's (env 0) accuracies `test_acc`."""
    path = os.path.join(run_dir, "results.jsonl")
    with open(path) as f:
        lines = f.read().splitlines()
    last = json.loads(lines[-1])
    for key in [k for k in last if re.fullmatch(r"env\d+_(in|out)_acc", k)]:
        last[key] = test_acc if key.startswith("env0_") else val_acc
    lines[-1] = json.dumps(last, sort_keys=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _fake_run(sweep, name, algorithm, last_val, first_val=0.0, test_acc=0.5, done=True,
              model=True):
    """A run folder as viz reads it: two records (the last checkpoint's training-domain
    holdout accuracy `last_val`), `done` and `model.pkl` markers."""
    run = os.path.join(sweep, name)
    os.makedirs(run)
    records = []
    for step, val in ((0, first_val), (1, last_val)):
        record = {"step": step, "args": {"algorithm": algorithm, "test_envs": [0]}}
        for i in range(3):
            for split in ("in", "out"):
                record[f"env{i}_{split}_acc"] = test_acc if i == 0 else val
        records.append(json.dumps(record))
    with open(os.path.join(run, "results.jsonl"), "w") as f:
        f.write("\n".join(records) + "\n")
    if done:
        with open(os.path.join(run, "done"), "w") as f:
            f.write("done")
    if model:
        open(os.path.join(run, "model.pkl"), "wb").close()
    return run


def test_best_run_is_the_best_training_domain_validation_accuracy(tmp_path):
    sweep = str(tmp_path)
    _fake_run(sweep, "a_mid", "ERM", last_val=0.6, first_val=0.99)  # only the last step counts
    best = _fake_run(sweep, "b_best", "ERM", last_val=0.8)
    _fake_run(sweep, "c_best_on_test", "ERM", last_val=0.5, test_acc=1.0)  # not the oracle
    _fake_run(sweep, "d_unfinished", "ERM", last_val=0.95, done=False)
    _fake_run(sweep, "e_no_model", "ERM", last_val=0.97, model=False)
    ex2l = _fake_run(sweep, "f_other_algorithm", "EX2L", last_val=0.99)
    _fake_run(sweep, "g_worse_ex2l", "EX2L", last_val=0.1)
    assert viz.best_run(sweep, "ERM") == best
    assert viz.best_run(sweep, "EX2L") == ex2l
    with pytest.raises(viz.NoRunFound, match="no finished AttributeDANN run"):
        viz.best_run(sweep, "AttributeDANN")


def test_figure_is_drawn_from_the_best_runs(tiny_sweep, tmp_path, monkeypatch):
    """The figure loads the best run of each algorithm and draws, per test group (a row),
    per image: the image, ERM's label map, EX2L's label and confounder maps over it."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from domainbed import datasets
    from ex2l_domainbed.datasets.spawrious import CLASSES, LOCATIONS, load_rgb_image

    data, trained = tiny_sweep
    sweep = tmp_path / "sweep"
    for name, source, val in (("ERM", "ERM", 0.5), ("ERM_worse", "ERM", 0.25),
                              ("EX2L", "EX2L", 0.5), ("EX2L_better", "EX2L", 0.75)):
        shutil.copytree(os.path.join(trained, source), sweep / name)
        _set_last_accuracies(sweep / name, val)
    loaded, figures = [], []
    real_load, real_close = viz.load_model, plt.close

    def load_model(run):
        loaded.append(os.path.basename(run))
        return real_load(run)

    def close(fig=None):
        figures.append(fig)
        return real_close(fig)
    monkeypatch.setattr(viz, "load_model", load_model)
    monkeypatch.setattr(plt, "close", close)

    per_group = 2
    out = viz.make_figure(str(sweep), data, str(tmp_path / "fig" / "gradcam.png"),
                          per_group=per_group)
    assert loaded == ["ERM", "EX2L_better"]
    models = {"ERM": real_load(str(sweep / "ERM"))[0],
              "EX2L": real_load(str(sweep / "EX2L_better"))[0]}
    saved = torch.load(sweep / "EX2L_better" / "model.pkl", weights_only=True)
    test_env = datasets.get_dataset_class("SpawriousLiteM2M_hard")(
        data, [0], saved["model_hparams"])[0]
    groups = viz.pick_examples(test_env.samples, per_group)
    assert len(groups) >= 4 and all(len(items) == per_group for items in groups.values())

    (fig,) = figures
    panels = ["image", "ERM: label map", "EX2L: label map", "EX2L: confounder map"]
    cols = per_group * len(panels)
    axes = np.array(fig.axes).reshape(len(groups), cols)
    assert [ax.get_title() for ax in axes[0]] == panels * per_group
    assert all(ax.get_title() == "" for ax in axes[1:].flat)
    for row, ((y, a), items) in enumerate(groups.items()):
        assert axes[row][0].get_ylabel() == f"{CLASSES[y]}\n@ {LOCATIONS[a]}"
        images = [load_rgb_image(p) for p, _, _ in items]
        x = torch.stack([test_env.transform(im) for im in images])
        yt, at = torch.tensor([y] * len(items)), torch.tensor([a] * len(items))
        erm = explain.head_maps(models["ERM"], x, yt, at)
        ex2l = explain.head_maps(models["EX2L"], x, yt, at)
        for i, image in enumerate(images):
            cells = axes[row][i * len(panels):(i + 1) * len(panels)]
            for ax in cells:  # every panel shows the image underneath
                assert np.array_equal(ax.images[0].get_array(), np.asarray(image.convert("RGB")))
            assert len(cells[0].images) == 1
            for ax, expected in zip(cells[1:], (erm.label[i], ex2l.label[i], ex2l.nuisance[i])):
                assert len(ax.images) == 2 and ax.images[1].get_alpha() == 0.5
                np.testing.assert_allclose(np.asarray(ax.images[1].get_array()),
                                           expected.numpy(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(erm.label, ex2l.label)  # two models, two different maps

    with Image.open(out) as png:
        assert png.format == "PNG"
        width, height = png.size
        pixels = np.asarray(png.convert("RGB"))
    assert (width, height) == (round(1.6 * cols * 110), round(1.7 * len(groups) * 110))
    assert pixels.std() > 20  # not blank
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000  # photos and jet overlays
    assert not os.path.exists(out + ".tmp.png")


def test_missing_runs_are_a_clear_error(tmp_path, run_main):
    os.makedirs(tmp_path / "empty")
    with pytest.raises(viz.NoRunFound, match="no finished ERM run"):
        viz.best_run(str(tmp_path / "empty"), "ERM")
    res = run_main(viz.main, "--sweep_dir", str(tmp_path / "empty"),
                   "--data_dir", str(tmp_path), "--out", str(tmp_path / "x.png"))
    assert res.returncode == 2 and "error: no finished" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert not os.path.exists(tmp_path / "x.png")


def test_python_m_exit_status(tmp_path, run_module):
    """`python -m` as a whole: main's status 2 is the process's exit status."""
    os.makedirs(tmp_path / "empty")
    res = run_module("ex2l_domainbed.viz", "--sweep_dir", str(tmp_path / "empty"),
                     "--data_dir", str(tmp_path), "--out", str(tmp_path / "x.png"))
    assert res.returncode == 2 and "error: no finished" in res.stderr
    assert "Traceback" not in res.stderr


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
