"""TorchIO augmentation recipes acting on the sample dict (train split only).

The "paper" recipe is brain-CLIP's (METHODS.md section 1): with probability 0.5 the whole
chain runs: RandomAffine (p=0.8, scale 0.98-1.02, +-3 deg, +-3 vox), RandomNoise (TorchIO
defaults: std U(0, 0.25)), RandomFlip left-right, RandomGamma (log-gamma +-0.3).
Spatial transforms move ``image`` and ``mask`` together (the mask as a label map, nearest
neighbour). Channels whose ``sequence_mask`` is False are zeroed again afterwards, so a missing
sequence stays an all-zero channel.

TorchIO's spatial axes are (x, y, z); our arrays are (C, D, H, W) with W = left-right
(x), H = anterior-posterior (y), D = superior-inferior (z), so we permute to (C, W, H, D),
which makes axis 0 the left-right axis, and the identity affine makes 1 voxel = 1 mm.
"""
from __future__ import annotations

from typing import Any, Callable

from medalign.registry import Registry

AUGMENTS = Registry("augment")


@AUGMENTS.register("paper")
def paper_transform(p: float = 0.5):
    import torchio as tio

    return tio.Compose([
        tio.RandomAffine(scales=(0.98, 1.02), degrees=3, translation=3, p=0.8),
        tio.RandomNoise(),
        tio.RandomFlip(axes=(0,), flip_probability=0.5),
        tio.RandomGamma(log_gamma=(-0.3, 0.3)),
    ], p=p)


@AUGMENTS.register("artefacts")
def artefact_transform(p: float = 0.8):
    """Scanner-side variation at training time (the library counterpart of the generator's domain
    randomisation, issue 20): bias field, ghosting, motion, blur, noise and gamma, each with its own
    probability; no flip (it would contradict "left"/"right" in the reports) and no affine."""
    import torchio as tio

    return tio.Compose([
        tio.RandomBiasField(coefficients=0.3, p=0.5),
        tio.RandomGhosting(num_ghosts=(2, 6), intensity=(0.1, 0.4), p=0.2),
        tio.RandomMotion(degrees=3, translation=3, num_transforms=1, p=0.15),
        tio.RandomBlur(std=(0, 1.0), p=0.3),
        tio.RandomNoise(std=(0, 0.15), p=0.5),
        tio.RandomGamma(log_gamma=(-0.3, 0.3), p=0.5),
    ], p=p)


@AUGMENTS.register("none")
def no_transform():
    return None


class Augment:
    """Callable sample-dict -> sample-dict wrapping a TorchIO transform."""

    def __init__(self, transform: Any, *, seed: int | None = None) -> None:
        self.transform = transform
        self.seed = seed
        self.calls = 0

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        import torch

        if self.transform is None:
            return sample
        if self.seed is None:
            return self._apply(sample)
        # Deterministic per call: seed + call counter (per process; DataLoader workers differ).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + self.calls)
            self.calls += 1
            return self._apply(sample)

    def _apply(self, sample: dict[str, Any]) -> dict[str, Any]:
        import torch
        import torchio as tio

        image = sample["image"]
        subj = {"image": tio.ScalarImage(tensor=image.permute(0, 3, 2, 1).contiguous())}  # (C, W, H, D)
        has_mask = sample.get("mask") is not None
        if has_mask:
            subj["mask"] = tio.LabelMap(tensor=sample["mask"][None].permute(0, 3, 2, 1).contiguous())  # (1, W, H, D)
        out = self.transform(tio.Subject(**subj))
        new = dict(sample)
        img = out["image"].data.permute(0, 3, 2, 1).contiguous().float()  # (C, D, H, W)
        sm = sample.get("sequence_mask")
        if sm is not None:
            from medalign.data.masking import mask_sequences

            img = mask_sequences(img[None], torch.as_tensor(sm)[None])[0]  # one sample: (1, C, D, H, W) -> (C, D, H, W)
        new["image"] = img
        if has_mask:
            new["mask"] = out["mask"].data[0].permute(2, 1, 0).contiguous().to(sample["mask"].dtype)  # (D, H, W)
        return new


def build_augment(name: str = "paper", *, seed: int | None = None, **kwargs: Any) -> Callable[[dict], dict]:
    """Augmentation callable by registry name ("paper", "artefacts", "none")."""
    return Augment(AUGMENTS.build(name, **kwargs), seed=seed)
