"""Waterbirds and CelebA on tiny fixtures in their real layouts, their errors, and the
Waterbirds-Lite stand-in (generator, proportions, determinism, training)."""
import hashlib
import json
import os
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from subpop_fixture import (
    BLOND,
    CELEBA_NAMES,
    MALE,
    attribute_line,
    celeba_rows,
    decode_colour,
    make_celeba_tree,
    make_waterbirds_tree,
    waterbirds_rows,
    write_celeba,
)

from domainbed import datasets, hparams_registry
from domainbed.lib.misc import UserInputError
from domainbed.plugins import load_plugins
from domainbed.scripts import train
from ex2l_domainbed.datasets import subpop, waterbirds_lite
from ex2l_domainbed.datasets.lite_backbone import DEFAULT_PATH
from ex2l_domainbed.datasets.spawrious_lite import load_source

torch.set_num_threads(1)
load_plugins()

NO_AUG = {"data_augmentation": False}
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
# The real Waterbirds' (y, place) counts per split, written here independently of the generator.
REAL_COUNTS = {0: [3498, 184, 56, 1057], 1: [467, 466, 133, 133], 2: [2255, 2255, 642, 642]}
GROUPS = [(0, 0), (0, 1), (1, 0), (1, 1)]


def centre_rgb(x: torch.Tensor) -> list[int]:
    """The centre pixel of a normalised image tensor, back in 0..255."""
    h, w = x.shape[1] // 2, x.shape[2] // 2
    return [round(v) for v in ((x * STD + MEAN)[:, h, w] * 255).tolist()]


def one_line_error(fn) -> str:
    with pytest.raises(subpop.SubpopDataError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, UserInputError)
    return message


# --- Waterbirds ---------------------------------------------------------------------------


@pytest.fixture
def birds(tmp_path) -> str:
    return make_waterbirds_tree(tmp_path / "data")


def test_registered_with_the_subpopulation_contract():
    for name in ("Waterbirds", "CelebA", "WaterbirdsLite"):
        cls = datasets.get_dataset_class(name)
        assert cls is subpop.DATASETS[name] and cls.__name__ == name
        assert cls.ENVIRONMENTS == ["train", "val", "test"]
        assert cls.VALIDATION_ENVS == (1,) and cls.FIXED_TEST_ENVS == (2,)
        assert datasets.training_envs(cls, [2]) == [0] and cls.NEEDS_DATA_DIR
    assert subpop.Waterbirds.ATTRIBUTES == ["land", "water"]
    assert subpop.Waterbirds.CLASSES == ["landbird", "waterbird"]
    assert subpop.CelebA.ATTRIBUTES == ["female", "male"]
    assert subpop.CelebA.CLASSES == ["not_blond", "blond"]
    assert subpop.Waterbirds.FEATURIZER is None and subpop.CelebA.FEATURIZER is None
    assert subpop.Waterbirds.INPUT_SHAPE == subpop.CelebA.INPUT_SHAPE == (3, 224, 224)
    assert (subpop.Waterbirds.N_STEPS, subpop.CelebA.N_STEPS) == (5001, 30001)
    lite = subpop.WaterbirdsLite
    assert issubclass(lite, subpop.Waterbirds) and lite.FEATURIZER == "lite_cnn"
    assert lite.INPUT_SHAPE == (3, 64, 64) and lite.N_WORKERS == 0


def test_waterbirds_maps_rows_to_splits_and_groups(birds):
    ds = subpop.Waterbirds(os.path.dirname(birds), [2], NO_AUG)
    assert ds.input_shape == (3, 224, 224) and ds.num_classes == 2
    rows = waterbirds_rows()
    for split, env in enumerate(ds.datasets):
        want = [(os.path.join(birds, name), y, a) for _, name, y, s, a, _ in rows if s == split]
        assert env.samples == want and len(env) == 8
    # Items carry the image their row names: its colour encodes (y, place, split).
    for split, env in enumerate(ds.datasets):
        for k in (0, len(env) - 1):
            x, y, a = env[k]
            assert x.shape == (3, 224, 224)
            assert decode_colour(centre_rgb(x)) == (y, a, split)


