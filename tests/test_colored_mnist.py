"""ColoredMNIST on generated MNIST idx files, the MNIST download, and ColoredDigitsLite.

The fixture writes torchvision's on-disk layout (`<root>/MNIST/raw/`, real idx headers:
magic numbers 2051 and 2049, big-endian sizes) with images that encode their own position
in the pooled train + test order, so a test can tell which image went where.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
import struct

import numpy as np
import pytest
import test_download_errors
import torch

from domainbed import datasets, hparams_registry
from domainbed.lib.misc import UserInputError
from domainbed.plugins import load_plugins
from domainbed.scripts import download, train
from ex2l_domainbed.datasets import colored_mnist, colour_digits

load_plugins()

NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FLIP = [0.1, 0.2, 0.9]  # the spec's colour-flip probability per environment


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.astype(np.uint8).tobytes()


def mnist_files(n_train: int, n_test: int, seed: int = 0) -> tuple[dict[str, bytes], np.ndarray,
                                                                    np.ndarray]:
    """{file name: idx bytes} of a tiny MNIST, and its pooled images and digits (train first).
    Pixels (0, 0) and (0, 1) of image k hold k // 256 and k % 256."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
    digits = rng.integers(0, 10, size=n).astype(np.uint8)
    files = {}
    for split, keys in (("train", slice(0, n_train)), ("test", slice(n_train, n))):
        files[NAMES[split][0]] = idx_bytes(images[keys], 2051)
        files[NAMES[split][1]] = idx_bytes(digits[keys], 2049)
    return files, images, digits.astype(np.int64)


def write_mnist(root, n_train: int = 30, n_test: int = 12, gz: bool = False) -> str:
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for name, data in mnist_files(n_train, n_test)[0].items():
        if gz:
            with open(os.path.join(raw, name + ".gz"), "wb") as f:
                f.write(gzip.compress(data, mtime=0))
        else:
            with open(os.path.join(raw, name), "wb") as f:
                f.write(data)
    return raw


def index_of(x: torch.Tensor, channel: int) -> int:
    """The pooled position encoded in an item's image."""
    pixels = (x[channel] * 255).round().long()
    return int(pixels[0, 0]) * 256 + int(pixels[0, 1])


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> str:
    """A 3,600-image MNIST (1,200 per environment): enough for the rate checks."""
    root = str(tmp_path_factory.mktemp("mnist"))
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw)
    for name, data in mnist_files(3000, 600)[0].items():
        with open(os.path.join(raw, name), "wb") as f:
            f.write(data)
    return root


@pytest.fixture(scope="module")
def cmnist(mnist_root):
    return datasets.get_dataset_class("ColoredMNIST")(mnist_root, [2], {})


# --- ColoredMNIST: the construction --------------------------------------------------------


def test_fixture_is_the_layout_torchvision_reads(mnist_root):
    from torchvision.datasets import MNIST

    images, digits = colored_mnist.read_mnist(mnist_root)
    train_set = MNIST(mnist_root, train=True, download=False)
    test_set = MNIST(mnist_root, train=False, download=False)
    assert np.array_equal(images, torch.cat([train_set.data, test_set.data]).numpy())
    assert np.array_equal(digits, torch.cat([train_set.targets, test_set.targets]).numpy())


def test_class_attributes():
    cls = datasets.get_dataset_class("ColoredMNIST")
    assert cls is colored_mnist.ColoredMNIST
    assert cls.ENVIRONMENTS == ["+90%", "+80%", "-90%"]
    assert cls.INPUT_SHAPE == (2, 28, 28) and cls.ATTRIBUTES == ["red", "green"]
    assert (cls.N_STEPS, cls.CHECKPOINT_FREQ, cls.FEATURIZER) == (5001, 100, "mnist_cnn")
    assert cls.NEEDS_DATA_DIR is True
    hp = hparams_registry.default_hparams("ERM", "ColoredMNIST")
    assert (hp["lr"], hp["batch_size"], hp["featurizer"]) == (1e-3, 64, "mnist_cnn")


