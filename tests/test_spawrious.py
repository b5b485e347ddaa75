"""Tests for ex2l_domainbed.datasets.spawrious on a generated miniature of the real tree."""
import collections
import dataclasses
import itertools
import os
import shutil

import pytest
import torch
from spawrious_fixture import (
    FIXTURE_CLASSES,
    FIXTURE_LOCATIONS,
    colour,
    decode_colour,
    make_spawrious_tree,
    png_bytes,
)

from domainbed.lib.misc import UserInputError
from ex2l_domainbed.datasets import spawrious as sp

torch.set_num_threads(1)

T = 20            # base count in tests: O2O 19 + 1 (env 1), 17 + 3 (env 2); M2M 20
PER_CELL = 22     # files per fixture cell: more than T, so "limit" and "all" differ
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
NO_AUG = {"data_augmentation": False}

# The challenges again, written from the reference's per-class tables (spawrious.md 2.2, 2.3),
# independently of sp.CHALLENGES.
# O2O: class -> (spurious location, test location); plus the filler location.
O2O = {
    "SpawriousO2O_easy": ("beach", {"bulldog": ("desert", "dirt"), "dachshund": ("jungle", "snow"),
                                    "labrador": ("dirt", "desert"), "corgi": ("snow", "jungle")}),
    "SpawriousO2O_medium": ("desert", {"bulldog": ("mountain", "jungle"),
                                       "dachshund": ("beach", "dirt"),
                                       "labrador": ("dirt", "beach"), "corgi": ("jungle", "snow")}),
    "SpawriousO2O_hard": ("beach", {"bulldog": ("jungle", "mountain"),
                                    "dachshund": ("mountain", "snow"),
                                    "labrador": ("snow", "desert"), "corgi": ("desert", "jungle")}),
}
# M2M: class -> (env 1 location, env 2 location, test locations).
M2M = {
    "SpawriousM2M_easy": {"bulldog": ("desert", "mountain", ("dirt", "jungle")),
                          "dachshund": ("mountain", "desert", ("jungle", "dirt")),
                          "labrador": ("dirt", "jungle", ("mountain", "desert")),
                          "corgi": ("jungle", "dirt", ("desert", "mountain"))},
    "SpawriousM2M_medium": {"bulldog": ("beach", "snow", ("desert", "mountain")),
                            "dachshund": ("snow", "beach", ("mountain", "desert")),
                            "labrador": ("mountain", "desert", ("beach", "snow")),
                            "corgi": ("desert", "mountain", ("snow", "beach"))},
    "SpawriousM2M_hard": {"bulldog": ("dirt", "jungle", ("snow", "beach")),
                          "dachshund": ("jungle", "dirt", ("beach", "snow")),
                          "labrador": ("snow", "beach", ("dirt", "jungle")),
                          "corgi": ("beach", "snow", ("jungle", "dirt"))},
}
ROW_ORDER = ["bulldog", "dachshund", "labrador", "corgi"]
ALL_NAMES = list(O2O) + list(M2M)


def expected_envs(name):
    """Per env: the ordered blocks [((class, location), {pool: count})] in row order."""
    if name in O2O:
        filler, table = O2O[name]
        envs = [[((c, table[c][1]), {"0": PER_CELL, "1": PER_CELL}) for c in ROW_ORDER]]
        for pool, spurious in (("0", 19), ("1", 17)):
            blocks = [((c, table[c][0]), {pool: spurious}) for c in ROW_ORDER]
            blocks += [((c, filler), {pool: T - spurious}) for c in ROW_ORDER]
            envs.append(blocks)
        return envs
    table = M2M[name]
    test = [((c, loc), {"0": PER_CELL}) for c in ROW_ORDER for loc in table[c][2]]
    return [test] + [[((c, table[c][k]), {"0": T}) for c in ROW_ORDER] for k in (0, 1)]


def small(cls, base_count=T, image_size=8, **extra):
    """A test-only subclass with a small base count and image size."""
    attrs = {"BASE_COUNT": base_count, "IMAGE_SIZE": image_size, **extra}
    return type(cls.__name__, (cls,), attrs)


def decode_item(x):
    rgb = (x * STD + MEAN).mean(dim=(1, 2)) * 255
    return decode_colour(rgb.tolist())


def path_parts(path):
    """(pool, location, class, n) from <root>/<pool>/<location>/<class>/<location>_<class>_<n>.png."""
    folder, name = os.path.split(path)
    folder, cls = os.path.split(folder)
    folder, location = os.path.split(folder)
    pool = os.path.basename(folder)
    assert name.startswith(f"{location}_{cls}_") and name.endswith(".png")
    return pool, location, cls, int(name[len(f"{location}_{cls}_"):-4])


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("spawrious_data")
    top = make_spawrious_tree(root, per_cell=PER_CELL)
    return str(root), top


