"""Pretrain the Spawrious-Lite backbone on a disjoint task, deterministically.

Real Spawrious runs start from ImageNet features that already know dogs; a small CNN
trained from scratch on Lite never learns the cross-pair shape difference (see
docs/spawrious.md). So Lite ships backbone weights of its own, made here: the LiteCNN
is trained to tell 12 *other* shapes apart, drawn over 16 *other* scikit-image pictures
and two kinds of noise (no Lite shape and no Lite background source is used).

    python -m ex2l_domainbed.datasets.lite_backbone [--out PATH] [--steps 3000]

About 2-3 minutes on one CPU thread. Only the featurizer's conv/BatchNorm weights are
saved (the 12-way head is dropped); a JSON report with held-out accuracy sits beside it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ex2l_domainbed.datasets import shapes
from ex2l_domainbed.datasets.spawrious import IMAGENET_MEAN, IMAGENET_STD

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
DEFAULT_PATH = os.path.join(WEIGHTS_DIR, "lite_backbone.pt")

PRETRAIN_SOURCES = [
    "coffee", "astronaut", "hubble_deep_field", "retina", "camera", "coins", "moon",
    "text", "page", "horse", "clock", "cell", "colorwheel", "logo", "microaneurysms",
    "shepp_logan_phantom",
]
NOISE_KINDS = ["white", "blocky"]


def _noise_background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "white":
        return rng.uniform(0, 1, size=(size, size, 3)).astype(np.float32)
    from PIL import Image  # 8x8 colour noise, upsampled bilinearly

    small = (rng.uniform(0, 1, size=(8, 8, 3)) * 255).astype(np.uint8)
    big = Image.fromarray(small).resize((size, size), Image.BILINEAR)
    return np.asarray(big, dtype=np.float32) / 255.0


def make_pretrain_data(per_class: int = 800, size: int = 64, seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, 3) uint8 and labels (N,) for the 12-way disjoint shape task."""
    import skimage.data

    sources = [shapes.as_rgb_uint8(getattr(skimage.data, n)()) for n in PRETRAIN_SOURCES]
    names = list(shapes.PRETRAIN_SHAPES)
    n_backgrounds = len(sources) + len(NOISE_KINDS)
    scale = size / 64.0
    images = np.empty((len(names) * per_class, size, size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(len(names)), per_class)
    for i, (label, k) in enumerate((lbl, k) for lbl in range(len(names)) for k in range(per_class)):
        rng = np.random.default_rng([seed, 7, label, k])
        b = int(rng.integers(n_backgrounds))
        if b < len(sources):
            background = shapes.random_crop(sources[b], size, rng, max_side=2.5 * size)
        else:
            background = _noise_background(NOISE_KINDS[b - len(sources)], size, rng)
        alpha = shapes.rasterize(shapes.PRETRAIN_SHAPES[names[label]], size, rng,
                                 (8 * scale, 16 * scale))
        images[i] = shapes.to_uint8(shapes.compose(background, alpha, rng))
    return images, labels


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW, as the Spawrious loaders' ToTensor + Normalize."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def pretrain(steps: int = 3000, seed: int = 0, per_class: int = 800, size: int = 64,
             lr: float = 1e-3, batch_size: int = 64, log_every: int = 1000
             ) -> tuple[dict[str, torch.Tensor], dict]:
    """Train LiteCNN + a 12-way head; return the featurizer's state dict and a report."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _pretrain(steps, seed, per_class, size, lr, batch_size, log_every)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _pretrain(steps, seed, per_class, size, lr, batch_size, log_every):
    from ex2l_domainbed.backbones import LiteCNN

    torch.manual_seed(seed)
    t0 = time.time()
    images, labels = make_pretrain_data(per_class, size, seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    n_held = len(labels) // 10
    held, train = order[:n_held], order[n_held:]
    x_train, y_train = to_tensor(images[train]), torch.from_numpy(labels[train])
    x_held, y_held = to_tensor(images[held]), torch.from_numpy(labels[held])
    data_s = time.time() - t0

    net = LiteCNN((3, size, size), {})
    head = nn.Linear(net.n_outputs, len(shapes.PRETRAIN_SHAPES))
    model = nn.Sequential(net, head)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for step in range(1, steps + 1):
        model.train()
        idx = torch.randint(len(y_train), (batch_size,), generator=generator)
        x = x_train[idx]
        flip = torch.rand(batch_size, generator=generator) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        loss = F.cross_entropy(model(x), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                acc = float((model(x_held).argmax(1) == y_held).float().mean())
            history.append({"step": step, "loss": loss.item(), "heldout_acc": acc})
            print(f"step {step}: loss {loss.item():.3f}, held-out acc {acc:.3f}", flush=True)
    report = {
        "steps": steps, "seed": seed, "per_class": per_class, "size": size, "lr": lr,
        "batch_size": batch_size, "shapes": list(shapes.PRETRAIN_SHAPES),
        "backgrounds": PRETRAIN_SOURCES + NOISE_KINDS, "history": history,
        "data_seconds": round(data_s, 1), "seconds": round(time.time() - t0, 1),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    return net.state_dict(), report


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and values: equal weights give equal digests.

    (The .pt file's own bytes are not reproducible: torch.save stores a random
    serialization id and the file name inside the archive.)
    """
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def save_weights(state: dict[str, torch.Tensor], report: dict, path: str) -> None:
    """Write the weights and `<path>.json` through temporary names (never half-written)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save({k: v.clone() for k, v in state.items()}, tmp)
    report["weights_sha256"] = weights_digest(state)
    os.replace(tmp, path)
    with open(path + ".json.tmp", "w") as f:
        json.dump(report, f, indent=1)
    os.replace(path + ".json.tmp", path + ".json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_PATH)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per_class", type=int, default=800)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on a busy 2-core machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    state, report = pretrain(steps=args.steps, seed=args.seed, per_class=args.per_class)
    save_weights(state, report, args.out)
    print(f"wrote {args.out} (weights sha256 {report['weights_sha256'][:12]}..., "
          f"{report['seconds']} s)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
