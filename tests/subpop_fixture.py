"""Tiny offline stand-ins for Waterbirds and CelebA, in their real layouts.

`make_waterbirds_tree(root)` writes `<root>/waterbird_complete95_forest2water2/metadata.csv`
(img_id,img_filename,y,split,place,place_filename) and tiny JPEGs at CUB-style paths;
`make_celeba_tree(root)` writes `<root>/celeba/` with `img_align_celeba/000001.jpg ...`,
`list_attr_celeba.txt` (the count, the 40 real attribute names, rows of 1/-1 in the real
spacing) and `list_eval_partition.txt`. Each image is one uniform colour that encodes its
(y, a, split) (`colour`, `decode_colour`), written here independently of the code under test.
"""
import io
import os

from PIL import Image

WATERBIRDS_FOLDER = "waterbird_complete95_forest2water2"
# One CUB species folder per class (y 0 landbird, 1 waterbird), as in the real archive.
SPECIES = {0: ("014.Indigo_Bunting", "Indigo_Bunting"),
           1: ("001.Black_footed_Albatross", "Black_Footed_Albatross")}
PLACE_FILES = {0: "/b/bamboo_forest/00000001.jpg", 1: "/o/ocean/00002178.jpg"}

CELEBA_NAMES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
    "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
    "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
BLOND, MALE = CELEBA_NAMES.index("Blond_Hair"), CELEBA_NAMES.index("Male")

GROUPS = [(0, 0), (0, 1), (1, 0), (1, 1)]


def colour(y: int, a: int, split: int) -> tuple[int, int, int]:
    return (40 + 160 * y, 40 + 160 * a, 40 + 80 * split)


def decode_colour(rgb) -> tuple[int, int, int]:
    """(y, a, split) from an (r, g, b) in 0..255 (tolerates JPEG and resampling error)."""
    r, g, b = (float(v) for v in rgb)
    return round((r - 40) / 160), round((g - 40) / 160), round((b - 40) / 80)


def jpeg_bytes(rgb, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, tuple(rgb)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def waterbirds_rows(per_group: int = 2) -> list[tuple[int, str, int, int, int, str]]:
    """(img_id, img_filename, y, split, place, place_filename) in img_id order, splits mixed as
    in the real file (rows go species by species, not split by split)."""
    rows = []
    for y in (0, 1):
        folder, stem = SPECIES[y]
        for split in (0, 1, 2):
            for a in (0, 1):
                for n in range(per_group):
                    img_id = len(rows) + 1
                    name = f"{folder}/{stem}_{img_id:04d}_{split}{a}{n}.jpg"
                    rows.append((img_id, name, y, split, a, PLACE_FILES[a]))
    return rows


def write_waterbirds(folder: str, rows, header=None, images: bool = True) -> None:
    """`metadata.csv` from `rows` (tuples or already-joined strings) and, with `images`, each
    listed image."""
    os.makedirs(folder, exist_ok=True)
    header = header or "img_id,img_filename,y,split,place,place_filename"
    lines = [header] + [r if isinstance(r, str) else ",".join(map(str, r)) for r in rows]
    with open(os.path.join(folder, "metadata.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    if images:
        for row in rows:
            if isinstance(row, str):
                continue
            _, name, y, split, a, _ = row
            path = os.path.join(folder, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(jpeg_bytes(colour(y, a, split)))


def make_waterbirds_tree(root, per_group: int = 2) -> str:
    """Write the tree under `root`; return the `waterbird_complete95_forest2water2` folder."""
    folder = os.path.join(str(root), WATERBIRDS_FOLDER)
    write_waterbirds(folder, waterbirds_rows(per_group))
    return folder


def celeba_rows(per_group: int = 2) -> list[tuple[str, int, int, int]]:
    """(image name, blond 0/1, male 0/1, split) in file order."""
    rows = []
    for split in (0, 1, 2):
        for y, a in GROUPS:
            for _ in range(per_group):
                rows.append((f"{len(rows) + 1:06d}.jpg", y, a, split))
    return rows


def attribute_line(name: str, blond: int, male: int) -> str:
    """One row in the real spacing: the name, then each value right-aligned in 2 columns."""
    values = [-1] * len(CELEBA_NAMES)
    values[BLOND] = 1 if blond else -1
    values[MALE] = 1 if male else -1
    values[CELEBA_NAMES.index("Young")] = 1
    return name + " " + " ".join(f"{v:2d}" for v in values)


def write_celeba(folder: str, rows, attr_lines=None, partition_lines=None,
                 images: bool = True) -> None:
    os.makedirs(os.path.join(folder, "img_align_celeba"), exist_ok=True)
    if attr_lines is None:
        attr_lines = ([str(len(rows)), " ".join(CELEBA_NAMES) + " "]
                      + [attribute_line(n, y, a) for n, y, a, _ in rows])
    if partition_lines is None:
        partition_lines = [f"{n} {s}" for n, _, _, s in rows]
    with open(os.path.join(folder, "list_attr_celeba.txt"), "w") as f:
        f.write("\n".join(attr_lines) + "\n")
    with open(os.path.join(folder, "list_eval_partition.txt"), "w") as f:
        f.write("\n".join(partition_lines) + "\n")
    if images:
        for name, y, a, split in rows:
            with open(os.path.join(folder, "img_align_celeba", name), "wb") as f:
                f.write(jpeg_bytes(colour(y, a, split), size=(10, 12)))


def make_celeba_tree(root, per_group: int = 2) -> str:
    """Write `<root>/celeba/...`; return that `celeba` folder."""
    folder = os.path.join(str(root), "celeba")
    write_celeba(folder, celeba_rows(per_group))
    return folder