@pytest.fixture(scope="module")
def built(tree):
    """Every challenge built once (T = 20, 8x8 images, no augmentation)."""
    root, _ = tree
    return {name: small(cls)(root, [0], NO_AUG) for name, cls in sp.SPAWRIOUS_DATASETS.items()}


def test_six_datasets_in_order():
    assert list(sp.SPAWRIOUS_DATASETS) == ALL_NAMES
    assert [cls.__name__ for cls in sp.SPAWRIOUS_DATASETS.values()] == ALL_NAMES
    for cls in sp.SPAWRIOUS_DATASETS.values():
        assert issubclass(cls, sp.SpawriousBenchmark)
        assert cls.BASE_COUNT == 3168 and cls.IMAGE_SIZE == 224


@pytest.mark.parametrize("name", ALL_NAMES)
def test_environments_match_the_reference_tables(built, name):
    dataset = built[name]
    expected = expected_envs(name)
    assert len(dataset) == 3
    for env_i, (env, blocks) in enumerate(zip(dataset.datasets, expected)):
        rows = [(path_parts(p), y, a) for p, y, a in env.samples]
        # Row order: class blocks in ROW_ORDER (then the O2O filler block).
        runs = [k for k, _ in itertools.groupby((parts[2], parts[1]) for parts, _, _ in rows)]
        assert runs == [cl for cl, _ in blocks], (name, env_i)
        # Counts per (class, location, pool).
        got = collections.Counter((c, loc, pool) for (pool, loc, c, _), _, _ in rows)
        want = collections.Counter({(c, loc, pool): n
                                    for (c, loc), pools in blocks for pool, n in pools.items()})
        assert got == want, (name, env_i)
        assert len(env) == sum(want.values())
        # Labels, attributes and pool from the pixels agree with y, a and the path.
        for i in range(len(env)):
            x, y, a = env[i]
            assert type(y) is int and type(a) is int
            pool, loc, c, _ = rows[i][0]
            assert decode_item(x) == (y, a, pool)
            assert (y, a) == (FIXTURE_CLASSES.index(c), FIXTURE_LOCATIONS.index(loc))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_groups_and_pools(built, name):
    dataset = built[name]
    groups = [collections.Counter((y, a) for _, y, a in env.samples) for env in dataset.datasets]
    is_o2o = name in O2O
    assert len(groups[0]) == (4 if is_o2o else 8)
    assert all(n == (2 * PER_CELL if is_o2o else PER_CELL) for n in groups[0].values())
    assert len(groups[1]) == len(groups[2]) == (8 if is_o2o else 4)
    # Every test group is a (class, location) pair never seen in training.
    assert not (set(groups[1]) | set(groups[2])) & set(groups[0])
    pools = [{decode_item(env[i][0])[2] for i in range(len(env))} for env in dataset.datasets]
    if is_o2o:
        assert pools == [{"0", "1"}, {"0"}, {"1"}]
        assert set(groups[1]) == set(groups[2])
    else:
        assert pools == [{"0"}, {"0"}, {"0"}]
        # The two classes of a class group swap backgrounds: no group is shared, locations are.
        assert not set(groups[1]) & set(groups[2])
        assert {a for _, a in groups[1]} == {a for _, a in groups[2]}


def test_arithmetic_at_full_size():
    for name in ("o2o_easy", "o2o_medium", "o2o_hard"):
        test, env1, env2 = sp.challenge_cells(name, 3168)
        assert [c.limit for c in env1] == [3072] * 4 + [96] * 4
        assert [c.limit for c in env2] == [2756] * 4 + [412] * 4
        assert {c.pool for c in env1} == {"0"} and {c.pool for c in env2} == {"1"}
        assert sum(c.limit for c in env1) == sum(c.limit for c in env2) == 12672
        assert len(test) == 8 and all(c.limit is None for c in test)
        assert [c.pool for c in test] == ["0", "1"] * 4
    for name in ("m2m_easy", "m2m_medium", "m2m_hard"):
        test, env1, env2 = sp.challenge_cells(name, 3168)
        assert [c.limit for c in env1 + env2] == [3168] * 8
        assert sum(c.limit for c in env1) == 12672
        assert len(test) == 8 and all(c.limit is None and c.pool == "0" for c in test)
    assert sp.challenge_cells("o2o_easy", T)[1][0].limit == 19
    assert sp.challenge_cells("o2o_easy", T)[2][-1].limit == 3
    for base in range(1, 5000):
        assert sp.o2o_counts(base) == [int(0.97 * base), int(0.87 * base)]


