"""Data loaders: an endless, resumable sample stream for training, one pass for evaluation.

Neither loader draws from the global random generators: the training stream is a pure
function of its seed and its position (batch k is the same batch whether the run got there
in one go or resumed from a checkpoint), and the evaluation order has a private generator.
So a resumed run sees exactly the batches the uninterrupted run would have seen.
"""
from __future__ import annotations

import random
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.utils.data

from domainbed.lib.misc import seed_hash


class _BatchStream(torch.utils.data.Sampler):
    """Batches of (index, item seed) pairs at positions start, start + 1, ...

    The batch at position k is drawn with replacement (with `weights`, in proportion to
    them) from a generator seeded by (seed, k); the item seeds key the random transforms
    of each item when it is loaded in a worker process (see `_SeededItems`).
    """

    def __init__(self, n_items: int, batch_size: int, weights: Optional[Sequence[float]],
                 seed: int, start: int):
        self.n_items, self.batch_size, self.seed, self.start = n_items, batch_size, seed, start
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)

    def batch(self, position: int) -> list[tuple[int, int]]:
        generator = torch.Generator().manual_seed(seed_hash(self.seed, position))
        if self.weights is None:
            indices = torch.randint(self.n_items, (self.batch_size,), generator=generator)
        else:
            indices = torch.multinomial(self.weights, self.batch_size, replacement=True,
                                        generator=generator)
        item_seeds = torch.randint(2 ** 31, (self.batch_size,), generator=generator)
        return list(zip(indices.tolist(), item_seeds.tolist()))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        position = self.start
        while True:
            yield self.batch(position)
            position += 1


class _SeededItems(torch.utils.data.Dataset):
    """`dataset[index]`, with the random generators seeded by the item's seed in a worker.

    Worker processes run ahead of training and restart on resume, so their generators'
    states cannot be saved; seeding per item makes the transforms independent of them. In
    the main process (no workers) the global generators, which checkpoints save, are used.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, item_seed = key
        if torch.utils.data.get_worker_info() is not None:
            random.seed(item_seed)
            np.random.seed(item_seed)
            torch.manual_seed(item_seed)
        return self.dataset[index]


class InfiniteDataLoader:
    """Endless batches of exactly `batch_size` items, sampled with replacement.

    With `weights`, items are drawn with those probabilities (class balancing). `seed`
    keys the stream and `start` is the position to begin at: `position` counts the batches
    handed out so far, so a checkpoint can save it and a resumed run continue from it.
    """

    def __init__(self, dataset, weights, batch_size: int, num_workers: int, *,
                 seed: int = 0, start: int = 0):
        super().__init__()
        if len(dataset) < batch_size:
            raise ValueError(
                f"a training split has {len(dataset)} examples, fewer than the batch size "
                f"{batch_size}, so no full batch can be drawn")
        self.position = start
        stream = _BatchStream(len(dataset), batch_size, weights, seed, start)
        self._infinite_iterator = iter(torch.utils.data.DataLoader(
            _SeededItems(dataset), num_workers=num_workers, batch_sampler=stream,
            generator=torch.Generator().manual_seed(seed)))

    def __iter__(self):
        while True:
            batch = next(self._infinite_iterator)
            self.position += 1
            yield batch

    def __len__(self):
        raise ValueError("an infinite loader has no length")


class _InfiniteSampler(torch.utils.data.Sampler):
    """Repeat a batch sampler forever."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __iter__(self):
        while True:
            for batch in self.sampler:
                yield batch


class _ItemSeeds(torch.utils.data.Sampler):
    """A batch sampler's batches as (index, item seed) pairs, the seed keyed by the index: in
    a worker, an item's random transforms (upstream evaluates training environments with
    their augmentation) are then the same at every evaluation, resumed or not."""

    def __init__(self, batch_sampler):
        self.batch_sampler = batch_sampler

    def __iter__(self):
        for batch in self.batch_sampler:
            yield [(index, seed_hash("item", index)) for index in batch]


class FastDataLoader:
    """One pass over `dataset` in a random order, without replacement, last batch kept.

    The order is drawn once and is the same at every pass, so an evaluation does not depend
    on how many came before it (a resumed run's first evaluation reads the items in the order
    the uninterrupted run does at that step).
    """

    def __init__(self, dataset, batch_size: int, num_workers: int):
        super().__init__()
        self._length = 0
        if len(dataset) == 0:  # e.g. --holdout_fraction 0: nothing to evaluate
            return
        order = torch.Generator().manual_seed(0)  # private: evaluation leaves the global RNG alone
        permutation = torch.randperm(len(dataset), generator=order).tolist()
        batch_sampler = torch.utils.data.BatchSampler(
            permutation, batch_size=batch_size, drop_last=False)
        self._infinite_iterator = iter(torch.utils.data.DataLoader(
            _SeededItems(dataset), num_workers=num_workers, generator=order,
            batch_sampler=_ItemSeeds(_InfiniteSampler(batch_sampler))))
        self._length = len(batch_sampler)

    def __iter__(self):
        for _ in range(len(self)):
            yield next(self._infinite_iterator)

    def __len__(self) -> int:
        return self._length
