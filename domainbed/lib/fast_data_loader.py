"""Data loaders: an infinite sampler-driven loader for training, one pass for evaluation."""
from __future__ import annotations

import torch


class _InfiniteSampler(torch.utils.data.Sampler):
    """Repeat a batch sampler forever."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __iter__(self):
        while True:
            for batch in self.sampler:
                yield batch


class InfiniteDataLoader:
    """Endless batches of exactly `batch_size` items, sampled with replacement.

    With `weights`, items are drawn with those probabilities (class balancing).
    """

    def __init__(self, dataset, weights, batch_size: int, num_workers: int):
        super().__init__()
        if len(dataset) < batch_size:
            raise ValueError(
                f"a training split has {len(dataset)} examples, fewer than the batch size "
                f"{batch_size}, so no full batch can be drawn")
        if weights is not None:
            sampler = torch.utils.data.WeightedRandomSampler(
                weights, replacement=True, num_samples=batch_size)
        else:
            sampler = torch.utils.data.RandomSampler(dataset, replacement=True)
        batch_sampler = torch.utils.data.BatchSampler(sampler, batch_size=batch_size, drop_last=True)
        self._infinite_iterator = iter(torch.utils.data.DataLoader(
            dataset, num_workers=num_workers,
            batch_sampler=_InfiniteSampler(batch_sampler)))

    def __iter__(self):
        while True:
            yield next(self._infinite_iterator)

    def __len__(self):
        raise ValueError("an infinite loader has no length")


class FastDataLoader:
    """One pass over `dataset` in random order, without replacement, last batch kept."""

    def __init__(self, dataset, batch_size: int, num_workers: int):
        super().__init__()
        self._length = 0
        if len(dataset) == 0:  # e.g. --holdout_fraction 0: nothing to evaluate
            return
        batch_sampler = torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(dataset, replacement=False),
            batch_size=batch_size, drop_last=False)
        self._infinite_iterator = iter(torch.utils.data.DataLoader(
            dataset, num_workers=num_workers,
            batch_sampler=_InfiniteSampler(batch_sampler)))
        self._length = len(batch_sampler)

    def __iter__(self):
        for _ in range(len(self)):
            yield next(self._infinite_iterator)

    def __len__(self) -> int:
        return self._length
