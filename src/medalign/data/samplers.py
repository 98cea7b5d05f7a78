"""Batch samplers for the training loop: resumable shuffled batches, and patient-grouped batches.

``ResumableBatchSampler`` is the loop's default (optionally weighted: ``sampling_weights``, by class
and by acquired sequences).
``PatientBatchSampler``: every patient in a batch brings >= 2 of its instances.
``GroupedBatchSampler``: shuffled batches in which a patient's studies are never split (a study and
its lesion-free twin train side by side; patients with one study fill the rest).

MICLe needs positive pairs made of two *different* images of one patient, and HLSS needs two
studies/slides per patient in a batch for its patient-level positives. A plain shuffled
sampler rarely puts two studies of one patient together; this sampler builds each batch as
``batch_size // instances_per_patient`` patients x ``instances_per_patient`` instances.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter, OrderedDict
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def indices_by_patient(patient_ids: Sequence) -> "OrderedDict[str, list[int]]":
    """{patient id: its indices, in order} in order of first appearance (ids compared as strings)."""
    groups: "OrderedDict[str, list[int]]" = OrderedDict()
    for i, pid in enumerate(patient_ids):
        groups.setdefault(str(pid), []).append(i)
    return groups


class PatientBatchSampler(Sampler[list[int]]):
    """Yield lists of dataset indices, grouped by patient.

    Args:
        patient_ids: patient id of every dataset index (e.g. ``manifest["patient_id"]``).
        batch_size: indices per batch; must be a multiple of ``instances_per_patient`` and hold
            at least two patients (negatives come from other patients).
        instances_per_patient: distinct indices drawn per patient per batch (>= 2).
        min_instances: patients with fewer instances are left out (with a warning).
        shuffle, seed: reshuffle patients (and their instances) every epoch; call
            ``set_epoch`` as with ``DistributedSampler``.
        drop_last: drop the last, smaller batch.
        num_replicas, rank: DDP sharding of whole batches (default: torch.distributed if running).

    A patient with more instances than ``instances_per_patient`` appears in
    ``ceil(n / instances_per_patient)`` groups per epoch, so every instance is seen.
    """

    def __init__(self, patient_ids: Sequence, *, batch_size: int, instances_per_patient: int = 2,
                 min_instances: int = 2, shuffle: bool = True, seed: int = 0, drop_last: bool = True,
                 num_replicas: int | None = None, rank: int | None = None) -> None:
        if instances_per_patient < 2:
            raise ValueError(f"instances_per_patient must be >= 2, got {instances_per_patient}")
        if min_instances < 2:
            raise ValueError(f"min_instances must be >= 2, got {min_instances}")
        if batch_size % instances_per_patient or batch_size < 2 * instances_per_patient:
            raise ValueError(f"batch_size {batch_size} must be a multiple of instances_per_patient "
                             f"{instances_per_patient} and hold >= 2 patients")
        groups = indices_by_patient(patient_ids)
        self.groups = {p: ix for p, ix in groups.items() if len(ix) >= min_instances}
        dropped = len(groups) - len(self.groups)
        if dropped:
            warnings.warn(f"PatientBatchSampler: {dropped} of {len(groups)} patients have fewer than "
                          f"{min_instances} instances and are left out", stacklevel=2)
        self.batch_size = batch_size
        self.k = instances_per_patient
        self.per_batch = batch_size // instances_per_patient
        if len(self.groups) < 2:
            raise ValueError(f"need >= 2 patients with >= {min_instances} instances, found {len(self.groups)}")
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        if num_replicas is None or rank is None:
            import torch.distributed as dist

            running = dist.is_available() and dist.is_initialized()
            num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if running else 1)
            rank = rank if rank is not None else (dist.get_rank() if running else 0)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Reshuffle for ``epoch``; ``start_batch`` skips batches already seen (resume mid-epoch,
        the interface of ResumableBatchSampler)."""
        self.epoch, self.start_batch = epoch, start_batch

    def batches_per_epoch(self) -> int:
        return len(self._batches())

    def _units(self, rng: np.random.Generator) -> list[list[int]]:
        """Split each patient's (shuffled) instances into groups of k; a short tail is filled
        with other instances of the same patient (all distinct within the group)."""
        units = []
        for ix in self.groups.values():
            ix = list(rng.permutation(ix)) if self.shuffle else list(ix)
            for s in range(0, len(ix), self.k):
                unit = ix[s:s + self.k]
                if len(unit) < self.k:
                    rest = [i for i in ix if i not in unit]
                    unit += rest[: self.k - len(unit)]
                units.append([int(i) for i in unit])
        return units

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        units = self._units(rng)
        order = rng.permutation(len(units)) if self.shuffle else np.arange(len(units))
        # Greedy fill that never puts two units of one patient in the same batch.
        batches: list[list[list[int]]] = []
        open_batches: list[tuple[set[int], list[list[int]]]] = []
        unit_owner = {}
        for pid_idx, ix in enumerate(self.groups.values()):
            for i in ix:
                unit_owner[i] = pid_idx
        for u in order:
            unit = units[u]
            owner = unit_owner[unit[0]]
            for owners, b in open_batches:
                if owner not in owners:
                    owners.add(owner)
                    b.append(unit)
                    break
            else:
                open_batches.append(({owner}, [unit]))
            full = [ob for ob in open_batches if len(ob[1]) == self.per_batch]
            for ob in full:
                batches.append(ob[1])
                open_batches.remove(ob)
        if not self.drop_last:
            for owners, b in open_batches:
                if len(b) >= 2:
                    batches.append(b)
                    continue
                # A lone patient has no negatives: ride along with a batch lacking that patient.
                host = next((hb for hb in batches if not owners & {unit_owner[u[0]] for u in hb}), None)
                if host is not None:
                    host.extend(b)
        flat = [[i for unit in b for i in unit] for b in batches]
        # DDP: every rank gets the same number of whole batches.
        n = len(flat) // self.num_replicas
        return flat[self.rank: n * self.num_replicas: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()[self.start_batch:]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)