def test_waterbirds_accepts_the_folder_itself(birds):
    parent = subpop.Waterbirds(os.path.dirname(birds), [2], NO_AUG)
    itself = subpop.Waterbirds(birds + os.sep, [2], NO_AUG)
    assert [e.samples for e in itself.datasets] == [e.samples for e in parent.datasets]


def test_waterbirds_transforms_follow_sagawa(birds):
    from torchvision import transforms as T
    ds = subpop.Waterbirds(birds, [2], {"data_augmentation": True})
    train_t, val_t, test_t = (env.transform for env in ds.datasets)
    assert val_t is test_t and train_t is not val_t
    crop = train_t.transforms[0]
    assert isinstance(crop, T.RandomResizedCrop) and crop.size == (224, 224)
    assert crop.scale == (0.7, 1.0) and crop.ratio == pytest.approx((0.75, 4 / 3))
    assert isinstance(train_t.transforms[1], T.RandomHorizontalFlip)
    resize, centre = val_t.transforms[:2]
    assert resize.size == (256, 256) and centre.size == (224, 224)
    assert ds.datasets[0][0][0].shape == (3, 224, 224)
    plain = subpop.Waterbirds(birds, [2], NO_AUG)
    assert plain.datasets[0].transform is plain.datasets[1].transform


def _edit_metadata(folder, replace_line=None, drop=None):
    path = os.path.join(folder, "metadata.csv")
    lines = open(path).read().splitlines()
    if replace_line is not None:
        index, text = replace_line
        lines[index] = text
    if drop is not None:
        lines = [line for line in lines if not drop(line)]
    open(path, "w").write("\n".join(lines) + "\n")


def _row(img_id=1, name="014.Indigo_Bunting/Indigo_Bunting_0001_000.jpg", y=0, split=0,
         place=0):
    return f"{img_id},{name},{y},{split},{place},/b/bamboo_forest/00000001.jpg"


WATERBIRDS_ERRORS = {
    "wrong field count": ((1, "1,014.Indigo_Bunting/Indigo_Bunting_0001_000.jpg,0,0"),
                          "line 2 has 4 fields, the header has 6"),
    "non-integer y": ((1, _row(y="bird")), "line 2: y is 'bird', not an integer"),
    "y out of range": ((1, _row(y=2)), "y is 2, expected one of 0 (landbird), 1 (waterbird)"),
    "place out of range": ((1, _row(place=3)), "place is 3, expected one of 0 (land), 1 (water)"),
    "split out of range": ((1, _row(split=5)), "split is 5, expected one of 0 (train)"),
    "non-integer img_id": ((1, _row(img_id="x1")), "img_id is 'x1', not an integer"),
    "path outside the folder": ((1, _row(name="../../secret.jpg")), "is not a path inside"),
    "header lacks a column": ((0, "img_id,img_filename,y,split,location,place_filename"),
                              "lacks the column(s) place"),
}


@pytest.mark.parametrize("case", list(WATERBIRDS_ERRORS))
def test_waterbirds_malformed_metadata(birds, case):
    edit, expected = WATERBIRDS_ERRORS[case]
    _edit_metadata(birds, replace_line=edit)
    message = one_line_error(lambda: subpop.Waterbirds(birds, [2], {}))
    assert expected in message and "metadata.csv" in message
    assert "waterbird_complete95_forest2water2.tar.gz" in message  # the fix