def test_environments_deal_out_every_image_once(cmnist):
    _, images, digits = mnist_files(3000, 600)
    assert cmnist.input_shape == (2, 28, 28) and cmnist.num_classes == 2
    assert [len(env) for env in cmnist.datasets] == [1200, 1200, 1200]
    seen = []
    for env in cmnist.datasets:
        for i in range(0, len(env), 7):
            x, y, a = env[i]
            position = index_of(x, a)
            assert np.array_equal(env.images[i].numpy(), images[position])
            assert env.digits[i] == digits[position]
        positions = [int(p[0, 0]) * 256 + int(p[0, 1]) for p in env.images.numpy()]
        seen += positions
        assert positions != sorted(positions)  # shuffled
    assert sorted(seen) == list(range(3600))


def test_label_noise_and_colour_agreement_rates(cmnist):
    for env, flip in zip(cmnist.datasets, FLIP):
        y, a = np.array(env.labels), np.array(env.colours)
        assert abs((y != (env.digits < 5)).mean() - 0.25) < 0.05  # 4 sd at n = 1200
        assert abs((a == y).mean() - (1 - flip)) < 0.05


def test_items_put_the_digit_in_the_colour_channel(cmnist):
    env = cmnist.datasets[0]
    assert {a for _, _, a in env.samples} == {0, 1}
    for i in range(40):
        x, y, a = env[i]
        assert x.shape == (2, 28, 28) and x.dtype == torch.float32
        assert torch.equal(x[a], env.images[i].float() / 255)
        assert x[1 - a].abs().sum() == 0
        assert env.samples[i] == (i, y, a) and isinstance(y, int) and isinstance(a, int)


def test_construction_is_deterministic(mnist_root, cmnist):
    again = colored_mnist.ColoredMNIST(mnist_root, [0], {"data_augmentation": True})
    for a, b in zip(cmnist.datasets, again.datasets):
        assert a.samples == b.samples and torch.equal(a.images, b.images)
    # The seeds of the docstring, pinned: the same environments on every machine.
    assert colour_digits.deal(70000)[0][:6].tolist() == [19720, 23716, 36033, 66809, 2358, 53856]
    assert colour_digits.deal(70000)[2][:3].tolist() == [22544, 54260, 31648]
    labels, colours = colour_digits.colour(np.arange(12) % 10, 2)
    assert labels.tolist() == [0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 1]
    assert colours.tolist() == [1, 1, 1, 1, 0, 1, 0, 1, 1, 1, 0, 0]


@pytest.mark.parametrize("where", ["root", "MNIST", "raw", "gz"])
def test_data_dir_may_name_any_level_and_gz_files_are_read(tmp_path, where):
    raw = write_mnist(tmp_path, gz=where == "gz")
    data_dir = {"MNIST": os.path.dirname(raw), "raw": raw}.get(where, str(tmp_path))
    images, digits = colored_mnist.read_mnist(data_dir)
    _, want_images, want_digits = mnist_files(30, 12)
    assert np.array_equal(images, want_images) and np.array_equal(digits, want_digits)
    assert colored_mnist.resolve_raw(data_dir) == (raw, str(tmp_path))


# --- ColoredMNIST: bad input ----------------------------------------------------------------


def one_line_error(data_dir, *phrases) -> str:
    with pytest.raises(colored_mnist.ColoredMNISTDataError) as info:
        colored_mnist.ColoredMNIST(str(data_dir), [2], {})
    message = str(info.value)
    assert isinstance(info.value, UserInputError) and "\n" not in message
    for phrase in phrases:
        assert phrase in message, message
    return message


def command(root) -> str:
    return f"python -m domainbed.scripts.download --dataset mnist --data_dir {root}"


@pytest.mark.parametrize("make", ["nothing", "empty folder", "empty MNIST/raw"])
def test_missing_folder(tmp_path, make):
    root = tmp_path / "data"
    if make == "empty folder":
        root.mkdir()
    elif make == "empty MNIST/raw":
        (root / "MNIST" / "raw").mkdir(parents=True)
    expected = str(root / "MNIST" / "raw" / "train-images-idx3-ubyte")
    message = one_line_error(root, expected, command(root))
    if make != "empty MNIST/raw":
        assert message.startswith(f"MNIST not found at '{root}'")


