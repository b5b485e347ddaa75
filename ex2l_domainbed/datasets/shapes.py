"""Procedural silhouettes and composition for the generated datasets.

Shapes are defined in unit coordinates (bounding radius about 1) and rasterised with
2x2 supersampling into an anti-aliased alpha mask. Each image draws every random choice
from its own `numpy.random.Generator`, so generation is deterministic and independent of
the order in which images are made.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (u, v) unit coords -> bool


def _regular_polygon(n: int, phase: float = np.pi / 2) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _inside_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over points."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(vertices)
    for i in range(n):
        (x0, y0), (x1, y1) = vertices[i], vertices[(i + 1) % n]
        crosses = (y0 > v) != (y1 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (u < x_at)
    return inside


def _polygon(vertices) -> Mask:
    verts = np.asarray(vertices, dtype=np.float64)
    return lambda u, v: _inside_polygon(u, v, verts)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer = _regular_polygon(2 * points)
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return outer * radii[:, None]


# The four Spawrious-Lite classes, one per Spawrious class (label ids follow CLASSES).
LITE_SHAPES: dict[str, Mask] = {
    # bulldog: a plus/cross with arm half-width 0.3
    "bulldog": lambda u, v: ((np.abs(u) <= 1) & (np.abs(v) <= 0.3))
    | ((np.abs(v) <= 1) & (np.abs(u) <= 0.3)),
    # corgi: an L-shape with arm width 0.6 in the square [-1, 1]^2
    "corgi": lambda u, v: (
        ((u >= -1) & (u <= -0.4) & (np.abs(v) <= 1))
        | ((np.abs(u) <= 1) & (v >= -1) & (v <= -0.4))
    ),
    # dachshund: a ring with inner radius 0.55
    "dachshund": lambda u, v: (u * u + v * v <= 1) & (u * u + v * v >= 0.55**2),
    # labrador: an equilateral triangle
    "labrador": _polygon(_regular_polygon(3)),
}

# Twelve other shapes for pretraining the Lite backbone on a disjoint task.
PRETRAIN_SHAPES: dict[str, Mask] = {
    "star": _polygon(_star()),
    "square": _polygon(_regular_polygon(4, np.pi / 4)),
    "hexagon": _polygon(_regular_polygon(6)),
    "crescent": lambda u, v: (u * u + v * v <= 1) & ((u - 0.45) ** 2 + v * v > 0.75**2),
    "arrow": _polygon([(-1, -0.25), (0.2, -0.25), (0.2, -0.6), (1, 0), (0.2, 0.6),
                       (0.2, 0.25), (-1, 0.25)]),
    "pentagon": _polygon(_regular_polygon(5)),
    "rhombus": _polygon([(0, 1), (0.35, 0), (0, -1), (-0.35, 0)]),
    "semicircle": lambda u, v: (u * u + v * v <= 1) & (v >= -0.1),
    "bowtie": _polygon([(-1, -0.8), (1, 0.8), (1, -0.8), (-1, 0.8)]),
    "chevron": _polygon([(-0.9, 0.7), (0, -0.2), (0.9, 0.7), (0.9, 0.1), (0, -0.8),
                         (-0.9, 0.1)]),
    "trapezoid": _polygon([(-1, -0.6), (1, -0.6), (0.5, 0.6), (-0.5, 0.6)]),
    "cup": lambda u, v: (np.abs(u) <= 0.9) & (v <= 0.8) & (v >= -0.8)
    & ~((np.abs(u) < 0.5) & (v > -0.4)),
}


# Bounding radius of shapes that reach outside the unit circle (the default is 1).
BOUNDS = {"corgi": 2 ** 0.5}


def rasterize(mask: Mask, size: int, rng: np.random.Generator, radius: tuple[float, float],
              bound: float = 1.0) -> np.ndarray:
    """Alpha in [0, 1] of shape (size, size): the shape at a random pose, 2x2 supersampled.

    Radius (in pixels) ~ U(radius), rotation ~ U(0, 360 deg), anisotropic stretch
    ~ U(0.85, 1.15); the centre is uniform with the bounding circle (radius
    `bound` in unit coordinates) inside the image.
    """
    r = rng.uniform(*radius)
    theta = rng.uniform(0, 2 * np.pi)
    stretch = rng.uniform(0.85, 1.15)
    margin = min(bound * r * max(stretch, 1 / stretch), size / 2)
    cx, cy = rng.uniform(margin, size - margin, size=2)
    sub = (np.arange(2 * size) + 0.5) / 2  # supersample centres in pixel units
    x, y = np.meshgrid(sub - cx, sub - cy)
    cos, sin = np.cos(theta), np.sin(theta)
    u = (cos * x + sin * y) / (r * stretch)
    v = (-sin * x + cos * y) * stretch / r
    inside = mask(u, v).astype(np.float32)
    return inside.reshape(size, 2, size, 2).mean(axis=(1, 3))


def random_crop(source: np.ndarray, size: int, rng: np.random.Generator,
                max_side: float | None = None) -> np.ndarray:
    """A random square crop, side ~ U(size, 2*size) (capped by the source), resized to size.

    Flipped horizontally with p=0.5 and brightness-scaled by U(0.85, 1.15); float32 in [0, 1].
    """
    from PIL import Image

    h, w = source.shape[:2]
    hi = min(max_side or 2 * size, h, w)
    side = int(rng.uniform(min(size, hi), hi + 1))
    side = min(side, h, w)
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(source[top:top + side, left:left + side])
    out = np.asarray(crop.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.clip(out * rng.uniform(0.85, 1.15), 0.0, 1.0)


def compose(background: np.ndarray, alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paint a uniformly random colour (plus pixel noise, sd 0.05) through alpha * opacity."""
    colour = rng.uniform(0, 1, size=3).astype(np.float32)
    noise = rng.normal(0, 0.05, size=background.shape).astype(np.float32)
    fg = np.clip(colour + noise, 0, 1)
    a = (alpha * rng.uniform(0.8, 1.0))[..., None]
    return background * (1 - a) + fg * a


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any skimage.data image (gray, RGB, RGBA, bool, float) as an HxWx3 uint8 array."""
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = to_uint8((arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-12))
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def as_gray_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any skimage.data image as grey-scale (ITU-R 601 luma) repeated into HxWx3 uint8."""
    rgb = as_rgb_uint8(image).astype(np.float32)
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    grey = np.clip(np.round(luma), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)