def test_waterbirds_missing_root_and_files(tmp_path, birds):
    message = one_line_error(lambda: subpop.Waterbirds(str(tmp_path / "nowhere"), [2], {}))
    assert "does not exist" in message and "nowhere" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    message = one_line_error(lambda: subpop.Waterbirds(str(empty), [2], {}))
    assert "waterbird_complete95_forest2water2/metadata.csv" in message
    assert "--data_dir may name" in message
    message = one_line_error(lambda: subpop.Waterbirds(None, [2], {}))
    assert "needs --data_dir" in message
    os.remove(os.path.join(birds, "metadata.csv"))
    message = one_line_error(lambda: subpop.Waterbirds(os.path.dirname(birds), [2], {}))
    assert os.path.join(birds, "metadata.csv") + " is missing" in message


def test_waterbirds_missing_image_is_named(birds):
    name = waterbirds_rows()[5][1]
    os.remove(os.path.join(birds, name))
    shutil.rmtree(os.path.join(birds, "001.Black_footed_Albatross"))  # 24 rows: 12 of them
    message = one_line_error(lambda: subpop.Waterbirds(birds, [2], {}))
    assert message.startswith(os.path.join(birds, name) + " (and 12 more) is listed")
    assert "missing" in message


def test_waterbirds_empty_split(birds):
    _edit_metadata(birds, drop=lambda line: line.split(",")[3] == "1")
    message = one_line_error(lambda: subpop.Waterbirds(birds, [2], {}))
    assert "no image of split 1 (val)" in message


def test_corrupt_image_fails_when_indexed(birds):
    path = os.path.join(birds, waterbirds_rows()[0][1])
    open(path, "wb").write(b"not a jpeg")
    ds = subpop.Waterbirds(birds, [2], NO_AUG)  # existence is checked, decoding is not
    message = one_line_error(lambda: ds.datasets[0][0])
    assert path in message and "corrupt or unreadable" in message


def test_missing_files_lists_each_folder_once(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    (tmp_path / "a" / "sub.jpg").mkdir()  # a folder is not an image
    calls = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: calls.append(p) or real(p))
    paths = [str(tmp_path / "a" / n) for n in ("x.jpg", "y.jpg", "sub.jpg", "x.jpg")]
    paths.append(str(tmp_path / "b" / "z.jpg"))
    assert subpop.missing_files(paths) == [paths[1], paths[2], paths[4]]
    assert sorted(calls) == [str(tmp_path / "a"), str(tmp_path / "b")]


# --- CelebA -------------------------------------------------------------------------------


@pytest.fixture
def faces(tmp_path) -> str:
    return make_celeba_tree(tmp_path / "data")


def test_celeba_maps_blond_hair_and_male(faces):
    ds = subpop.CelebA(os.path.dirname(faces), [2], NO_AUG)
    assert ds.input_shape == (3, 224, 224) and ds.num_classes == 2
    rows = celeba_rows()
    for split, env in enumerate(ds.datasets):
        want = [(os.path.join(faces, "img_align_celeba", n), y, a)
                for n, y, a, s in rows if s == split]
        assert env.samples == want and len(env) == 8
        x, y, a = env[len(env) - 1]
        assert x.shape == (3, 224, 224) and (y, a) == (1, 1)
        assert decode_colour(centre_rgb(x)) == (y, a, split)
    flat = subpop.CelebA(faces, [2], NO_AUG)  # the celeba folder itself
    assert [e.samples for e in flat.datasets] == [e.samples for e in ds.datasets]


def test_celeba_transforms_follow_sagawa(faces):
    from torchvision import transforms as T
    ds = subpop.CelebA(faces, [2], {"data_augmentation": True})
    centre, resize = ds.datasets[1].transform.transforms[:2]
    assert centre.size == (178, 178) and resize.size == 224
    crop, flip = ds.datasets[0].transform.transforms[:2]
    assert isinstance(crop, T.RandomResizedCrop) and crop.ratio == pytest.approx((1.0, 4 / 3))
    assert isinstance(flip, T.RandomHorizontalFlip)


def _attr_lines(rows):
    return [str(len(rows)), " ".join(CELEBA_NAMES)] + [attribute_line(n, y, a)
                                                       for n, y, a, _ in rows]