def pair_within_patient(patient_ids: Sequence, *, seed: int | None = None) -> tuple[list[int], list[int]]:
    """Pair each batch index with a *different* index of the same patient (MICLe positives).

    Returns ``(anchors, partners)``. Instances of a patient are paired consecutively after a
    shuffle; an odd one out is paired with another instance of its patient; a patient with a
    single instance in the batch is paired with itself (the caller then uses two augmented
    views of one image, i.e. SimCLR, as the MICLe paper does when only one image exists).
    """
    rng = np.random.default_rng(seed)
    groups = indices_by_patient(patient_ids)
    anchors, partners = [], []
    for ix in groups.values():
        ix = [int(i) for i in rng.permutation(ix)]
        if len(ix) == 1:
            anchors.append(ix[0]); partners.append(ix[0])
            continue
        for s in range(0, len(ix) - 1, 2):
            anchors.append(ix[s]); partners.append(ix[s + 1])
        if len(ix) % 2:
            anchors.append(ix[-1]); partners.append(ix[0])
    return anchors, partners


def class_balance_weights(dataset, power: float) -> list[float]:
    """Sampling weight of every study: (training studies with its label) ** -power.

    ``dataset.labels`` holds class indices (-1 = unlabelled, as ``CohortDataset`` gives for a
    manifest without a label); an unlabelled study is an error naming it, not a silent weight.
    """
    from medalign.config import ConfigError

    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise ConfigError(f"train.class_balance: {type(dataset).__name__} has no labels to balance")
    unlabelled = [k for k, y in enumerate(labels) if int(y) < 0]
    if unlabelled:
        ids = getattr(dataset, "study_ids", None)
        first = ids[unlabelled[0]] if ids is not None else f"item {unlabelled[0]}"
        raise ConfigError(f"train.class_balance needs a label for every training study (manifest column "
                          f"'label'); {len(unlabelled)} have none, first: {first}")
    return _group_weights([int(y) for y in labels], power)


def protocol_balance_weights(dataset, power: float) -> list[float]:
    """Sampling weight of every study: (training studies acquired with its set of sequences) ** -power.

    ``dataset.protocols`` holds each study's acquired sequences (``CohortDataset``: the manifest's
    filled ``image_<seq>`` columns). A cohort where most studies come as FLAIR alone otherwise spends
    most steps on FLAIR, and the multi-sequence studies (DWI: strokes) are seen a few times only.
    """
    from medalign.config import ConfigError

    protocols = getattr(dataset, "protocols", None)
    if protocols is None:
        raise ConfigError(f"train.protocol_balance: {type(dataset).__name__} does not say which sequences "
                          "each study has")
    return _group_weights([tuple(p) for p in protocols], power)


