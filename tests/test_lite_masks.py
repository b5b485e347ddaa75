"""Foreground masks regenerated from a Lite image's path match the image on disk."""
import os

import numpy as np
import pytest
from PIL import Image

from ex2l_domainbed.datasets import lite_masks, spawrious_lite


@pytest.fixture(scope="module")
def tiny_lite(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("lite"))
    spawrious_lite.generate(out, size=32, per_cell=2, progress=False)
    return out


def test_regenerated_image_is_the_file_and_the_mask_covers_the_shape(tiny_lite):
    path = os.path.join(tiny_lite, "spawrious224", "1", "beach", "corgi", "beach_corgi_1.png")
    image, alpha = lite_masks.regenerate(path)
    assert np.array_equal(image, np.asarray(Image.open(path).convert("RGB")))
    assert alpha.shape == (32, 32) and 0 <= alpha.min() and alpha.max() <= 1
    assert 0.03 < (alpha > 0.5).mean() < 0.6  # a silhouette, not the whole image


def test_masks_differ_between_images_and_side_file_round_trips(tiny_lite):
    a = lite_masks.foreground_mask(
        os.path.join(tiny_lite, "spawrious224", "0", "snow", "bulldog", "snow_bulldog_0.png"))
    b = lite_masks.foreground_mask(
        os.path.join(tiny_lite, "spawrious224", "0", "snow", "bulldog", "snow_bulldog_1.png"))
    assert not np.array_equal(a, b)
    out = lite_masks.write_masks(tiny_lite)
    assert os.path.basename(out) == lite_masks.MASKS_FILE
    assert not os.path.exists(os.path.join(tiny_lite, "spawrious224", lite_masks.MASKS_FILE))
    saved = np.load(out)
    assert len(saved.files) == 2 * 6 * 4 * 2
    assert np.array_equal(saved[os.path.join("0", "snow", "bulldog", "snow_bulldog_0.png")],
                          np.round(a * 255).astype(np.uint8))


def test_not_a_lite_path_is_a_clear_error(tmp_path, run_main):
    with pytest.raises(lite_masks.NotALiteImage, match="not a Spawrious-Lite image path"):
        lite_masks.foreground_mask(str(tmp_path / "x.png"))
    res = run_main(lite_masks.main, "--data_dir", str(tmp_path))
    assert res.returncode == 2 and "error:" in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.startswith("error:") and res.stdout == ""
    assert not os.path.exists(os.path.join(tmp_path, lite_masks.MASKS_FILE))


def test_python_m_exit_status(tmp_path, run_module):
    """`python -m` as a whole: main's status 2 is the process's exit status."""
    res = run_module("ex2l_domainbed.datasets.lite_masks", "--data_dir", str(tmp_path))
    assert res.returncode == 2 and res.stderr.startswith("error:")
    assert "Traceback" not in res.stderr