def test_missing_file(tmp_path):
    raw = write_mnist(tmp_path)
    os.remove(os.path.join(raw, "t10k-labels-idx1-ubyte"))
    one_line_error(tmp_path, f"MNIST file {raw}/t10k-labels-idx1-ubyte is missing",
                   command(tmp_path))


def corrupt(raw, name, data):
    with open(os.path.join(raw, name), "wb") as f:
        f.write(data)


@pytest.mark.parametrize("name, data, why", [
    ("train-images-idx3-ubyte", b"\x00\x00", "shorter than its header"),
    ("train-images-idx3-ubyte", idx_bytes(np.zeros((30, 28, 28)), 2049), "magic number 2049"),
    ("train-images-idx3-ubyte", idx_bytes(np.zeros((30, 28, 28)), 2051)[:-5],
     "where its header announces 23520"),
    ("t10k-images-idx3-ubyte", idx_bytes(np.zeros((12, 14, 14)), 2051), "14x14 pixels"),
    ("t10k-labels-idx1-ubyte", idx_bytes(np.zeros(11), 2049), "11 labels for the 12 images"),
    ("train-labels-idx1-ubyte", idx_bytes(np.full(30, 12), 2049), "label 12, not a digit"),
])
def test_corrupt_file(tmp_path, name, data, why):
    raw = write_mnist(tmp_path)
    corrupt(raw, name, data)
    one_line_error(tmp_path, f"MNIST file {raw}/{name} is corrupt", why, command(tmp_path))


def test_corrupt_gz_file(tmp_path):
    raw = write_mnist(tmp_path, gz=True)
    corrupt(raw, "train-labels-idx1-ubyte.gz", b"\x1f\x8b\x08\x00garbage")
    one_line_error(tmp_path, f"{raw}/train-labels-idx1-ubyte.gz is corrupt", "gzip",
                   command(tmp_path))


def test_the_trainer_prints_the_error_on_one_line(tmp_path, run_main):
    result = run_main(train.main, "--dataset", "ColoredMNIST", "--algorithm", "ERM",
                      "--data_dir", tmp_path / "nowhere", "--test_envs", "2",
                      "--output_dir", tmp_path / "out")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and command(tmp_path / "nowhere") in lines[0], result.stderr
    assert "Traceback" not in result.stderr


# --- the download ---------------------------------------------------------------------------


server = test_download_errors.server  # the fixture: a local HTTP server with Range support


def mnist_url(server) -> str:
    """The base URL the tiny MNIST is served under."""
    return server.base + "/mnist/"


@pytest.fixture
def served(server):
    """The tiny MNIST's four .gz files on the server; (server, {name: md5}, {name: idx bytes})."""
    files = mnist_files(30, 12)[0]
    md5s = {}
    for name, data in files.items():
        gz = gzip.compress(data, mtime=0)
        server.files[f"/mnist/{name}.gz"] = gz
        md5s[name + ".gz"] = hashlib.md5(gz).hexdigest()
    return server, md5s, files


def test_torchvision_tables_are_the_defaults():
    from torchvision.datasets import MNIST

    mirror, md5s = download.mnist_sources()
    assert mirror == MNIST.mirrors[0] and md5s == dict(MNIST.resources)
    assert sorted(os.path.splitext(n)[0] for n in md5s) == sorted(sum(NAMES.values(), ()))


def test_download_then_load(tmp_path, served):
    server, md5s, files = served
    data_dir = tmp_path / "data"
    raw = download.download_mnist(str(data_dir), url=mnist_url(server), md5s=md5s)
    assert raw == str(data_dir / "MNIST" / "raw")
    assert sorted(os.listdir(raw)) == sorted(files)  # decompressed; no .gz, .part or temporary
    for name, data in files.items():
        assert (data_dir / "MNIST" / "raw" / name).read_bytes() == data
    assert len(colored_mnist.ColoredMNIST(str(data_dir), [2], {})[1]) == 14
    server.ranges.clear()
    download.download_mnist(str(data_dir), url=mnist_url(server), md5s=md5s)  # all there already
    assert server.ranges == []


