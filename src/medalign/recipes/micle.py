"""MICLe (Azizi et al., 2021): SimCLR whose positive pair is two *different* images of one patient.

Where an "instance" comes from (``instance``):
- ``"study"``: two different studies of the patient in the batch (found through ``patient_id``;
  use :class:`medalign.data.samplers.PatientBatchSampler` so every patient brings two);
- ``"sequence"``: two different available MRI sequences of one study (each view keeps one
  sequence channel, the others zeroed and masked);
- ``"slab"``: two different depth slabs of one study, each resized back to the full depth;
- ``"pseudo"``: for data without patient ids (PneumoniaMNIST): two different fixed crops of one
  image stand in for two images -- this is SimCLR with a crop prior, and is named so in reports.
A patient with a single instance falls back to ``fallback`` (default: two augmented views of
one image, i.e. SimCLR, as the paper does when only one image exists). Both views are then
augmented. Other pairs of the same patient are removed from the NT-Xent negatives.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from medalign.data.samplers import pair_within_patient
from medalign.data.schema import PAPER_SEQUENCES
from medalign.data.masking import mask_sequences
from medalign.recipes import RECIPES
from medalign.recipes.simclr import SimCLRRecipe

INSTANCES = ("study", "sequence", "slab", "pseudo")
FALLBACKS = ("views", "sequence", "slab")


def one_sequence_views(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two views keeping one *different* available sequence each. x (B, C, ...), mask (B, C) bool.
    Returns (x1, m1, x2, m2); a study with one sequence gets it in both views."""
    b, c = mask.shape
    score = torch.rand(b, c, generator=generator).to(x.device) + (~mask).float() * 10  # missing last
    order = score.argsort(dim=1)  # (B, C) available sequences first, random order
    n_avail = mask.sum(1)
    c1 = order[:, 0]
    second = order[:, 1] if c > 1 else order[:, 0]
    c2 = torch.where(n_avail >= 2, second, order[:, 0])
    m1 = F.one_hot(c1, c).bool() & mask  # (B, C)
    m2 = F.one_hot(c2, c).bool() & mask
    return mask_sequences(x, m1), m1, mask_sequences(x, m2), m2


def two_slabs(x: torch.Tensor, n_slabs: int = 2, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two different depth slabs (of D // n_slabs slices) per study, resized back to D.
    x (B, C, D, H, W) -> two (B, C, D, H, W)."""
    if x.ndim != 5:
        raise ValueError(f"slab instances need (B, C, D, H, W), got {tuple(x.shape)}")
    b, c, d, h, w = x.shape
    if n_slabs < 2 or d < n_slabs:
        raise ValueError(f"cannot cut {n_slabs} slabs from depth {d}")
    t = d // n_slabs
    perm = torch.stack([torch.randperm(n_slabs, generator=generator)[:2] for _ in range(b)])  # (B, 2)
    out = []
    for k in range(2):
        slabs = torch.stack([x[i, :, perm[i, k] * t:(perm[i, k] + 1) * t] for i in range(b)])  # (B, C, t, H, W)
        out.append(F.interpolate(slabs, size=(d, h, w), mode="trilinear", align_corners=False))
    return out[0], out[1]


def _patient_index(pids, rows) -> torch.Tensor:
    """Dense patient index of each row in ``rows`` (NT-Xent groups)."""
    lookup = {q: i for i, q in enumerate(dict.fromkeys(str(q) for q in pids))}
    return torch.tensor([lookup[str(pids[i])] for i in rows], dtype=torch.long)


@RECIPES.register("micle")
class MICLeRecipe(SimCLRRecipe):
    """MICLe: NT-Xent on (aug(instance_a), aug(instance_b)) of one patient; SimCLR otherwise.

    Args (beyond SimCLRRecipe): instance (one of INSTANCES), fallback (one of FALLBACKS, for
    patients with a single instance in the batch), n_slabs (for slab instances).
    """

    def __init__(self, *, sequences: Sequence[str] = PAPER_SEQUENCES, input_shape: Sequence[int] | None = (16, 112, 112),
                 image_encoder: dict | None = None, proj_dim: int = 128, temperature: float = 0.1,
                 augment: dict | None = None, instance: str = "study", fallback: str = "views", n_slabs: int = 2,
                 gather: bool = True) -> None:
        super().__init__(sequences=sequences, input_shape=input_shape, image_encoder=image_encoder, proj_dim=proj_dim,
                         temperature=temperature, augment=augment, gather=gather)
        if instance not in INSTANCES:
            raise ValueError(f"MICLe instance must be one of {INSTANCES}, got '{instance}'")
        if fallback not in FALLBACKS:
            raise ValueError(f"MICLe fallback must be one of {FALLBACKS}, got '{fallback}'")
        self.instance, self.fallback, self.n_slabs = instance, fallback, n_slabs
        self.patient_batches = instance == "study"

    def _within_study(self, kind: str, x: torch.Tensor, m: torch.Tensor | None):
        if kind == "sequence":
            if m is None:
                m = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            return one_sequence_views(x, m)
        if kind == "slab":
            x1, x2 = two_slabs(x, self.n_slabs)
            return x1, m, x2, m
        if kind == "pseudo":
            from medalign.data.xray import pseudo_instances

            v = pseudo_instances(x)  # (B, 2, C, H, W)
            return v[:, 0], m, v[:, 1], m
        return x, m, x, m  # "views": SimCLR

    def make_pairs(self, batch: dict) -> tuple[torch.Tensor, Any, torch.Tensor, Any, torch.Tensor]:
        """(x1, mask1, x2, mask2, groups): the two instances of every positive pair, un-augmented."""
        x, m = batch["image"], self._mask(batch)
        pids = batch.get("patient_id") or [str(i) for i in range(x.shape[0])]
        if self.instance != "study":
            x1, m1, x2, m2 = self._within_study(self.instance, x, m)
            return x1, m1, x2, m2, _patient_index(pids, range(len(pids)))
        anchors, partners = pair_within_patient(pids)
        a, p = torch.tensor(anchors), torch.tensor(partners)
        x1, x2 = x[a], x[p]
        m1, m2 = (m[a], m[p]) if m is not None else (None, None)
        single = a == p
        if bool(single.any()) and self.fallback != "views":
            fx1, fm1, fx2, fm2 = self._within_study(self.fallback, x1[single], m1[single] if m1 is not None else None)
            x1, x2 = x1.clone(), x2.clone()
            x1[single], x2[single] = fx1, fx2
            if m1 is not None:
                m1, m2 = m1.clone(), m2.clone()
                m1[single], m2[single] = fm1, fm2
        return x1, m1, x2, m2, _patient_index(pids, anchors)

    def training_step(self, batch: dict) -> dict[str, Any]:
        x1, m1, x2, m2, groups = self.make_pairs(batch)
        return self.loss(self.project(x1, m1), self.project(x2, m2), groups=groups.to(x1.device))
