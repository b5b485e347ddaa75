"""Spawrious-Lite: the generator, the Lite datasets on the real loader, and their hparams."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch

from domainbed import datasets, hparams_registry
from domainbed.plugins import load_plugins
from ex2l_domainbed.datasets import shapes, spawrious, spawrious_lite
from ex2l_domainbed.datasets.lite_backbone import DEFAULT_PATH

load_plugins()


def tree_digest(root: str) -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def tiny_lite(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("lite"))
    spawrious_lite.generate(out, size=32, per_cell=3, progress=False)
    return out


def test_generator_writes_the_real_layout(tiny_lite):
    tree = os.path.join(tiny_lite, "spawrious224")
    for pool in ("0", "1"):
        for location in spawrious.LOCATIONS:
            for cls in spawrious.CLASSES:
                names = sorted(os.listdir(os.path.join(tree, pool, location, cls)))
                assert names == sorted(f"{location}_{cls}_{n}.png" for n in range(3))
    assert spawrious_lite.read_marker(tree)["per_cell"] == 3
    assert os.listdir(tiny_lite) == ["spawrious224"]  # no temporary folder left behind


def test_generator_is_deterministic(tiny_lite, tmp_path):
    again = spawrious_lite.generate(str(tmp_path / "a"), size=32, per_cell=3, progress=False)
    assert tree_digest(again) == tree_digest(os.path.join(tiny_lite, "spawrious224"))
    other = spawrious_lite.generate(str(tmp_path / "b"), size=32, per_cell=3, seed=1,
                                    progress=False)
    assert tree_digest(other) != tree_digest(again)


def test_images_differ_within_a_class_and_carry_their_background():
    sources = {loc: spawrious_lite.load_source(n)
               for loc, n in spawrious_lite.LOCATION_SOURCES.items()}
    a, alpha_a = spawrious_lite.make_image(sources["dirt"], "bulldog", 64,
                                           spawrious_lite.image_rng(0, "0", "dirt", "bulldog", 0))
    b, alpha_b = spawrious_lite.make_image(sources["dirt"], "bulldog", 64,
                                           spawrious_lite.image_rng(0, "0", "dirt", "bulldog", 1))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert not np.array_equal(alpha_a, alpha_b)  # pose, scale and position vary
    # Backgrounds are grey (colour would be a location shortcut); only the shape has colour.
    background = a[alpha_a == 0]
    assert (background[:, 0] == background[:, 1]).all() and (background[:, 1] == background[:, 2]).all()
    # The foreground stays inside the image and covers a fair share of it.
    for alpha in (alpha_a, alpha_b):
        assert alpha[0].max() == 0 and alpha[-1].max() == 0
        assert alpha[:, 0].max() == 0 and alpha[:, -1].max() == 0
        assert 0.02 < alpha.mean() < 0.3


def test_every_class_has_its_own_shape():
    assert set(shapes.LITE_SHAPES) == set(spawrious.CLASSES)
    assert not set(shapes.PRETRAIN_SHAPES) & set(shapes.LITE_SHAPES)
    u, v = np.meshgrid(np.linspace(-1.5, 1.5, 61), np.linspace(-1.5, 1.5, 61))
    masks = {name: m(u, v) for name, m in shapes.LITE_SHAPES.items()}
    names = sorted(masks)
    for i, p in enumerate(names):
        for q in names[i + 1:]:
            assert (masks[p] != masks[q]).mean() > 0.05, (p, q)


def test_generation_interrupted_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = spawrious_lite.make_image

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(spawrious_lite, "make_image", failing)
    with pytest.raises(KeyboardInterrupt):
        spawrious_lite.generate(str(tmp_path), size=16, per_cell=2, progress=False)
    assert os.listdir(tmp_path) == []


def test_existing_folders_are_checked(tmp_path, tiny_lite):
    real = tmp_path / "real" / "spawrious224"
    real.mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not Spawrious-Lite"):
        spawrious_lite.generate(str(tmp_path / "real"), size=32, per_cell=3)
    with pytest.raises(FileExistsError, match="per_cell: found 3, asked 5"):
        spawrious_lite.generate(tiny_lite, size=32, per_cell=5)


def test_generator_cli(tmp_path, run_module, run_main):
    # a whole `python -m` run: exit status 0 and the tree written
    ok = run_module("ex2l_domainbed.datasets.spawrious_lite", "--out", str(tmp_path),
                    "--size", "8", "--per_cell", "1")
    assert ok.returncode == 0, ok.stderr
    assert os.path.isdir(tmp_path / "spawrious224" / "1" / "beach" / "corgi")
    assert ok.stdout.strip() == str(tmp_path / "spawrious224")
    before = tree_digest(str(tmp_path))
    bad = run_main(spawrious_lite.main, "--out", str(tmp_path), "--size", "8", "--per_cell", "2")
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
    assert "per_cell: found 1, asked 2" in bad.stderr and "Traceback" not in bad.stderr
    assert tree_digest(str(tmp_path)) == before  # the existing tree is left as it was


# --- the Lite datasets -------------------------------------------------------------------


def test_lite_datasets_mirror_the_real_challenges():
    assert list(spawrious_lite.LITE_DATASETS) == [
        n.replace("Spawrious", "SpawriousLite") for n in spawrious.SPAWRIOUS_DATASETS]
    for name, cls in spawrious_lite.LITE_DATASETS.items():
        real = spawrious.SPAWRIOUS_DATASETS[name.replace("SpawriousLite", "Spawrious")]
        assert cls.CHALLENGE == real.CHALLENGE
        assert cls.ENVIRONMENTS == real.ENVIRONMENTS and cls.ATTRIBUTES == real.ATTRIBUTES
        assert datasets.get_dataset_class(name) is cls
        # a plain class statement of the module, under its own name
        assert issubclass(cls, spawrious_lite.SpawriousLiteBenchmark)
        assert cls.__name__ == name and getattr(spawrious_lite, name) is cls
        assert cls.__module__ == spawrious_lite.__name__ and real.__name__ in cls.__doc__
    assert {cls.CHALLENGE for cls in spawrious_lite.LITE_DATASETS.values()} == set(
        spawrious.CHALLENGES)


@pytest.mark.parametrize("name", ["SpawriousLiteM2M_hard", "SpawriousLiteO2O_easy"])
def test_lite_dataset_loads_generated_data(tiny_lite, name):
    ds = datasets.get_dataset_class(name)(tiny_lite, [0], {"data_augmentation": False})
    assert ds.input_shape == (3, 32, 32) and ds.base_count == 3
    expected = spawrious.challenge_cells(ds.CHALLENGE, 3)
    for env, cells in zip(ds.datasets, expected):
        want = sum(3 if c.limit is None else c.limit for c in cells)
        assert len(env) == want
    x, y, a = ds[0][0]
    assert x.shape == (3, 32, 32) and 0 <= y < 4 and 0 <= a < 6


def test_lite_dataset_generates_on_first_use(tmp_path):
    class Tiny(spawrious_lite.LITE_DATASETS["SpawriousLiteM2M_easy"]):
        IMAGE_SIZE, BASE_COUNT = 8, 2

    ds = Tiny(str(tmp_path / "fresh"), [0], {})
    assert ds.input_shape == (3, 8, 8)
    assert len(ds[1]) == 4 * 2 and len(ds[0]) == 8 * 2
    # A second construction reuses the data (and accepts the spawrious224 folder itself).
    again = Tiny(str(tmp_path / "fresh" / "spawrious224"), [0], {})
    assert again[0].samples == ds[0].samples


def test_lite_dataset_refuses_real_spawrious(tmp_path):
    from spawrious_fixture import make_spawrious_tree

    make_spawrious_tree(str(tmp_path), per_cell=2, size=8)
    with pytest.raises(spawrious.SpawriousDataError, match="not Spawrious-Lite"):
        datasets.get_dataset_class("SpawriousLiteM2M_hard")(str(tmp_path), [0], {})


def test_lite_hparams_fix_the_calibration():
    for seed in (0, 1, 7):
        hp = (hparams_registry.default_hparams("ERM", "SpawriousLiteM2M_hard") if seed == 0
              else hparams_registry.random_hparams("ERM", "SpawriousLiteM2M_hard", seed))
        assert hp["lite_freeze_blocks"] == 3
        assert hp["pretrained"] is True and hp["pretrained_path"] == DEFAULT_PATH
        assert 10 ** -3.5 <= hp["lr"] <= 10 ** -2.5
    default = hparams_registry.default_hparams("GroupDRO", "SpawriousLiteO2O_easy")
    assert default["lr"] == 1e-3 and default["batch_size"] == 32
    assert "lite_freeze_blocks" not in hparams_registry.default_hparams("ERM", "SpawriousM2M_hard")
    assert datasets.get_dataset_class("SpawriousLiteM2M_hard").N_STEPS == 600


def test_shipped_backbone_loads_and_matches_its_report():
    from domainbed import networks
    from ex2l_domainbed.backbones import LiteCNN
    from ex2l_domainbed.datasets.lite_backbone import weights_digest

    with open(DEFAULT_PATH + ".json") as f:
        report = json.load(f)
    state = torch.load(DEFAULT_PATH, weights_only=True)
    assert report["weights_sha256"] == weights_digest(state) and report["steps"] == 3000
    hp = hparams_registry.default_hparams("ERM", "SpawriousLiteM2M_hard")
    net = networks.Featurizer((3, 64, 64), hp)
    assert isinstance(net, LiteCNN) and net.n_frozen == 3
    assert torch.equal(net.blocks[0][0].weight, state["blocks.0.0.weight"])
    scratch = networks.Featurizer((3, 64, 64), {**hp, "pretrained": False})
    assert not torch.equal(scratch.blocks[0][0].weight, state["blocks.0.0.weight"])


def test_train_runs_on_lite_and_logs_worst_group_accuracy(tiny_lite, tmp_path, run_main):
    from domainbed.scripts import train

    out = tmp_path / "run"
    res = run_main(train.main, "--dataset", "SpawriousLiteM2M_hard",
                   "--algorithm", "ERM", "--test_envs", "0", "--data_dir", tiny_lite,
                   "--output_dir", str(out), "--steps", "3", "--checkpoint_freq", "2",
                   "--hparams", '{"batch_size": 4}')
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in open(out / "results.jsonl")]
    assert records[-1]["step"] == 2 and (out / "done").exists()
    # M2M-Hard's test groups: bulldog and dachshund on snow/beach, labrador and corgi on
    # dirt/jungle (y: bulldog 0, corgi 1, dachshund 2, labrador 3; a: jungle 1, dirt 2,
    # snow 4, beach 5).
    test_groups = {f"y={y},a={a}" for y in (0, 2) for a in (4, 5)}
    test_groups |= {f"y={y},a={a}" for y in (1, 3) for a in (1, 2)}
    assert set(records[-1]["env0_in_group_acc"]) <= test_groups
    assert len(records[-1]["env0_in_group_acc"]) >= 6
    assert 0.0 <= records[-1]["env0_in_wga"] <= records[-1]["env0_in_acc"] <= 1.0
    assert records[-1]["hparams"]["lite_freeze_blocks"] == 3


def test_plugin_register_is_idempotent():
    from ex2l_domainbed import plugin

    plugin.register()
    plugin.register()
    names = list(spawrious.SPAWRIOUS_DATASETS) + list(spawrious_lite.LITE_DATASETS)
    assert all(datasets.DATASETS.count(n) == 1 for n in names)
    assert hparams_registry._HOOKS.count(spawrious_lite.lite_hparams) == 1


def test_backbone_pretraining_is_deterministic():
    from ex2l_domainbed.datasets import lite_backbone

    runs = [lite_backbone.pretrain(steps=3, per_class=2, size=32, batch_size=8, log_every=3)
            for _ in range(2)]
    digests = [lite_backbone.weights_digest(state) for state, _ in runs]
    assert digests[0] == digests[1]
    other, _ = lite_backbone.pretrain(steps=3, seed=1, per_class=2, size=32, batch_size=8,
                                      log_every=3)
    assert lite_backbone.weights_digest(other) != digests[0]