def test_download_resumes_a_partial_file(tmp_path, served):
    server, md5s, files = served
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gz = server.files["/mnist/train-images-idx3-ubyte.gz"]
    (raw / "train-images-idx3-ubyte.gz.part").write_bytes(gz[:len(gz) // 2])
    download.download_mnist(str(tmp_path), url=mnist_url(server), md5s=md5s, keep_archive=True)
    assert ("/mnist/train-images-idx3-ubyte.gz", f"bytes={len(gz) // 2}-") in server.ranges
    assert (raw / "train-images-idx3-ubyte.gz").read_bytes() == gz  # kept: --keep_archive
    assert (raw / "train-images-idx3-ubyte").read_bytes() == files["train-images-idx3-ubyte"]


def run_download(run_main, data_dir, *args):
    result = run_main(download.main, "--dataset", "mnist", "--data_dir", data_dir, *args)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return result, lines


def test_md5_mismatch_is_an_error_and_the_download_is_deleted(tmp_path, served, run_main):
    """Through the command line, so torchvision's md5 table applies (the tiny files differ)."""
    server, md5s, _ = served
    result, lines = run_download(run_main, tmp_path, "--url", mnist_url(server))
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    url = mnist_url(server) + "train-images-idx3-ubyte.gz"
    want = dict(download.mnist_sources()[1])["train-images-idx3-ubyte.gz"]
    for phrase in (f"refused the file downloaded from {url}",
                   f"its md5 is {md5s['train-images-idx3-ubyte.gz']}, not {want}",
                   "The download was deleted",
                   "give --url another mirror: a folder holding MNIST's four .gz files"):
        assert phrase in lines[0], lines[0]
    assert os.listdir(tmp_path / "MNIST" / "raw") == []


def test_a_gz_put_by_hand_that_does_not_match_is_kept(tmp_path, served):
    server, md5s, _ = served
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"not mnist")
    with pytest.raises(download.DownloadError, match="delete it and rerun") as info:
        download.download_mnist(str(tmp_path), url=mnist_url(server), md5s=md5s)
    assert f"refused {raw / 'train-images-idx3-ubyte.gz'}: its md5 is" in str(info.value)
    assert (raw / "train-images-idx3-ubyte.gz").read_bytes() == b"not mnist"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["malformed", "unreachable", "404"])
def test_bad_url_is_one_line(tmp_path, server, run_main, kind):
    url = {"malformed": "notaurl", "unreachable": f"http://127.0.0.1:{free_port()}/mnist/",
           "404": mnist_url(server) + "nothing/"}[kind]
    phrase = {"malformed": "--url 'notaurl' is not a valid download URL",
              "unreachable": "could not reach", "404": "HTTP 404"}[kind]
    result, lines = run_download(run_main, tmp_path / "data", "--url", url)
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert phrase in lines[0], lines[0]
    if kind == "malformed":
        assert "a folder holding MNIST's four .gz files, e.g. --url" in lines[0]
        assert not (tmp_path / "data").exists()  # refused before anything was written


# --- ColoredDigitsLite ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite():
    return datasets.get_dataset_class("ColoredDigitsLite")(None, [2], {})


def test_stand_in_shares_the_spec():
    lite_cls = datasets.get_dataset_class("ColoredDigitsLite")
    real = colored_mnist.ColoredMNIST
    for attr in ("ENVIRONMENTS", "ATTRIBUTES", "FEATURIZER"):
        assert getattr(lite_cls, attr) == getattr(real, attr)
    assert lite_cls.INPUT_SHAPE == (2, 14, 14)  # 8x8 digits upsampled: half MNIST's side
    assert lite_cls.NEEDS_DATA_DIR is False and lite_cls.CHECKPOINT_FREQ == 100
    hp = hparams_registry.default_hparams("ERM", "ColoredDigitsLite")
    assert (hp["lr"], hp["batch_size"], hp["weight_decay"]) == (1e-3, 64, 0.0)


# Labels, colours and digit classes of every environment (numpy's frozen RandomState streams
# and scikit-learn's shipped digits): the same on every machine.
PINNED_LITE = "6c9318cd1a6e758c"