def sampling_weights(dataset, *, class_balance: float = 0.0, protocol_balance: float = 0.0) -> list[float] | None:
    """The training draw's weight of every study (the product of the balances asked for), or None
    for a plain shuffle."""
    weights = None
    for power, fn in ((class_balance, class_balance_weights), (protocol_balance, protocol_balance_weights)):
        if power:
            w = fn(dataset, power)
            weights = w if weights is None else [a * b for a, b in zip(weights, w)]
    return weights


def _group_weights(groups: Sequence, power: float) -> list[float]:
    """(members of each item's group) ** -power: with power 1 every group is drawn equally often."""
    counts = Counter(groups)
    return [counts[g] ** -power for g in groups]


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of a per-epoch permutation, sharded over ranks, that can start mid-epoch.

    The permutation depends only on (seed, epoch), so a resumed run sees exactly the batches
    the killed run would have seen. With ``weights`` (one per index) an epoch is ``n`` draws with
    replacement instead, each index with probability proportional to its weight. Sharding follows
    DistributedSampler (pad to a multiple of the world size, then ``rank::world``).
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world: int = 1, drop_last: bool = True, weights: Sequence[float] | None = None) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world, self.drop_last = rank, world, drop_last
        self.epoch, self.start_batch = 0, 0
        if weights is not None and (len(weights) != n or min(weights) < 0 or sum(weights) <= 0):
            raise ValueError(f"weights: need {n} non-negative numbers, not all 0")
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _shard(self) -> list[int]:
        if self.weights is not None:
            # an epoch is n draws with replacement, p proportional to the weights (class balance)
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = math.ceil(self.n / self.world) * self.world
        order += order[: total - self.n]  # pad so every rank gets the same number of samples
        return order[self.rank :: self.world]

    def _batches(self) -> list[list[int]]:
        shard = self._shard()
        bs = self.batch_size
        batches = [shard[i : i + bs] for i in range(0, len(shard), bs)]
        # Drop a short last batch only if at least one full batch remains.
        if self.drop_last and len(batches) > 1 and len(batches[-1]) < bs:
            batches = batches[:-1]
        return batches

    def batches_per_epoch(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()[self.start_batch :]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)


def dataset_patient_ids(dataset) -> list[str]:
    """Patient ids without loading images: a ``patient_ids`` attribute, a manifest frame, or samples."""
    if hasattr(dataset, "patient_ids"):
        return [str(p) for p in dataset.patient_ids]
    for attr in ("manifest", "df", "frame"):
        df = getattr(dataset, attr, None)
        if df is not None and hasattr(df, "columns") and "patient_id" in df.columns:
            return df["patient_id"].astype(str).tolist()
    return [str(dataset[i]["patient_id"]) for i in range(len(dataset))]


class GroupedBatchSampler(ResumableBatchSampler):
    """Shuffled batches that keep each patient's studies together, the rest as a plain shuffle.

    Every index is seen once per epoch. A patient's indices (up to ``batch_size`` of them) go into
    one batch, next to each other, so a recipe can pair them (a study and its lesion-free twin
    share a view); batches are filled in shuffled patient order and may fall short of
    ``batch_size`` by less than one patient. Resume and DDP sharding of whole batches as
    :class:`ResumableBatchSampler` (the order depends only on seed and epoch).
    """

    def __init__(self, patient_ids: Sequence, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world: int = 1, drop_last: bool = True) -> None:
        super().__init__(len(patient_ids), batch_size, shuffle=shuffle, seed=seed, rank=rank, world=world,
                         drop_last=drop_last)
        # a patient with more studies than a batch holds is split into batch-sized units
        self.units = [ix[s:s + batch_size] for ix in indices_by_patient(patient_ids).values()
                      for s in range(0, len(ix), batch_size)]

    def _batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.units), generator=g).tolist() if self.shuffle else range(len(self.units))
        batches: list[list[int]] = [[]]
        for u in order:
            if len(batches[-1]) + len(self.units[u]) > self.batch_size:
                batches.append([])
            batches[-1].extend(self.units[u])
        if self.drop_last and len(batches) > 1 and len(batches[-1]) < self.batch_size // 2:
            batches = batches[:-1]  # a short tail only; the grouped fill leaves most batches a little short
        total = math.ceil(len(batches) / self.world) * self.world
        batches += batches[: total - len(batches)]  # every rank gets the same number of batches
        return batches[self.rank:: self.world]