def test_cells_are_typed_and_frozen():
    cell = sp.challenge_cells("m2m_hard", 3168)[1][0]
    assert cell == sp.Cell("0", "dirt", "bulldog", 3168)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cell.limit = 1
    assert sp.CHALLENGES["o2o_easy"] == sp.Challenge(
        "o2o", ("desert", "jungle", "dirt", "snow"), ("dirt", "snow", "desert", "jungle"), "beach")
    with pytest.raises(ValueError, match="o2o_easy"):
        sp.challenge_cells("o2o_eazy", T)


def test_first_files_in_natural_order(built, tree):
    root, _ = tree
    env1 = built["SpawriousO2O_easy"].datasets[1]
    bulldogs = [path_parts(p)[3] for p, y, a in env1.samples
                if (y, a) == (FIXTURE_CLASSES.index("bulldog"), FIXTURE_LOCATIONS.index("desert"))]
    assert bulldogs == list(range(19))  # lexicographic order would have taken _19, _2, _20, ...
    again = small(sp.SpawriousO2O_easy)(root, [0], NO_AUG)
    assert [e.samples for e in again.datasets] == [e.samples for e in built["SpawriousO2O_easy"]]


def test_list_images_filters_and_sorts(tmp_path):
    names = ["a_10.png", "a_2.png", "a_1.jpg", "b.jpeg", "a_3.PNG", "a_4.Jpg", ".DS_Store",
             "notes.txt", "a_02.png"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert sp.list_images(str(tmp_path)) == ["a_1.jpg", "a_02.png", "a_2.png", "a_10.png", "b.jpeg"]


def test_root_conventions_give_the_same_samples(built, tree):
    root, top = tree
    reference = [e.samples for e in built["SpawriousM2M_hard"].datasets]
    for data_dir in (root, root + "/", top, top + "/", top + "//"):
        assert sp.resolve_root(data_dir) == top
        dataset = small(sp.SpawriousM2M_hard)(data_dir, [0], NO_AUG)
        assert [e.samples for e in dataset.datasets] == reference


def test_contract_attributes(built, tree):
    dataset = built["SpawriousO2O_hard"]
    assert dataset.ENVIRONMENTS == ["Test", "SC_group_1", "SC_group_2"]
    assert dataset.ATTRIBUTES == ["desert", "jungle", "dirt", "mountain", "snow", "beach"]
    assert dataset.CLASSES == ["bulldog", "corgi", "dachshund", "labrador"]
    assert dataset.num_classes == 4
    assert dataset.input_shape == (3, 8, 8)
    assert dataset[0] is dataset.datasets[0]
    from domainbed import datasets as db
    assert db.has_attributes(dataset)
    # Default image size: 224.
    root, _ = tree
    dataset = type("O2OHardT20", (sp.SpawriousO2O_hard,), {"BASE_COUNT": T})(root, [0], NO_AUG)
    assert dataset.input_shape == (3, 224, 224)
    assert tuple(dataset[1][0][0].shape) == (3, 224, 224)


def test_transforms(tree):
    from torchvision import transforms as tv
    root, _ = tree
    train_types = [tv.Resize, tv.RandomHorizontalFlip, tv.ColorJitter, tv.RandomGrayscale,
                   tv.ToTensor, tv.Normalize]
    eval_types = [tv.Resize, tv.ToTensor, tv.Normalize]
    for augment in (True, False):
        dataset = small(sp.SpawriousM2M_easy, image_size=16)(
            root, [0], {"data_augmentation": augment})
        assert dataset.input_shape == (3, 16, 16)
        for i, env in enumerate(dataset.datasets):
            types = [type(t) for t in env.transform.transforms]
            assert types == (train_types if augment and i > 0 else eval_types)
            assert env.transform.transforms[0].size in ((16, 16), [16, 16])
            x, y, a = env[0]
            assert x.dtype == torch.float32 and tuple(x.shape) == (3, 16, 16)
        jitter = dataset.datasets[1].transform.transforms[2] if augment else None
        if jitter is not None:
            assert jitter.brightness == jitter.contrast == jitter.saturation == (0.7, 1.3)
            assert jitter.hue == (-0.3, 0.3)


def test_subclass_may_set_sizes_in_prepare_root(tree):
    root, top = tree

    class Generated(sp.SpawriousM2M_medium):
        DATASET_LABEL = "Generated-M2M"

        def prepare_root(self, data_dir):
            resolved = super().prepare_root(data_dir)
            self.base_count, self.image_size = 5, 12  # e.g. read from a metadata file
            return resolved

    dataset = Generated(root, [0], NO_AUG)
    assert dataset.root == top
    assert dataset.input_shape == (3, 12, 12)
    assert [len(e) for e in dataset.datasets] == [8 * PER_CELL, 4 * 5, 4 * 5]
    assert tuple(dataset[2][0][0].shape) == (3, 12, 12)


# --------------------------------------------------------------------------------------------
# Bad data: small trees (5 files per cell, T = 4: O2O 3 + 1, M2M 4).

@pytest.fixture
def small_tree(tmp_path):
    top = make_spawrious_tree(tmp_path, per_cell=5, extras=False)
    return str(tmp_path), top


def build_error(cls, data_dir, base_count=4):
    with pytest.raises(sp.SpawriousDataError) as info:
        small(cls, base_count)(data_dir, [0], NO_AUG)
    return str(info.value)


def test_error_class():
    err = sp.SpawriousDataError("one message")
    assert isinstance(err, UserInputError) and str(err) == "one message"


def test_missing_root(tmp_path):
    for data_dir in (tmp_path / "nowhere", tmp_path):
        message = build_error(sp.SpawriousO2O_easy, str(data_dir))
        assert str(data_dir) in message
        assert os.path.join("spawrious224", "0", "<location>", "<class>", "*.png") in message
        assert "python -m domainbed.scripts.download --dataset spawrious --data_dir" in message


def test_missing_cell(small_tree):
    root, top = small_tree
    folder = os.path.join(top, "1", "beach", "corgi")  # an O2O-Easy filler cell of env 2
    shutil.rmtree(folder)
    message = build_error(sp.SpawriousO2O_easy, root)
    assert folder in message and "missing" in message
    assert "python -m domainbed.scripts.download --dataset spawrious --data_dir" in message
    small(sp.SpawriousM2M_easy, 4)(root, [0], NO_AUG)  # M2M-Easy needs neither pool 1 nor beach


def test_cell_with_too_few_images(small_tree):
    root, top = small_tree
    folder = os.path.join(top, "0", "desert", "bulldog")  # O2O-Easy: bulldog spurious, env 1
    for n in (2, 3, 4):
        os.remove(os.path.join(folder, f"desert_bulldog_{n}.png"))
    small(sp.SpawriousO2O_easy, 3)(root, [0], NO_AUG)  # needs int(0.97 * 3) = 2: fine
    message = build_error(sp.SpawriousO2O_easy, root)  # needs 3
    assert f"{folder} has 2 images, SpawriousO2O_easy needs 3" in message
    assert "download" in message


def test_corrupt_png(small_tree):
    root, top = small_tree
    bad = os.path.join(top, "1", "snow", "dachshund", "snow_dachshund_4.png")  # O2O-Easy test cell
    with open(bad, "wb") as f:
        f.write(b"\x89PNG garbage garbage garbage")
    message = build_error(sp.SpawriousO2O_easy, root)
    assert bad in message and "corrupt" in message and "download" in message.lower()
    small(sp.SpawriousM2M_easy, 4)(root, [0], NO_AUG)  # does not read that file


def test_truncated_png_fails_when_decoded(small_tree):
    root, top = small_tree
    bad = os.path.join(top, "0", "dirt", "bulldog", "dirt_bulldog_0.png")
    data = png_bytes(colour(0, 2, "0"), size=64)
    with open(bad, "wb") as f:
        f.write(data[:len(data) // 2])  # a valid header, then cut off
    dataset = small(sp.SpawriousM2M_hard, 4)(root, [0], NO_AUG)  # bulldog on dirt, env 1
    env = dataset.datasets[1]
    index = [p for p, _, _ in env.samples].index(bad)
    with pytest.raises(sp.SpawriousDataError, match="corrupt") as info:
        env[index]
    assert bad in str(info.value)
    # Through a DataLoader worker the same exception type comes back.
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(env, [index]), num_workers=1)
    with pytest.raises(sp.SpawriousDataError) as info:
        next(iter(loader))
    assert bad in str(info.value)


def test_grayscale_image(small_tree):
    root, top = small_tree
    bad = os.path.join(top, "0", "jungle", "corgi", "jungle_corgi_1.png")  # O2O-Easy test cell
    with open(bad, "wb") as f:
        f.write(png_bytes((128, 128, 128), mode="L"))
    message = build_error(sp.SpawriousO2O_easy, root)
    assert bad in message and "'L'" in message and "RGB" in message