def _bad_value(rows, index, value):
    lines = _attr_lines(rows)
    fields = lines[2].split()
    fields[1 + index] = value
    lines[2] = " ".join(fields)
    return lines


CELEBA_ERRORS = {
    "count mismatch": (lambda r: ["99"] + _attr_lines(r)[1:], None,
                       "list_attr_celeba.txt line 1 says 99 images but 24 rows follow"),
    "count not an integer": (lambda r: ["many"] + _attr_lines(r)[1:], None,
                             "line 1: the image count is 'many', not an integer"),
    "wrong field count": (lambda r: _attr_lines(r)[:2] + ["000001.jpg 1 -1"] + _attr_lines(r)[3:],
                          None, "line 3 has 3 fields, expected 41"),
    "value not 1/-1": (lambda r: _bad_value(r, BLOND, "0"), None,
                       "line 3: Blond_Hair is 0, expected one of 1 (yes), -1 (no)"),
    "non-integer value": (lambda r: _bad_value(r, MALE, "yes"), None,
                          "line 3: Male is 'yes', not an integer"),
    "attribute name missing": (
        lambda r: [_attr_lines(r)[0], " ".join(CELEBA_NAMES).replace("Blond_Hair", "Blonde")]
        + _attr_lines(r)[2:], None, "line 2 (the attribute names) lacks Blond_Hair"),
    "split out of range": (None, lambda r: [f"{n} {3 if i == 4 else s}"
                                            for i, (n, _, _, s) in enumerate(r)],
                           "list_eval_partition.txt line 5: split is 3, expected one of"),
    "partition field count": (None, lambda r: ["000001.jpg"] + [f"{n} {s}" for n, _, _, s in r[1:]],
                              "list_eval_partition.txt line 1 has 1 fields, expected 2"),
    "image without split": (None, lambda r: [f"{n} {s}" for n, _, _, s in r[:-1]],
                            "000024.jpg is listed in"),
    "split without attributes": (lambda r: ["23"] + _attr_lines(r)[1:-1], None,
                                 "000024.jpg is listed in"),
}


@pytest.mark.parametrize("case", list(CELEBA_ERRORS))
def test_celeba_malformed_files(tmp_path, case):
    attrs, partition, expected = CELEBA_ERRORS[case]
    rows = celeba_rows()
    folder = str(tmp_path / "celeba")
    write_celeba(folder, rows, attr_lines=attrs(rows) if attrs else None,
                 partition_lines=partition(rows) if partition else None)
    message = one_line_error(lambda: subpop.CelebA(str(tmp_path), [2], {}))
    assert expected in message and "mmlab.ie.cuhk.edu.hk" in message


@pytest.mark.parametrize("name", ["list_attr_celeba.txt", "list_eval_partition.txt",
                                  "img_align_celeba"])
def test_celeba_missing_file(faces, name):
    target = os.path.join(faces, name)
    shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    message = one_line_error(lambda: subpop.CelebA(os.path.dirname(faces), [2], {}))
    assert f"{target} is missing" in message


def test_celeba_missing_root_missing_image_and_empty_split(tmp_path, faces):
    message = one_line_error(lambda: subpop.CelebA(str(tmp_path / "none"), [2], {}))
    assert "does not exist" in message
    os.remove(os.path.join(faces, "img_align_celeba", "000003.jpg"))
    message = one_line_error(lambda: subpop.CelebA(faces, [2], {}))
    assert message.startswith(os.path.join(faces, "img_align_celeba", "000003.jpg") + " is listed")
    rows = [r for r in celeba_rows() if r[3] != 2]
    write_celeba(str(tmp_path / "nosplit"), rows)
    message = one_line_error(lambda: subpop.CelebA(str(tmp_path / "nosplit"), [2], {}))
    assert "no image of split 2 (test)" in message


# --- Waterbirds-Lite ----------------------------------------------------------------------


SCALE, SIZE = 0.02, 16


