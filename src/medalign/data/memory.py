"""In-memory data for the one training loop: a column Dataset and two batch samplers.

The experiments (SSL label efficiency) hold whole tiny cohorts / 28x28 X-rays as tensors; these
let ``medalign.train.loop.train_model`` consume them like any other dataset. Both samplers offer
the loop's interface: ``set_epoch(epoch, start_batch=0)``, ``batches_per_epoch()``, ``__iter__``
of index lists and ``__len__``.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset, Sampler


class ColumnDataset(Dataset):
    """Sample ``i`` is ``{name: column[i]}`` over equally long columns (tensors, arrays or lists).

    ``None`` columns are left out, so an optional field (a sequence mask) can be passed as is.
    """

    def __init__(self, columns: Mapping[str, Any]) -> None:
        self.columns = {k: v for k, v in columns.items() if v is not None}
        if not self.columns:
            raise ValueError("ColumnDataset: no columns")
        lengths = {k: len(v) for k, v in self.columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"ColumnDataset: columns differ in length: {lengths}")
        self.n = next(iter(lengths.values()))
        if "patient_id" in self.columns:
            # samplers read patient ids without loading samples (data.samplers.dataset_patient_ids)
            self.patient_ids = [str(p) for p in self.columns["patient_id"]]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v[i] for k, v in self.columns.items()}


class ReplacementBatchSampler(Sampler[list[int]]):
    """``num_batches`` independent random batches per epoch (batches drawn with replacement).

    Within a batch indices are distinct unless ``n < batch_size``. The draws depend only on
    (seed, epoch), so ``start_batch`` resumes mid-epoch like ResumableBatchSampler.
    """

    def __init__(self, n: int, batch_size: int, num_batches: int, *, seed: int = 0) -> None:
        if n < 1 or batch_size < 1 or num_batches < 1:
            raise ValueError(f"need n, batch_size, num_batches >= 1, got {n}, {batch_size}, {num_batches}")
        self.n, self.batch_size, self.num_batches, self.seed = n, batch_size, num_batches, seed
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches_per_epoch(self) -> int:
        return self.num_batches

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        return [rng.choice(self.n, size=self.batch_size, replace=self.n < self.batch_size).tolist()
                for _ in range(self.num_batches)]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()[self.start_batch:]

    def __len__(self) -> int:
        return max(0, self.num_batches - self.start_batch)


class FixedEpochSampler(Sampler[list[int]]):
    """Wrap a batch sampler so that no epoch is shorter than its first one.

    A patient-grouped sampler's greedy fill can give a later epoch fewer batches than epoch 0;
    the loop sizes its epochs (and the schedule) from ``batches_per_epoch()`` once, so a short
    epoch is topped up with that epoch's own first batches. ``epoch`` tells which epoch is
    being iterated (the experiments average their losses per epoch with it).
    """

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner
        self.inner.set_epoch(0)
        self.n = int(inner.batches_per_epoch())
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch
        self.inner.set_epoch(epoch)

    def batches_per_epoch(self) -> int:
        return self.n

    def _batches(self) -> list[Sequence[int]]:
        batches = list(self.inner)
        if 0 < len(batches) < self.n:
            batches += [batches[i % len(batches)] for i in range(self.n - len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from (list(b) for b in self._batches()[self.start_batch:])

    def __len__(self) -> int:
        return max(0, len(self._batches()) - self.start_batch)