def test_stand_in_is_quick_and_deterministic(lite):
    import time

    import sklearn.datasets  # noqa: F401  (imported before the clock starts)

    start = time.perf_counter()
    again = colour_digits.ColoredDigitsLite("/ignored", [0], {})
    assert time.perf_counter() - start < 1.0
    digest = hashlib.sha256()
    for a, b in zip(lite.datasets, again.datasets):
        assert a.samples == b.samples and torch.equal(a.images, b.images)
        digest.update(json.dumps([a.labels, a.colours, a.digits.tolist()]).encode())
    assert digest.hexdigest()[:16] == PINNED_LITE


def test_stand_in_environments(lite):
    from sklearn.datasets import load_digits

    digits = load_digits()
    assert [len(env) for env in lite.datasets] == [2396] * 3
    counts = np.bincount(np.concatenate([env.digits for env in lite.datasets]), minlength=10)
    assert np.array_equal(counts, 4 * np.bincount(digits.target, minlength=10))
    for env, flip in zip(lite.datasets, FLIP):
        y, a = np.array(env.labels), np.array(env.colours)
        assert abs((y != (env.digits < 5)).mean() - 0.25) < 0.04
        assert abs((a == y).mean() - (1 - flip)) < 0.04
        assert env.samples[:3] == [(i, env.labels[i], env.colours[i]) for i in range(3)]


def test_stand_in_images_are_shifted_digits(lite):
    base, targets = colour_digits.sklearn_digits()
    assert base.shape == (1797, 14, 14) and base.dtype == np.uint8 and base.max() == 255
    assert base[:, :2].max() == 0 and base[:, :, -2:].max() == 0  # a border to shift into
    env = lite.datasets[0]
    images = env.images.numpy()
    for i in range(0, 40, 4):  # four adjacent copies of one digit
        copies = images[i:i + 4]
        assert len({c.tobytes() for c in copies}) > 1
        same_ink = np.nonzero(base.reshape(len(base), -1).sum(1) == copies[0].sum())[0]
        matches = [k for k in same_ink
                   if any(np.array_equal(np.roll(base[k], (dy, dx), (0, 1)), copies[0])
                          for dy in range(-1, 2) for dx in range(-1, 2))]
        assert matches and all(targets[k] == env.digits[i] for k in matches)
        for c in copies:
            assert c.sum() == copies[0].sum()  # moved, nothing cut off
    x, y, a = env[0]
    assert x.shape == (2, 14, 14) and lite.input_shape == (2, 14, 14)
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert x[1 - a].abs().sum() == 0


# --- training on both -----------------------------------------------------------------------


def test_train_runs_on_colored_mnist(tmp_path, run_main):
    write_mnist(tmp_path / "data", n_train=60, n_test=30)
    out = tmp_path / "out"
    result = run_main(train.main, "--dataset", "ColoredMNIST", "--algorithm", "ERM",
                      "--data_dir", tmp_path / "data", "--test_envs", "2", "--steps", "3",
                      "--hparams", '{"batch_size": 8}', "--output_dir", out)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and "env2_in_wga" in records[-1]
    assert set(records[-1]["env0_in_group_acc"]) <= {"y=0,a=0", "y=0,a=1", "y=1,a=0", "y=1,a=1"}
    assert (out / "done").exists()


def test_train_runs_on_the_stand_in_group_balanced(tmp_path, run_main, monkeypatch):
    """The benchmark's oracle; on 300 digits and one copy each, so evaluation stays quick."""
    real = colour_digits.sklearn_digits
    monkeypatch.setattr(colour_digits, "sklearn_digits", lambda: tuple(v[:300] for v in real()))
    monkeypatch.setattr(colour_digits, "COPIES", 1)
    out = tmp_path / "out"
    result = run_main(train.main, "--dataset", "ColoredDigitsLite", "--algorithm", "ERM",
                      "--test_envs", "2", "--steps", "3", "--output_dir", out,
                      "--hparams", '{"batch_size": 8, "group_balanced": true}')
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and records[-1]["hparams"]["group_balanced"] is True
    assert {"env0_in_wga", "env2_out_wga"} <= set(records[-1])
