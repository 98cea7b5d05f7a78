"""Training views of a batch for the contrastive recipes: which sequences a study shows
(:func:`sequence_dropout`, :func:`shared_views`, :func:`single_views`) and cheap on-tensor
augmentation (:func:`jitter_batch`, :func:`bright_tail`, :func:`mirror_batch`)."""
from __future__ import annotations

from typing import Sequence

import torch

from medalign.data.samplers import indices_by_patient


def sequence_dropout(sequence_mask: torch.Tensor, p: float, generator: torch.Generator | None = None,
                     single: float = 0.0, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Drop each present sequence with probability ``p``, keeping at least one per sample; with
    probability ``single`` a sample instead keeps just one of its present sequences (uniformly, or
    in proportion to ``weights``: see :func:`single_views`).

    Independent dropout rarely leaves one given sequence of three alone (0.9 % of samples at
    ``p`` = 0.1), yet a single FLAIR or DWI is what many real studies are; ``single`` shows the
    model that case.
    """
    if p <= 0 and single <= 0:
        return sequence_mask
    new = sequence_mask
    if p > 0:
        drop = torch.rand(sequence_mask.shape, generator=generator, device=sequence_mask.device) < p  # (B, C)
        new = sequence_mask & ~drop
        empty = ~new.any(dim=1)  # (B,) samples that would lose every channel keep their original mask
        new = torch.where(empty[:, None], sequence_mask, new)
    if single > 0:
        one = single_views(sequence_mask, generator, weights)  # (B, C)
        chosen = torch.rand(sequence_mask.shape[0], generator=generator, device=sequence_mask.device) < single  # (B,)
        new = torch.where(chosen[:, None] & one.any(dim=1, keepdim=True), one, new)
    return new


def single_views(sequence_mask: torch.Tensor, generator: torch.Generator | None = None,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """One of each sample's present sequences: (B, C) bool -> (B, C) bool with at most one True per
    row (none where the sample had none). Drawn uniformly, or with ``weights`` (C,) >= 0 in proportion
    to them among the present sequences (a sample with no weighted sequence present: uniformly);
    the same random draw either way, so equal weights pick what no weights pick."""
    draw = torch.rand(sequence_mask.shape, generator=generator, device=sequence_mask.device)  # (B, C)
    if weights is not None:  # Efraimidis-Spirakis: argmax u ** (1 / w) picks i with probability w_i / sum(w)
        w = weights.to(draw).expand_as(draw) * sequence_mask  # (B, C)
        w = torch.where((w > 0).any(dim=1, keepdim=True), w, sequence_mask.to(draw))
        draw = torch.where(w > 0, draw.clamp_min(1e-12).log() / w.clamp_min(1e-12), torch.full_like(draw, -torch.inf))
    pick = draw.masked_fill(~sequence_mask, -torch.inf).argmax(dim=1)  # (B,) a present sequence
    return torch.nn.functional.one_hot(pick, sequence_mask.shape[1]).bool() & sequence_mask  # (B, C)


def shared_views(sequence_mask: torch.Tensor, original: torch.Tensor, groups: Sequence[str], single: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Give the studies of one group in a batch (a patient: a study and its lesion-free twin) one
    view: the first member's ``sequence_mask`` (B, C), or with probability ``single`` one sequence
    that every member has (``original``, before dropout). Studies alone in the batch keep theirs.

    Why: the twin differs from its study only at the lesions; seen through the same sequences (FLAIR
    alone, as many real studies are), the contrastive loss can tell their reports apart only by them.
    """
    new = sequence_mask.clone()
    for ix in (ix for ix in indices_by_patient(groups).values() if len(ix) > 1):
        view = sequence_mask[ix[0]] & original[ix].all(dim=0)  # (C,) the first member's, where all have it
        if not bool(view.any()):
            continue  # nothing in common: each keeps its own view
        if float(torch.rand((), generator=generator)) < single:
            view = single_views(view[None], generator)[0]  # (C,) one of the sequences on offer
        new[ix] = view
    return new


def bright_tail(image: torch.Tensor, p: float, threshold: Sequence[float] = (1.0, 2.5),
                gain: Sequence[float] = (0.0, 1.5), generator: torch.Generator | None = None) -> torch.Tensor:
    """With probability ``p`` per sample and channel, reshape the bright tail: every value above a
    threshold t drawn from ``threshold`` becomes ``t + g * (value - t)``, g drawn from ``gain``
    (0 caps the tail at t, > 1 stretches it). Bright tissue keeps its place, shape and extent;
    only how far it stands out changes (the transform of ``benchmarks/bright_reliance.py``).

    Why: on FLAIR alone a model can tell infarcts and tumours from white-matter disease by how far
    the brightest tissue stands out (the generator gives them similar lesion signal) instead of by
    the lesions' pattern, and real WMH, brighter than most synthetic ones, then read as infarcts.
    Values are in the cache's normalised units (z-scores inside the head by default).
    image (B, C, *spatial) -> same shape.
    """
    b, c = image.shape[:2]
    lead = (b, c) + (1,) * (image.dim() - 2)  # (B, C, 1, ...)

    def draw(lo_hi: Sequence[float]) -> torch.Tensor:
        u = torch.rand((b, c), generator=generator).to(image.device, image.dtype)  # (B, C)
        return (float(lo_hi[0]) + u * (float(lo_hi[1]) - float(lo_hi[0]))).reshape(lead)

    on = (torch.rand((b, c), generator=generator) < p).to(image.device).reshape(lead)  # (B, C, 1, ...)
    t, g = draw(threshold), draw(gain)
    return torch.where(on & (image > t), t + g * (image - t), image)


def jitter_batch(image: torch.Tensor, shift: Sequence[int] = (0, 0, 0), scale: float = 0.0,
                 generator: torch.Generator | None = None, follow: torch.Tensor | None = None,
                 tail: dict | None = None):
    """Cheap on-tensor training augmentation: a random circular shift of up to ``shift`` voxels per
    spatial axis (one per sample) and a random per-channel intensity gain in ``[1 - scale, 1 + scale]``;
    ``tail`` (keyword arguments of :func:`bright_tail`, e.g. ``{"p": 0.5}``) first reshapes the
    bright tail of some channels.

    Unlike a left-right flip it keeps laterality, so "left MCA infarct" still matches the image.
    image (B, C, *spatial) -> same shape. ``follow`` (B, *spatial), e.g. the lesion masks, is
    shifted with its image (no gain); given, the return is ``(image, follow)``.
    """
    if tail:
        image = bright_tail(image, **tail, generator=generator)
    spatial = image.dim() - 2
    shift = tuple(int(v) for v in shift)
    if len(shift) != spatial:
        raise ValueError(f"shift needs one value per spatial axis ({spatial}), got {shift}")
    out, moved = image, follow
    if any(shift):
        rolled, rolled_f = [], []
        for b in range(image.shape[0]):
            offs = [int(torch.randint(-m, m + 1, (1,), generator=generator)) if m > 0 else 0 for m in shift]
            rolled.append(torch.roll(image[b], shifts=offs, dims=tuple(range(1, spatial + 1))))  # (C, *spatial)
            if follow is not None:
                rolled_f.append(torch.roll(follow[b], shifts=offs, dims=tuple(range(spatial))))  # (*spatial)
        out = torch.stack(rolled)  # (B, C, *spatial)
        moved = torch.stack(rolled_f) if follow is not None else None  # (B, *spatial)
    if scale > 0:
        g = 1 + (torch.rand(image.shape[:2], generator=generator, device=image.device) * 2 - 1) * scale  # (B, C)
        out = out * g.to(out.dtype).reshape(*g.shape, *([1] * spatial))  # (B, C, 1, ...)
    return out if follow is None else (out, moved)


def mirror_batch(image: torch.Tensor, p: float, generator: torch.Generator | None = None,
                 follow: torch.Tensor | None = None, groups: Sequence[str] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Mirror each sample left-right with probability ``p``: the last axis, the patient's left-right
    in medalign's RAS cache (W). The caller swaps the sides of the sample's report
    (:func:`medalign.data.reports.mirror_laterality`) for the samples flipped, so the pair stays true.
    ``groups`` (B ids, e.g. patients): the members of a group share the first member's draw, so a
    study and its lesion-free twin (:func:`shared_views`) still differ only at the lesions.

    image (B, C, *spatial) -> (same shape, flipped (B,) bool, ``follow`` (B, *spatial) mirrored with
    its image, or None).
    """
    flipped = torch.rand(image.shape[0], generator=generator) < p  # (B,)
    for ix in (indices_by_patient(groups).values() if groups is not None else ()):
        flipped[ix] = bool(flipped[ix[0]])
    flipped = flipped.to(image.device)
    if not bool(flipped.any()):
        return image, flipped, follow
    out = torch.where(flipped.reshape(-1, *([1] * (image.dim() - 1))), image.flip(-1), image)  # (B, C, *spatial)
    if follow is not None:
        follow = torch.where(flipped.reshape(-1, *([1] * (follow.dim() - 1))), follow.flip(-1), follow)  # (B, *spatial)
    return out, flipped, follow
