"""A tiny offline stand-in for the Spawrious data, in the real directory layout.

`make_spawrious_tree(root)` writes `<root>/spawrious224/{0,1}/<location>/<class>/<location>_<class>_<n>.png`
for all 6 x 4 cells of each pool: small uniform RGB PNGs whose colour encodes (class id, location id,
pool), decoded by `decode_colour`. Ids follow the dataset's conventions (classes alphabetical,
locations desert, jungle, dirt, mountain, snow, beach), written here independently of the code under
test.
"""
import io
import os

from PIL import Image

FIXTURE_CLASSES = ["bulldog", "corgi", "dachshund", "labrador"]
FIXTURE_LOCATIONS = ["desert", "jungle", "dirt", "mountain", "snow", "beach"]

_R0, _RSTEP = 30, 60     # red   = 30 + 60 * class id
_G0, _GSTEP = 20, 40     # green = 20 + 40 * location id
_BLUE = {"0": 40, "1": 200, "domain_adaptation_ds": 120}


def colour(class_id: int, location_id: int, pool: str) -> tuple[int, int, int]:
    return (_R0 + _RSTEP * class_id, _G0 + _GSTEP * location_id, _BLUE[pool])


def decode_colour(rgb) -> tuple[int, int, str]:
    """(class id, location id, pool) from an (r, g, b) in 0..255 (tolerates small resampling error)."""
    r, g, b = (float(v) for v in rgb)
    pool = min(_BLUE, key=lambda p: abs(_BLUE[p] - b))
    return round((r - _R0) / _RSTEP), round((g - _G0) / _GSTEP), pool


def png_bytes(rgb, size: int = 8, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    image = Image.new("RGB", (size, size), tuple(rgb))
    if mode != "RGB":
        image = image.convert(mode)
    image.save(buf, format="PNG")
    return buf.getvalue()


def make_spawrious_tree(root, per_cell: int = 22, size: int = 8, pools=("0", "1"),
                        extras: bool = True) -> str:
    """Write the tree under `root` and return the path of its `spawrious224` folder.

    With `extras`, each cell folder also gets junk that a loader must ignore: `.DS_Store`,
    `notes.txt` and an upper-case `<location>_<class>_0.PNG` holding garbage bytes (so that a loader
    which wrongly picked it up would also fail on it).
    """
    top = os.path.join(str(root), "spawrious224")
    for pool in pools:
        for a, location in enumerate(FIXTURE_LOCATIONS):
            for y, cls in enumerate(FIXTURE_CLASSES):
                folder = os.path.join(top, pool, location, cls)
                os.makedirs(folder, exist_ok=True)
                data = png_bytes(colour(y, a, pool), size)
                # Written in reverse so that creation order is not the natural order.
                for n in reversed(range(per_cell)):
                    with open(os.path.join(folder, f"{location}_{cls}_{n}.png"), "wb") as f:
                        f.write(data)
                if extras:
                    for junk, content in ((".DS_Store", b"\x00\x00\x00\x01Bud1"),
                                          ("notes.txt", b"not an image\n"),
                                          (f"{location}_{cls}_0.PNG", b"garbage, not a png")):
                        with open(os.path.join(folder, junk), "wb") as f:
                            f.write(content)
        if extras:
            with open(os.path.join(top, pool, ".DS_Store"), "wb") as f:
                f.write(b"\x00\x00\x00\x01Bud1")
    return top