@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("wblite"))
    waterbirds_lite.generate(out, size=SIZE, scale=SCALE, progress=False)
    return out


def tree_digest(root: str) -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def test_lite_has_the_real_proportions_through_the_real_loader(lite):
    ds = subpop.Waterbirds(lite, [2], NO_AUG)  # the real loader, not the Lite class
    for split, env in enumerate(ds.datasets):
        counts = Counter((y, a) for _, y, a in env.samples)
        assert [counts[g] for g in GROUPS] == [max(1, round(n * SCALE))
                                               for n in REAL_COUNTS[split]]
    assert sum(len(e) for e in ds.datasets) == 236
    assert os.listdir(lite) == ["waterbird_complete95_forest2water2"]  # no temporary left
    header = open(os.path.join(lite, subpop.WATERBIRDS_FOLDER, "metadata.csv")).readline()
    assert header.strip() == "img_id,img_filename,y,split,place,place_filename"
    x, y, a = ds.datasets[2][0]
    assert x.shape == (3, 224, 224)  # the real loader's own transforms


def test_full_size_counts_are_the_real_ones():
    counts = waterbirds_lite.group_counts(1.0)
    assert {s: [counts[s][g] for g in GROUPS] for s in counts} == REAL_COUNTS
    assert sum(map(sum, REAL_COUNTS.values())) == 11788


def test_lite_generation_is_deterministic(lite, tmp_path):
    again = waterbirds_lite.generate(str(tmp_path / "a"), size=SIZE, scale=SCALE, progress=False)
    assert tree_digest(again) == tree_digest(os.path.join(lite, subpop.WATERBIRDS_FOLDER))
    other = waterbirds_lite.generate(str(tmp_path / "b"), size=SIZE, scale=SCALE, seed=1,
                                     progress=False)
    assert tree_digest(other) != tree_digest(again)


def test_lite_images_show_the_class_shape_on_a_grey_place():
    land = [load_source(n) for n in waterbirds_lite.PLACE_SOURCES["land"]]
    image, k = waterbirds_lite.make_image(land, "waterbird", 64,
                                          waterbirds_lite.image_rng(0, 0, 1, 0, 0))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and k in (0, 1)
    u, v = np.meshgrid(np.linspace(-1.2, 1.2, 49), np.linspace(-1.2, 1.2, 49))
    plain, notched = (waterbirds_lite.SILHOUETTES[c](u, v) for c in ("landbird", "waterbird"))
    assert (notched <= plain).all() and 0.02 < (plain & ~notched).mean() < 0.2
    grey = image[(image.max(axis=2) == image.min(axis=2))]
    assert len(grey) > 0.5 * 64 * 64  # the background has no colour; only the bird does


def test_lite_dataset_generates_on_first_use_and_reads_its_size(tmp_path, monkeypatch):
    made = []
    real = waterbirds_lite.generate
    monkeypatch.setattr(waterbirds_lite, "generate",
                        lambda out, size: made.append(out) or real(out, size=8, scale=0.005,
                                                                   progress=False))
    ds = subpop.WaterbirdsLite(str(tmp_path / "fresh"), [2], {})
    assert made == [str(tmp_path / "fresh")] and ds.input_shape == (3, 8, 8)
    path = ds.datasets[0].samples[0][0]
    pixels = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())
    unchanged = (pixels.permute(2, 0, 1).float() / 255 - MEAN) / STD
    assert torch.allclose(ds.datasets[0][0][0], unchanged, atol=1e-5)  # no resize, no crop
    again = subpop.WaterbirdsLite(str(tmp_path / "fresh" / subpop.WATERBIRDS_FOLDER), [2], {})
    assert made == [str(tmp_path / "fresh")]  # reused, not regenerated
    assert [e.samples for e in again.datasets] == [e.samples for e in ds.datasets]


def test_lite_dataset_refuses_real_waterbirds(birds):
    message = one_line_error(lambda: subpop.WaterbirdsLite(os.path.dirname(birds), [2], {}))
    assert "is not Waterbirds-Lite data" in message and "Waterbirds for real data" in message


def test_generator_checks_existing_data_and_cli(lite, tmp_path, run_main):
    with pytest.raises(FileExistsError, match="scale: found 0.02, asked 0.5"):
        waterbirds_lite.generate(lite, size=SIZE, scale=0.5)
    ok = run_main(waterbirds_lite.main, "--out", str(tmp_path), "--size", "8", "--scale", "0.001")
    assert ok.returncode == 0 and ok.stdout.strip() == str(tmp_path / subpop.WATERBIRDS_FOLDER)
    bad = run_main(waterbirds_lite.main, "--out", str(tmp_path), "--size", "8", "--scale", "2")
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "scale in (0, 1]" in bad.stderr


def test_lite_hparams_are_the_lite_recipe():
    hp = hparams_registry.default_hparams("ERM", "WaterbirdsLite")
    assert hp["featurizer"] == "lite_cnn" and hp["pretrained_path"] == DEFAULT_PATH
    assert hp["lite_freeze_blocks"] == 3 and hp["data_augmentation"] is False
    assert (hp["lr"], hp["batch_size"]) == (1e-3, 32)
    drawn = hparams_registry.random_hparams("ERM", "WaterbirdsLite", 3)
    assert 10 ** -3.5 <= drawn["lr"] <= 10 ** -2.5 and drawn["lite_freeze_blocks"] == 3
    assert "lite_freeze_blocks" not in hparams_registry.default_hparams("ERM", "Waterbirds")


# --- training through the harness --------------------------------------------------------


def _train(run_main, tmp_path, dataset, data_dir, hparams):
    out = tmp_path / f"run_{dataset}"
    res = run_main(train.main, "--dataset", dataset, "--algorithm", "ERM", "--test_envs", "2",
                   "--holdout_fraction", "0", "--data_dir", data_dir, "--output_dir", str(out),
                   "--steps", "3", "--checkpoint_freq", "2", "--hparams", json.dumps(hparams))
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in open(out / "results.jsonl")]
    assert [r["step"] for r in records] == [0, 2] and (out / "done").exists()
    last = records[-1]
    assert last["validation_envs"] == [1]
    assert set(last["env1_in_group_acc"]) == {f"y={y},a={a}" for y, a in GROUPS}
    assert 0.0 <= last["env2_in_wga"] <= last["env2_in_acc"] <= 1.0
    return last


SMALL_RESNET = {"batch_size": 4, "resnet18": True, "pretrained": False}


def test_train_runs_on_waterbirds_and_celeba(tmp_path, run_main, monkeypatch):
    monkeypatch.setenv("DOMAINBED_NUM_WORKERS", "0")
    birds = make_waterbirds_tree(tmp_path / "wb")
    faces = make_celeba_tree(tmp_path / "cb")
    _train(run_main, tmp_path, "Waterbirds", os.path.dirname(birds), SMALL_RESNET)
    last = _train(run_main, tmp_path, "CelebA", os.path.dirname(faces), SMALL_RESNET)
    assert last["hparams"]["featurizer"] == "auto"  # -> resnet at 224


def test_train_runs_on_waterbirds_lite(lite, tmp_path, run_main):
    last = _train(run_main, tmp_path, "WaterbirdsLite", lite, {"batch_size": 4})
    assert last["hparams"]["lite_freeze_blocks"] == 3


def test_train_reports_bad_data_as_one_line(tmp_path, run_main, birds):
    _edit_metadata(birds, replace_line=(3, _row(y=7)))
    res = run_main(train.main, "--dataset", "Waterbirds", "--algorithm", "ERM", "--test_envs",
                   "2", "--holdout_fraction", "0", "--data_dir", birds,
                   "--output_dir", str(tmp_path / "bad"), "--steps", "1")
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "line 4: y is 7" in errors[0] and "Traceback" not in res.stderr
